"""The book's statistics, claims and figures (notebooks/companion.py), on synthetic runs whose
answers are known."""
import base64
import sys
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


def test_no_interval_and_no_verdict_below_three_seeds():
    assert all(np.isnan(bk.bootstrap_ci([1.0, 2.0])))
    d = bk.difference(runs(seeds=2), "breakout", "frozen", "predictive", "spatial")
    assert np.isnan(d[1]) and bk.verdict(d, "greater") == "inconclusive at this scale"


@pytest.mark.parametrize("a, b, expect, answer", [
    ("predictive", "spatial", "greater", "supports"),
    ("spatial", "predictive", "greater", "contradicts"),
    ("l1", "dense", "equal", "supports"),
    ("predictive", "dense", "equal", "contradicts"),
    ("spatial", "dense", "no gain", "supports"),
    ("predictive", "dense", "no gain", "contradicts"),
])
def test_verdicts_read_the_interval_of_the_difference(a, b, expect, answer):
    assert bk.verdict(bk.difference(runs(), "breakout", "frozen", a, b), expect) == answer


def test_a_noisy_difference_is_inconclusive_and_bad_input_is_named():
    noisy = runs(noise=20.0)
    assert bk.verdict(bk.difference(noisy, "breakout", "frozen", "predictive", "dense"), "greater") == "inconclusive at this scale"
    with pytest.raises(ValueError, match="arch='row'"):
        bk.difference(runs(), "breakout", "frozen", "row", "dense")
    with pytest.raises(ValueError, match="expect='bigger'"):
        bk.verdict((1.0, 0.5, 1.5, 1.0), "bigger")


def test_claims_tables_name_the_claim_its_source_and_the_scale():
    frozen = runs()
    rows = bk.frozen_claims(frozen, ["breakout", "space_invaders"])
    first = rows[0]
    assert first["claim"].startswith("1. sparse structure") and first["source"] == "abstract"
    assert "predictive - spatial" in first["comparison"] and first["verdict"] == "supports"
    styled = bk.claims_table(rows, "500,000 frames per agent x 5 seeds (profile study)")
    assert list(styled.data.columns) == ["claim", "source", "verdict", "comparison", "difference (95% CI)"]
    assert "<caption>Measured at 500,000 frames per agent x 5 seeds (profile study)" in styled.to_html()


def test_claim_2_is_contradicted_when_one_arch_is_clearly_best_frozen_and_learned():
    learned = runs(regime="learned")
    rows = bk.learned_claims(learned, runs(), ["breakout"])
    two = next(r for r in rows if r["claim"].startswith("2."))
    assert "predictive is best frozen and learned" in two["comparison"] and two["verdict"] == "contradicts"


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


def test_the_explorers_bitsets_hold_exactly_each_units_inputs():
    mask = np.array([[0, 5, 399], [7, 8, 9]])
    bits = np.frombuffer(base64.b64decode(bk._bits(mask, 400)), np.uint8).reshape(2, 50)
    on = np.unpackbits(bits, axis=1, bitorder="little")
    assert [list(np.flatnonzero(r)) for r in on] == [[0, 5, 399], [7, 8, 9]]


def test_the_explorer_takes_a_users_mask_and_refuses_a_bad_one():
    w = bk.MaskExplorer(data={"breakout": {"channels": ["a", "b", "c", "d"], "colours": [], "archs": {}}})
    w.add_mask("mine", "breakout", np.array([[1, 2], [3, 4]]))
    assert w.data["breakout"]["archs"]["mine"]["0"]["units"] == 2 and w.start["arch"] == "mine"
    with pytest.raises(ValueError, match=r"indices in 0\.\.399") as err:
        w.add_mask("bad", "breakout", np.array([[1, 400]]))
    assert "\n" not in str(err.value)


def test_the_reading_counts_the_verdicts_and_names_the_claims():
    rows = bk.learned_claims(runs(regime="learned"), runs(), ["breakout"])
    text = bk.reading(rows, "800 frames").data
    counts = {v: sum(r["verdict"] == v for r in rows) for v in bk.VERDICTS}
    assert text.startswith(f"**Reading.** At 800 frames, of {len(rows)} comparisons {counts['supports']} support")
    assert text.endswith("Supported: claims 3, 6. Contradicted: claim 2.")
