"""The book's statistics, claims and figures (notebooks/companion.py), on synthetic runs whose
answers are known."""
import base64
import json
import sys
import zlib
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
import companion as bk  # noqa: E402

MEANS = {"dense": 10.0, "random": 6.0, "spatial": 4.0, "predictive": 12.0, "l1": 10.0}


def runs(means=MEANS, seeds=5, regime="frozen", envs=("space_invaders", "breakout"), noise=0.5, episodes=150):
    """Per-episode rows, episodes ending every 10 frames, whose final returns average exactly to
    the arch's mean over seeds, spread by +-noise per seed."""
    rows = []
    for env in envs:
        for i, (arch, mean) in enumerate(means.items()):
            for seed in range(seeds):
                offset = noise * (seed - (seeds - 1) / 2) * (-1) ** i
                for ep in range(episodes):
                    rows.append((env, arch, regime, seed, ep, 10 * (ep + 1), mean + offset, f"{env}_{arch}_{regime}"))
    return pd.DataFrame(rows, columns=["env", "arch", "regime", "seed", "episode", "frame", "return", "key"])


def test_final_table_averages_the_last_episodes_per_seed_in_the_books_arch_order():
    df = runs()
    df.loc[df.episode < 50, "return"] = -100.0  # early episodes must not count
    table = bk.final_table(df)
    bo = table[table.env == "breakout"]
    assert list(bo.arch) == ["dense", "random", "spatial", "predictive", "l1"]
    assert (bo.seeds == 5).all()
    assert np.allclose(bo["final return"], list(MEANS.values()), atol=1.0)
    assert (bo["ci low"] <= bo["final return"]).all() and (bo["final return"] <= bo["ci high"]).all()


def both_regimes(learned=MEANS, frozen=MEANS, **kw):
    return pd.concat([runs(frozen, regime="frozen", **kw), runs(learned, regime="learned", **kw)], ignore_index=True)


def test_the_planned_tests_keep_the_papers_claims_apart_from_the_summaries_and_name_their_fields():
    wide = dict(MEANS, dense_wide=11.0)
    rows = bk.claims.planned_tests(bk.final_returns(both_regimes(wide, wide, seeds=10)))
    blob = [r.as_json() for r in rows]
    assert {b["source"] for b in blob if b["claim"] in (1, 2)} == {"paper"}
    assert {b["source"] for b in blob if b["claim"] >= 3} == {"third-party summary"}
    for b in blob:
        assert {"claim", "source", "planned", "env", "regime", "test", "p_adjusted", "interval", "verdict"} <= set(b)
        assert b["planned"] and b["p_adjusted"] is not None and len(b["interval"]) == 2
        assert all(np.isfinite(b["interval"])) and b["interval"][0] <= b["estimate"] <= b["interval"][1], b
    one = [r for r in rows if r.claim == 1]  # the four archs differ by far more than their noise
    assert len(one) == 4 and all(r.p_adjusted < 0.05 and r.verdict.startswith("a difference") for r in one)
    frame = bk.claims_frame(rows, [1, 2])
    assert set(frame.claim) == {1, 2} and "p (Holm)" in frame.columns


def test_claim_2_finds_a_crossover_and_not_a_shared_order():
    crossed = {"dense": 14.0, "random": 6.0, "spatial": 10.0, "predictive": 4.0, "l1": 10.0}  # best: predictive frozen, dense learned
    rows = bk.claims.planned_tests(bk.final_returns(both_regimes(learned=crossed, seeds=10)), ["breakout"])
    two = next(r for r in rows if r.claim == 2)
    assert two.p_adjusted < 0.05 and two.extra["p_best_differs"] > 0.9
    rows = bk.claims.planned_tests(bk.final_returns(both_regimes(seeds=10)), ["breakout"])
    two = next(r for r in rows if r.claim == 2)
    assert two.p_adjusted > 0.05 and two.verdict.startswith("no difference detected at 10 paired")


def test_a_cell_without_runs_waits_for_the_sweep_and_counts_as_p_1():
    rows = bk.claims.planned_tests(bk.final_returns(both_regimes(seeds=5)), ["breakout"])
    seven = next(r for r in rows if r.claim == 7)  # no dense_wide runs yet
    assert seven.verdict.startswith("pending") and seven.p == 1.0


