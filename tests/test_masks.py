import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sparse_dqn as sd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
import companion as bk  # noqa: E402  pan_report and unit_nearest serve the book


@pytest.mark.parametrize("env", list(sd.CHANNELS))
@pytest.mark.parametrize("arch", ["random", "spatial", "predictive"])
def test_sparse_masks_have_k_distinct_valid_inputs_per_unit(env, arch):
    cfg = sd.Config(env=env, arch=arch, pan_frames=2_000)
    mask, _ = sd.build_mask(cfg, seed=0)
    assert mask.shape == (1200, 9 * sd.CHANNELS[env])
    assert mask.dtype == torch.long
    assert int(mask.min()) >= 0 and int(mask.max()) < cfg.input_size
    assert all(len(set(row.tolist())) == cfg.k for row in mask)


def test_dense_mask_and_equal_capacity():
    for env in sd.CHANNELS:
        cfg = sd.Config(env=env, arch="dense")
        mask = sd.dense_mask(cfg)
        assert mask.shape == (108, cfg.input_size)
        assert (mask == torch.arange(cfg.input_size)).all()
        assert cfg.dense_units * cfg.input_size == cfg.hidden_units * cfg.k


def test_spatial_mask_is_the_nearest_entries_to_each_centre():
    cfg = sd.Config(arch="spatial")
    mask = sd.spatial_mask(cfg)
    for unit in [0, 1, 55, 399, 400, 811, 1199]:
        centre = unit % 400
        r0, c0 = (centre % 100) // 10, centre % 10
        dist = {d: math.hypot((d % 100) // 10 - r0, d % 10 - c0) for d in range(400)}
        chosen = mask[unit].tolist()
        assert centre in chosen
        worst_in = max(dist[d] for d in chosen)
        best_out = min(dist[d] for d in range(400) if d not in chosen)
        assert worst_in <= best_out
    # away from the border, 9 x channels nearest entries are exactly the 3x3 patch in all channels
    centre = 5 * 10 + 5
    patch = {ch * 100 + (5 + dr) * 10 + 5 + dc for ch in range(4) for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
    assert set(mask[centre].tolist()) == patch


def test_random_mask_covers_inputs_roughly_uniformly_and_is_reproducible():
    cfg = sd.Config(arch="random")
    mask = sd.random_mask(cfg, seed=3)
    per_neighbourhood = mask[:400]  # units 400.. repeat the same neighbourhoods
    counts = torch.bincount(per_neighbourhood.flatten(), minlength=400).float()
    expected = 400 * 36 / 400
    assert counts.min() > 0
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 520  # 399 degrees of freedom: p(chi2 > 520) < 1e-4 under uniformity
    assert torch.equal(mask, sd.random_mask(cfg, seed=3))
    assert not torch.equal(mask, sd.random_mask(cfg, seed=4))


def test_pan_recovers_the_inputs_that_drive_an_entry():
    """Entry 0's next value is the OR of inputs 5 and 7; every other input is noise."""
    rng = np.random.default_rng(0)
    d = 20

    def stream():
        o = rng.random(d) < 0.2
        for _ in range(20_000):
            nxt = rng.random(d) < 0.2
            nxt[0] = o[5] or o[7]
            yield o, nxt, False
            o = nxt

    w, log = sd.pan_weights(stream(), d, gamma=0.99, lam=0.8, step_size=1e-3)
    top2 = set(sd.top_k_by_magnitude(w, 2, seed=0)[0].tolist())
    assert top2 == {5, 7}
    assert np.isfinite(w.numpy()).all() and len(log) == 20


def test_predictive_mask_is_reproducible_and_reports_td_error():
    cfg = sd.Config(arch="predictive", pan_frames=3_000)
    a, log = sd.predictive_mask(cfg, seed=1)
    sd._pan.cache_clear()
    b, _ = sd.predictive_mask(cfg, seed=1)
    assert torch.equal(a, b)
    assert len(log) == 3 and all(np.isfinite(err) for _, err in log)


def test_top_k_breaks_ties_without_favouring_low_indices():
    w = torch.zeros(2000, 50)
    w[:, 10] = 1.0
    chosen = sd.top_k_by_magnitude(w, 3, seed=0)
    assert (chosen[:, 0] == 10).all()
    counts = torch.bincount(chosen[:, 1:].flatten(), minlength=50)
    assert counts[10] == 0 and counts[:25].sum() / counts.sum() == pytest.approx(0.5, abs=0.05)


def test_largest_first_is_a_stable_descending_sort_cut_at_k():
    """Masks take the k largest magnitudes of each row, ties in ascending position (nearest first,
    for predictive masks): the integer-key shortcut must pick exactly what a stable sort picks,
    with many exact ties (inputs PAN never saw), NaN (a diverged predictor) and infinity."""
    torch.manual_seed(0)
    values = torch.randn(50, 300).abs()
    values[values < 1.0] = 0.0
    values[3, 7], values[4, 9], values[4, 10] = float("nan"), float("inf"), float("inf")
    for k in (1, 54, 300):
        expected = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
        assert torch.equal(sd._largest_first(values, k), expected)


def test_predictive_units_move_off_centres_that_never_vary_and_keep_their_counts():
    cfg = sd.Config(arch="predictive", pan_frames=2_000)
    report = bk.pan_report(cfg, 0)
    assert report["never varied"] > 100  # a random paddle leaves most ball cells dark
    assert report["zero-evidence inputs"] == 0.0
    legacy = bk.pan_report(sd.dataclasses.replace(cfg, pan_idle="random"), 0)
    assert legacy["zero-evidence inputs"] > 0.3
    mask, _ = sd.build_mask(cfg, 0)
    assert mask.shape == (cfg.hidden_units, cfg.k)
    centres = sd.mask_centres(cfg, 0)
    unit, centre = bk.unit_nearest(cfg, 0, 145)  # the ball at row 4, column 5
    assert int(centres[unit]) == centre and centre // 100 == 1
    assert bk.unit_nearest(sd.Config(arch="spatial"), 0, 145) == (145, 145)
