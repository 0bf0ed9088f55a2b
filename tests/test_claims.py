"""The claims' statistics on made-up data whose answer is known."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
import claims  # noqa: E402


def test_the_permutation_f_test_finds_a_planted_difference_and_holds_its_level_in_noise():
    rng = np.random.default_rng(0)
    planted = [rng.normal(m, 1.0, 10) for m in (0.0, 0.0, 0.0, 2.0)]
    assert claims.permutation_f_test(planted)[1] < 0.001
    rejections = [claims.permutation_f_test([rng.normal(0, 1, 10) for _ in range(4)], seed=i)[1] < 0.05
                  for i in range(100)]
    assert 0 < sum(rejections) <= 12  # about 5 of 100 at the 5% level


def test_a_p_value_near_the_level_is_drawn_again_with_more_permutations():
    rng = np.random.default_rng(3)
    near = None
    for i in range(200):  # noise datasets until one lands near 0.05
        groups = [rng.normal(0, 1, 10) for _ in range(4)]
        _, p, b = claims.permutation_f_test(groups, seed=i)
        if abs(p - 0.05) < 0.005:
            near = (groups, p, b)
            break
    assert near is not None and near[2] == claims.PERMUTATIONS_NEAR
    verdicts = {claims.permutation_f_test(near[0], seed=s)[1] < 0.05 for s in range(3)}
    assert len(verdicts) == 1  # the draw does not decide


def test_the_interaction_test_finds_a_planted_crossover_and_none_where_the_order_holds():
    rng = np.random.default_rng(1)
    means_frozen = np.array([1.0, 2.0, 3.0, 4.0])[:, None]
    frozen = means_frozen + rng.normal(0, 0.3, (4, 10))
    crossed = means_frozen[::-1] * 5 + rng.normal(0, 0.3, (4, 10))  # the order reversed when learned
    same = means_frozen * 5 + rng.normal(0, 0.3, (4, 10))  # learned returns higher, same order
    assert claims.interaction_test(frozen, crossed)[1] < 0.001
    assert claims.interaction_test(frozen, same)[1] > 0.2
    assert claims.best_differs(frozen, crossed) > 0.99 and claims.best_differs(frozen, same) < 0.01


@pytest.mark.parametrize("kind, gap, expected", [("non-inferior", -0.03, True), ("non-inferior", -0.3, False),
                                                   ("non-superior", 0.03, True), ("non-superior", 0.3, False)])
def test_non_inferiority_and_non_superiority_on_both_sides_of_their_margin(kind, gap, expected):
    rng = np.random.default_rng(2)
    reference = rng.normal(10.0, 0.2, 10)
    tested = rng.normal(10.0 * (1 + gap), 0.2, 10)
    finals = pd.DataFrame([("breakout", a, "learned", s, r) for a, xs in (("reference", reference), ("tested", tested))
                           for s, r in enumerate(xs)], columns=["env", "arch", "regime", "seed", "return"])
    row = claims._welch_row(6, finals, "breakout", "learned", "tested", "reference", kind, 0.05)
    assert (row.p < 0.05) is expected
    assert row.margin == pytest.approx(0.1 * reference.mean())


def test_holm_and_the_seeds_a_test_needs():
    assert claims.holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    # a one-sided two-sample t-test at 5% reaches 80% power at an effect of one sd with 14 per group
    assert claims.seeds_for_power(1.0, 1.0, 0.05, "greater") == 14
    assert claims.seeds_for_power(-1.0, 1.0, 0.05, "greater") is None


def test_intervals_cover_as_they_claim_at_ten_seeds():
    rng = np.random.default_rng(5)
    covered = [lo <= 0 <= hi for lo, hi in (claims.t_interval(rng.standard_t(4, 10)) for _ in range(400))]
    assert 0.92 <= np.mean(covered) <= 0.98
    assert claims.prob_improvement(np.array([1.0, 2.0]), np.array([1.0, 0.0])) == pytest.approx(0.875)
    runs = rng.normal(0, 1, (2000, 6))  # five seeds, and one more run that the interval should catch
    caught = [lo <= r[5] <= hi for r in runs for lo, hi in [claims.t_interval(r[:5], one_more=True)]]
    assert 0.93 <= np.mean(caught) <= 0.97


def test_iqm_and_improvement_intervals_cover_at_five_and_ten_seeds_and_survive_separated_runs():
    rng = np.random.default_rng(6)
    for n in (5, 10):
        iqm = [lo <= 0 <= hi for lo, hi in (claims.iqm_interval(rng.standard_t(3, n)) for _ in range(4000))]
        assert 0.92 <= np.mean(iqm) <= 0.98, n
        truth = stats.norm.cdf(1.8 / np.sqrt(2))  # P(A > B) for a shift of 1.8 sd
        improvement = [lo <= truth <= hi for lo, hi in (claims.improvement_interval(rng.normal(1.8, 1, n), rng.normal(0, 1, n))
                                                       for _ in range(1000))]
        assert 0.92 <= np.mean(improvement) <= 0.98, n
    low, high = claims.improvement_interval(np.arange(10.0) + 20, np.arange(10.0))  # every run of A above every run of B
    assert high == 1.0 and 0.75 < low < 0.85
    assert claims.improvement_interval(np.arange(10.0), np.arange(10.0) + 20) == pytest.approx((0.0, 1 - low))


def test_claim_1_and_2_carry_effect_sizes_with_intervals_that_cover():
    means = np.array([0.0, 0.5, 1.0, 1.5])  # four architectures, sd 1: eta^2 = var(means) / (var(means) + 1)
    truth = means.var() / (means.var() + 1)
    rng = np.random.default_rng(8)
    covered = [lo <= truth <= hi for lo, hi in (claims.eta_squared([rng.normal(m, 1, 10) for m in means])[1]
                                                for _ in range(400))]
    assert 0.92 <= np.mean(covered) <= 0.98
    eta2, (low, _) = claims.eta_squared([rng.normal(0, 1, 10) for _ in means])
    assert low == 0.0 and 0 <= eta2 < 0.3  # no effect: the interval reaches 0
    order = np.tile(np.arange(4.0)[:, None], (1, 10))  # (archs, seeds)
    assert claims.rank_agreement(order, order + 1)[0] == 1.0
    assert claims.rank_agreement(order, -order)[0] == -1.0