def test_figures_put_breakout_left_and_keep_one_colour_per_arch():
    learned = runs(regime="learned")
    fig = bk.returns_figure(learned, "Learned", bk.final_table(runs()))
    left, right = fig.axes[:2]
    assert (left.get_title(), right.get_title()) == ("Breakout", "Space Invaders")
    legend = {t.get_text(): matplotlib.colors.to_hex(h.get_color())
              for t, h in zip(fig.legends[0].texts, fig.legends[0].legend_handles)}
    assert legend == {a: bk.ARCH_COLOURS[a] for a in MEANS}
    dashed = [line for line in left.lines if line.get_linestyle() == "--"]
    assert sorted(round(line.get_ydata()[0]) for line in dashed) == sorted(round(m) for m in MEANS.values())
    assert bk.colour("row") not in [bk.ARCH_COLOURS[a] for a in bk.ARCH_ORDER]


def test_a_figures_band_is_the_student_t_interval_of_the_tables_not_a_narrower_bootstrap():
    df = runs(means={"dense": 10.0}, seeds=3, envs=("breakout",), noise=2.0)
    fig = bk.returns_figure(df, "Frozen")
    band = fig.axes[0].collections[0].get_paths()[0].vertices
    curves = bk.learning_curves(df)
    end = curves["frame"].max()
    last = curves.loc[curves["frame"] == end, "return"]
    low, high = bk.claims.t_interval(last)
    at_end = band[np.isclose(band[:, 0], end), 1]
    assert np.allclose([at_end.min(), at_end.max()], [low, high])
    assert high - low > 2 * (last.max() - last.min())  # a bootstrap band never leaves [min, max]


def test_the_palette_stays_apart_for_colour_blind_readers_and_controls_are_dashed():
    distances = bk.palette_distances()
    assert set(distances) == {"normal", "protanopia", "deuteranopia", "tritanopia"}
    assert min(distances.values()) > 20  # about 2.3 is just noticeable
    assert bk.CONTROLS == ("dense_wide",) and bk.colour("dense_wide") == bk.colour("dense")
    df = both_regimes(dict(MEANS, dense_wide=11.0))
    fig = bk.returns_figure(df[df.regime == "learned"], "Learned")
    styles = {t.get_text(): h.get_linestyle() for t, h in zip(fig.legends[0].texts, fig.legends[0].legend_handles)}
    assert styles["dense_wide"] != styles["dense"]


def test_sparsity_or_width_names_the_gains_over_dense_that_the_equally_wide_layer_matches():
    means = {"dense": 4.0, "random": 0.5, "spatial": 16.0, "predictive": 12.0, "dense_wide": 12.0}
    text = bk.width_reading(bk.width_rows(runs(means, seeds=10, envs=("breakout",)), "frozen"), "frozen").data
    line = next(x for x in text.splitlines() if x.startswith("- Breakout"))
    assert "against `dense`, `spatial` and `predictive` end above; `random` ends below" in line
    assert "against `dense_wide`, `spatial` ends above; `random` ends below; no difference detected for `predictive`" in line
    assert "Width alone could explain the gain of `predictive` over `dense`" in line
    assert "The gain of `spatial` holds against the equally wide dense layer too" in line
    waiting = bk.width_reading(bk.width_rows(runs(MEANS, envs=("breakout",)), "frozen"), "frozen").data
    assert "against `dense_wide`: not enough runs yet" in waiting and "Width alone" not in waiting


def _read_rows(entry):
    """companion._rows read back: each row's ascending gaps as LEB128 varints, deflated."""
    raw, rows, i = zlib.decompress(base64.b64decode(entry["rows"])), [], 0
    while i < len(raw):
        row, at = [], -1
        for _ in range(entry["k"]):
            gap = shift = 0
            while True:
                gap |= (raw[i] & 127) << shift
                shift, i = shift + 7, i + 1
                if not raw[i - 1] & 128:
                    break
            row.append(at := at + gap)
        rows.append(row)
    return rows


def test_the_explorer_sends_each_distinct_neighbourhood_once_and_small():
    cfg = bk.profiles.profile_config("study", env="breakout", arch="random")
    mask = bk.sd.build_mask(cfg, 3)[0].numpy()
    entry = bk._entry(mask, 400, bk.sd.mask_centres(cfg, 3))
    assert entry["centres"] == "modulo" and entry["row_of"] == "centre"
    assert _read_rows(entry) == [sorted(r) for r in mask[:400].tolist()]  # 1,200 units, 400 neighbourhoods
    assert len(entry["rows"]) < 14_000  # a bitset per unit would be 80,000 characters
    moved = np.array([5, 9, 5, 400 + 2])  # centres as predictive's, units 0 and 2 sharing one
    rows = np.array([[1, 2], [3, 300], [2, 1], [0, 799]])
    entry = bk._entry(rows, 800, moved)
    assert entry["row_of"] == "centre" and _read_rows(entry) == [[1, 2], [3, 300], [0, 799]]
    assert np.frombuffer(zlib.decompress(base64.b64decode(entry["centres"])), "<u2").tolist() == moved.tolist()
    assert _read_rows(bk._entry(rows, 800)) == [[1, 2], [3, 300], [1, 2], [0, 799]]  # no centres: a row a unit


def test_the_explorer_takes_a_users_mask_and_refuses_a_bad_one():
    w = bk.MaskExplorer(data={"breakout": {"channels": ["a", "b", "c", "d"], "inputs": 400, "archs": {}}})
    w.add_mask("mine", "breakout", np.array([[1, 2], [3, 4]]))
    assert w.data["breakout"]["archs"]["mine"]["masks"]["0"]["units"] == 2 and w.start["arch"] == "mine"
    with pytest.raises(ValueError, match=r"indices in 0\.\.399") as err:
        w.add_mask("bad", "breakout", np.array([[1, 400]]))
    assert "\n" not in str(err.value)
    html = w.static_html()  # what the book shows: the view and its data, no widget manager
    assert html.count('<script type="module">') == 1 and "export default" not in html and '"mine"' in html


def test_the_reading_counts_what_each_claims_tests_found():
    rows = bk.claims.planned_tests(bk.final_returns(both_regimes(seeds=5)), ["breakout"])
    text = bk.reading(rows, [1, 7]).data
    assert "- Claim 1 (the paper's): 2 of 2 planned tests find what it says." in text
    assert "- Claim 7 (a summary's): 0 of 1 planned tests find what it says; 1 wait for the sweep's runs." in text


def test_a_predictive_mask_for_the_explorer_is_computed_once_and_a_damaged_copy_made_again(tmp_path, monkeypatch):
    chapter = bk.Chapter("02_masks", "smoke", str(tmp_path), ["breakout"])
    cfg = chapter.config(env="breakout", arch="predictive")
    first = bk._stored_entry(chapter, cfg, 0)
    (path,) = (tmp_path / "masks").iterdir()
    assert path.name == f"{cfg.key()}-seed_0.json"
    monkeypatch.setattr(bk.sd, "build_mask", lambda *a: pytest.fail("PAN ran again for a stored mask"))
    assert bk._stored_entry(chapter, cfg, 0) == first
    monkeypatch.undo()
    path.write_text(path.read_text()[:-40])
    assert bk._stored_entry(chapter, cfg, 0) == first and json.loads(path.read_text())["entry"] == first


def test_the_explorer_offers_every_seed_of_its_chapter(tmp_path):
    chapter = bk.Chapter("02_masks", "smoke", str(tmp_path), ["breakout"], seeds=[0, 1, 2])
    archs = bk.explorer_data(chapter, ["random", "predictive", "l1", "spatial", "dense"])["breakout"]["archs"]
    assert all(a["seeds"] == ["0", "1", "2"] for a in archs.values())
    assert len({json.dumps(archs["random"]["masks"][s]) for s in "012"}) == 3  # a mask per seed
    assert list(archs["spatial"]["masks"]) == ["*"] and archs["spatial"]["masks"]["*"]["rows"] == "spatial"
