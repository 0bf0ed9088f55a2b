"""The claims the book tests, each with its test fixed before its numbers, and the statistics
they use: permutation tests, Welch's t for one-sided, non-inferiority and non-superiority
questions, Holm's correction within a family, Student-t intervals (Tukey and McLaughlin's for the
interquartile mean) and Newcombe's score interval for the probability of improvement (Agarwal et
al. 2021), and the seeds a test would need.

Only the abstract (claims 1 and 2) and the figure captions are the authors' words. Claims 3 to 7
come from summaries of the paper written by paper-digest sites: hypotheses about what the paper
says, which may be wrong about it. They are tested as one family, apart from the paper's own.

The planned tests were chosen after a look at seeds 0-4 of the study, which are part of its 10
seeds; anything chosen from the data (best minus worst, the best L1 coefficient) is exploration,
in its own table, and decides nothing."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
PERMUTATIONS = 10_000
"""Permutations of a test, raised to PERMUTATIONS_NEAR where its p-value lies within three Monte
Carlo standard errors of the level it is compared with, so no verdict turns on the draw."""
PERMUTATIONS_NEAR = 200_000
MARGIN = 0.10
"""Non-inferiority and non-superiority margins: 10% of the reference architecture's mean."""
EQUAL_WEIGHT = ("dense", "random", "spatial", "predictive")

PAPER, SUMMARY = "paper", "third-party summary"
CLAIMS = {
    1: (PAPER, "the abstract", "sparse structure has a significant effect on learning performance"),
    2: (PAPER, "the abstract", "choosing the best sparse architecture for a given domain depends on whether the "
                               "hidden layer weights are fixed or learned"),
    3: (SUMMARY, "a digest site's summary", "Breakout, learned weights: predictive gives gains"),
    4: (SUMMARY, "a digest site's summary", "Space Invaders: spatial gives no gain, frozen or learned"),
    5: (SUMMARY, "a digest site's TL;DR", "spatial sparsity is not universally superior"),
    6: (SUMMARY, "a digest site's TL;DR", "end-to-end sparsity (L1) can match dense performance when learned"),
    7: (SUMMARY, "a digest site's summary", "L1 does not help with frozen weights"),
}
TESTS = {  # each claim's test, stated before its numbers (the Methods page shows this table)
    1: "per game x regime, a permutation test (10,000 permutations or more) of the one-way F statistic of final "
       "returns among dense, random, spatial and predictive; Holm across the four cells",
    2: "per game, a permutation test of the architecture x regime interaction among the same four: per seed, each "
       "architecture's rank among the four when learned minus its rank when frozen, architecture labels permuted "
       "within each seed; Holm across the two games. Beside it, not deciding: the bootstrap probability that the "
       "best architecture differs between the regimes",
    3: "one-sided Welch t-test, Breakout learned: predictive > dense",
    4: "Space Invaders, per regime: non-superiority of spatial over dense (Welch t, margin 10% of dense's mean)",
    5: "per game x regime: one-sided Welch t-tests of each other equal-weight architecture > spatial; supported "
       "where any holds",
    6: "per game, learned: non-inferiority of L1 to dense (Welch t, margin 10% of dense's mean)",
    7: "per game, frozen: non-superiority of L1 over the width control dense_wide, of equal width (Welch t, margin "
       "10% of dense_wide's mean)",
}
FAMILIES = {PAPER: "Holm within each of claims 1 and 2", SUMMARY: "Holm across every test of claims 3 to 7"}


# ----------------------------------------------------------------------------------------------
# Intervals and aggregates
# ----------------------------------------------------------------------------------------------
def t_interval(x, level: float = 0.95, one_more: bool = False) -> tuple[float, float]:
    """Student-t interval of a mean (NaNs below 2 values); with one_more, the prediction interval
    of one more draw from x's distribution: where a further run would land."""
    x = np.asarray(x, float)
    if len(x) < 2:
        return float("nan"), float("nan")
    spread = np.sqrt(1 + 1 / len(x)) if one_more else 1 / np.sqrt(len(x))
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) * spread
    return float(x.mean() - half), float(x.mean() + half)


def welch(x, y, shift: float = 0.0, alternative: str = "two-sided", level: float = 0.95):
    """Welch's t-test of mean(x) - mean(y) against `shift`, and the two-sided Student-t (Welch)
    interval of the difference: (p, (low, high))."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    test = stats.ttest_ind(x - shift, y, equal_var=False, alternative=alternative)
    ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval(level)
    return float(test.pvalue), (float(ci.low), float(ci.high))


def iqm(x, axis=-1):
    """Interquartile mean: the mean of the middle half (scipy's trim_mean at 25%)."""
    return stats.trim_mean(x, 0.25, axis=axis)


def prob_improvement(x, y, axis=-1):
    """P(X > Y) for a run of each, ties counting half (the Mann-Whitney U over n x m)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def iqm_interval(x, level: float = 0.95) -> tuple[float, float]:
    """Tukey and McLaughlin's (1963) Student-t interval of the IQM, a 25% trimmed mean: its standard
    error from the winsorized variance, on h - 1 degrees of freedom for the h values kept. Its
    coverage stays near nominal at 5 seeds, where BCa's falls below 90%
    (benchmarks/interval_coverage.py)."""
    x = np.sort(np.asarray(x, float))
    n = len(x)
    g = int(0.25 * n)  # as trim_mean cuts
    kept = n - 2 * g
    if kept < 2:
        return float("nan"), float("nan")
    winsorized = np.clip(x, x[g], x[n - g - 1])
    half = stats.t.ppf(0.5 + level / 2, kept - 1) * winsorized.std(ddof=1) * np.sqrt(n) / kept
    centre = iqm(x)
    return float(centre - half), float(centre + half)


def improvement_interval(x, y, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's (2006, Method 5) score interval for P(X > Y): the values whose Hanley-McNeil
    variance, with (m + n) / 2 standing for each sample size, puts the estimate within z standard
    errors. Built for this statistic, its coverage is near nominal at 5 and 10 seeds, and it is
    defined when one sample lies wholly above the other, where every bootstrap resample gives the
    same value and BCa has no interval (benchmarks/interval_coverage.py)."""
    m, n = len(x), len(y)
    if min(m, n) < 2:
        return float("nan"), float("nan")
    theta, z2, k = float(prob_improvement(x, y)), stats.norm.ppf(0.5 + level / 2) ** 2, (m + n) / 2 - 1

    def gap(t):
        return (theta - t) ** 2 - z2 * t * (1 - t) * (1 + k * (1 - t) / (2 - t) + k * t / (1 + t)) / (m * n)

    low = 0.0 if theta <= 0 else optimize.brentq(gap, 0.0, min(theta, 1 - 1e-12))
    high = 1.0 if theta >= 1 else optimize.brentq(gap, max(theta, 1e-12), 1.0)
    return float(low), float(high)


# ----------------------------------------------------------------------------------------------
# Permutation tests
# ----------------------------------------------------------------------------------------------
def f_statistic(groups: Sequence[np.ndarray]) -> float:
    return float(stats.f_oneway(*groups).statistic)


def _permutation_p(observed: float, draw: Callable[[np.random.Generator, int], np.ndarray], seed: int,
                   level: float) -> tuple[float, int]:
    """(p, permutations): (1 + #draws >= observed) / (1 + draws), with more draws where p lies
    within three Monte Carlo standard errors of `level`."""
    rng = np.random.default_rng(seed)
    n = PERMUTATIONS
    null = draw(rng, n)
    p = (1 + np.sum(null >= observed - 1e-12)) / (1 + n)
    if abs(p - level) < 3 * np.sqrt(level * (1 - level) / n):
        n = PERMUTATIONS_NEAR
        null = np.concatenate([null, draw(rng, n - PERMUTATIONS)])
        p = (1 + np.sum(null >= observed - 1e-12)) / (1 + n)
    return float(p), n


def permutation_f_test(groups: Sequence, seed: int = 0, level: float = ALPHA) -> tuple[float, float, int]:
    """One-way F of the groups and its permutation p-value (group labels permuted over all
    values): (F, p, permutations)."""
    groups = [np.asarray(g, float) for g in groups]
    values, sizes = np.concatenate(groups), [len(g) for g in groups]
    labels = np.repeat(np.arange(len(groups)), sizes)
    total, n, k = values.sum(), len(values), len(groups)
    grand = total / n
    within_all = ((values - grand) ** 2).sum()

    def f_of(perm_labels):  # (B, n) labels -> (B,) F, vectorised
        sums = np.stack([(values * (perm_labels == j)).sum(1) for j in range(k)], 1)
        between = (sums ** 2 / np.array(sizes)).sum(1) - total ** 2 / n
        return (between / (k - 1)) / ((within_all - between) / (n - k))

    def draw(rng, b):
        out = []
        for start in range(0, b, 2_000):
            m = min(2_000, b - start)
            out.append(f_of(rng.permuted(np.broadcast_to(labels, (m, n)), axis=1)))
        return np.concatenate(out)

    observed = f_statistic(groups)
    p, b = _permutation_p(observed, draw, seed, level)
    return observed, p, b


def eta_squared(groups: Sequence, level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """The share of the variance of final returns that the groups (architectures) explain,
    eta^2 = SS_between / SS_total, and its interval from inverting the noncentral F distribution
    (Steiger 2004): exact for normal returns of equal variance, descriptive here; the verdict is the
    permutation test's."""
    sizes = [len(g) for g in groups]
    n, k = sum(sizes), len(groups)
    f, df1, df2 = f_statistic(groups), k - 1, n - k

    def noncentrality(tail):  # the lambda whose F distribution puts `tail` of its mass below f
        if stats.f.cdf(f, df1, df2) <= tail:
            return 0.0
        high = max(1.0, f * df1)
        while stats.ncf.cdf(f, df1, df2, high) > tail:
            high *= 2
        return optimize.brentq(lambda lam: stats.ncf.cdf(f, df1, df2, lam) - tail, 0.0, high)

    low, high = noncentrality(0.5 + level / 2), noncentrality(0.5 - level / 2)
    return f * df1 / (f * df1 + df2), (low / (low + n), high / (high + n))


def rank_agreement(frozen: np.ndarray, learned: np.ndarray) -> tuple[float, tuple[float, float]]:
    """How alike the two regimes order the architectures: per seed, Kendall's tau between an
    architecture's frozen and learned final returns (1: the same order, -1: reversed), the mean
    over seeds and its Student-t interval. frozen, learned: (archs, seeds), paired by seed."""
    taus = np.array([stats.kendalltau(frozen[:, s], learned[:, s]).statistic for s in range(frozen.shape[1])])
    return float(taus.mean()), t_interval(taus)


def interaction_test(frozen: np.ndarray, learned: np.ndarray, seed: int = 0, level: float = ALPHA):
    """Architecture x regime interaction on ranks. frozen, learned: (archs, seeds) final returns,
    columns paired by seed (a seed gives an agent the same mask and initial weights in both
    regimes). Per seed, each architecture's rank among the archs when learned minus its rank when
    frozen; the statistic is the sum over archs of seeds x (mean rank change)^2. Under no
    interaction the rank changes of a seed are exchangeable across architectures, so the null
    permutes architecture labels within each seed. Returns (statistic, p, permutations)."""
    change = stats.rankdata(learned, axis=0) - stats.rankdata(frozen, axis=0)  # (archs, seeds)
    archs, seeds = change.shape

    def stat(c):  # (..., archs, seeds)
        return seeds * (c.mean(-1) ** 2).sum(-1)

    def draw(rng, b):
        out = []
        for start in range(0, b, 2_000):
            m = min(2_000, b - start)
            perm = rng.permuted(np.broadcast_to(np.arange(archs)[:, None], (m, archs, seeds)), axis=1)
            out.append(stat(np.take_along_axis(np.broadcast_to(change, (m, archs, seeds)), perm, axis=1)))
        return np.concatenate(out)

    observed = float(stat(change))
    p, b = _permutation_p(observed, draw, seed, level)
    return observed, p, b


def best_differs(frozen: np.ndarray, learned: np.ndarray, resamples: int = 10_000, seed: int = 0) -> float:
    """Bootstrap probability that the architecture with the best mean differs between the regimes
    (seeds resampled in pairs, the same seeds for every architecture). Reported, not decided on."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, frozen.shape[1], (resamples, frozen.shape[1]))
    best_f = frozen[:, idx].mean(-1).argmax(0)
    best_l = learned[:, idx].mean(-1).argmax(0)
    return float((best_f != best_l).mean())


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def seeds_for_power(difference: float, sd: float, alpha: float, alternative: str, shift: float = 0.0,
                    power: float = 0.8, most: int = 10_000) -> int | None:
    """Seeds per architecture that give a two-sample t-test (equal seeds, equal spread sd) the
    power to reject at `alpha` if the true difference were `difference` (tested against `shift`);
    None where even `most` would not (a difference on the wrong side of the null)."""
    effect = (difference - shift) / sd if sd > 0 else np.inf
    if alternative == "less":
        effect = -effect
    elif alternative == "two-sided":
        effect, alpha = abs(effect), alpha / 2
    if not effect > 0:
        return None
    for n in range(2, most + 1):
        df = 2 * n - 2
        crit = stats.t.ppf(1 - alpha, df)
        if stats.nct.sf(crit, df, effect * np.sqrt(n / 2)) >= power:
            return n
    return None


# ----------------------------------------------------------------------------------------------
# The claims, tested
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One test: a row of claims.json and of a chapter's tables."""
    claim: int
    env: str | None
    regime: str | None
    test: str
    comparison: str
    p: float
    interval: tuple[float, float]
    estimate: float
    seeds: str
    planned: bool = True
    margin: float | None = None
    p_adjusted: float | None = None
    verdict: str = ""
    extra: dict = field(default_factory=dict)
    power_seeds: int | None = None

    @property
    def source(self) -> str:
        return CLAIMS[self.claim][0]

    def as_json(self) -> dict:
        return {"claim": self.claim, "source": self.source, "planned": self.planned, "env": self.env,
                "regime": self.regime, "test": self.test, "comparison": self.comparison, "estimate": self.estimate,
                "p": self.p, "p_adjusted": self.p_adjusted, "interval": list(self.interval), "margin": self.margin,
                "seeds": self.seeds, "verdict": self.verdict, "seeds_for_80_percent_power": self.power_seeds,
                **self.extra}


def cell_returns(finals, env, regime, arch) -> tuple[np.ndarray, np.ndarray]:
    """(final returns, seeds) of one cell, by seed ascending; finals: a DataFrame of env, arch, regime,
    seed, return."""
    sel = finals[(finals.env == env) & (finals.regime == regime) & (finals.arch == arch)].sort_values("seed")
    return sel["return"].to_numpy(float), sel["seed"].to_numpy()


def _pending(claim, env, regime, test, comparison, seeds) -> Row:
    """A planned test whose runs are not all there yet: it counts in its family as p = 1."""
    return Row(claim, env, regime, test, comparison, 1.0, (float("nan"), float("nan")), float("nan"), seeds,
               extra={"pending": True})


def _welch_row(claim, finals, env, regime, a, b, kind, power_alpha) -> Row:
    """kind: 'greater' (a > b), 'non-inferior' (a > b - margin), 'non-superior' (a < b + margin)."""
    x, _ = cell_returns(finals, env, regime, a)
    y, _ = cell_returns(finals, env, regime, b)
    if min(len(x), len(y)) < 2:
        return _pending(claim, env, regime, {"greater": "one-sided Welch t", "non-inferior": "non-inferiority, Welch t",
                                             "non-superior": "non-superiority, Welch t"}[kind],
                        f"{a} vs {b}", f"{len(x)} and {len(y)}")
    margin = MARGIN * abs(y.mean()) if kind != "greater" else None
    shift, alternative = {"greater": (0.0, "greater"), "non-inferior": (-(margin or 0), "greater"),
                          "non-superior": (margin or 0, "less")}[kind]
    p, ci = welch(x, y, shift, alternative)
    name = {"greater": "one-sided Welch t", "non-inferior": "non-inferiority, Welch t",
            "non-superior": "non-superiority, Welch t"}[kind]
    comparison = {"greater": f"{a} > {b}", "non-inferior": f"{a} > {b} - {margin:.2f}" if margin else "",
                  "non-superior": f"{a} < {b} + {margin:.2f}" if margin else ""}[kind]
    row = Row(claim, env, regime, name, comparison, p, ci, float(x.mean() - y.mean()),
              f"{len(x)} and {len(y)}", margin=margin)
    pooled = np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    row.extra = {"p_of_improvement": float(prob_improvement(x, y)),
                 "p_of_improvement_interval": improvement_interval(x, y)}
    row.power_seeds = seeds_for_power(row.estimate, pooled, power_alpha, alternative, shift)
    return row


def planned_tests(finals, envs: Sequence[str] = ("breakout", "space_invaders")) -> list[Row]:
    """Every planned test, with Holm's adjusted p-values and verdicts. finals: final returns per
    run (env, arch, regime, seed, return)."""
    rows = []
    for env in envs:  # claim 1
        for regime in ("frozen", "learned"):
            groups = [cell_returns(finals, env, regime, a)[0] for a in EQUAL_WEIGHT]
            seeds = "/".join(str(len(g)) for g in groups)
            if min(len(g) for g in groups) < 2:
                rows.append(_pending(1, env, regime, "permutation F", "dense, random, spatial, predictive", seeds))
                continue
            f, p, b = permutation_f_test(groups, seed=zlib.crc32(f"{env}/{regime}".encode()))
            eta2, interval = eta_squared(groups)
            rows.append(Row(1, env, regime, "permutation F", "dense, random, spatial, predictive", p,
                            interval, eta2, seeds, extra={"permutations": b, "statistic": f,
                                                          "estimate_of": "eta squared"}))
    for env in envs:  # claim 2
        paired = {}
        for regime in ("frozen", "learned"):
            for a in EQUAL_WEIGHT:
                x, seeds = cell_returns(finals, env, regime, a)
                paired[(regime, a)] = dict(zip(seeds.tolist(), x))
        common = sorted(set.intersection(*(set(v) for v in paired.values())))
        if len(common) < 2:
            rows.append(_pending(2, env, None, "permutation, rank interaction", "architecture x regime",
                                 f"{len(common)} paired"))
            continue
        frozen = np.array([[paired[("frozen", a)][s] for s in common] for a in EQUAL_WEIGHT])
        learned = np.array([[paired[("learned", a)][s] for s in common] for a in EQUAL_WEIGHT])
        statistic, p, b = interaction_test(frozen, learned, seed=zlib.crc32(env.encode()))
        tau, interval = rank_agreement(frozen, learned)
        rows.append(Row(2, env, None, "permutation, rank interaction", "architecture x regime", p,
                        interval, tau, f"{len(common)} paired",
                        extra={"permutations": b, "statistic": statistic, "estimate_of": "mean Kendall tau",
                               "p_best_differs": best_differs(frozen, learned)}))
    third = []
    if "breakout" in envs:
        third.append(("breakout", "learned", "predictive", "dense", "greater", 3))
    if "space_invaders" in envs:
        third += [("space_invaders", r, "spatial", "dense", "non-superior", 4) for r in ("frozen", "learned")]
    third += [(env, r, a, "spatial", "greater", 5) for env in envs for r in ("frozen", "learned")
              for a in ("dense", "random", "predictive")]
    third += [(env, "learned", "l1", "dense", "non-inferior", 6) for env in envs]
    third += [(env, "frozen", "l1", "dense_wide", "non-superior", 7) for env in envs]
    rows += [_welch_row(c, finals, env, r, a, b, kind, ALPHA / len(third)) for env, r, a, b, kind, c in third]
    _correct(rows)
    return rows


def _correct(rows: list[Row]):
    """Holm within claim 1, within claim 2, and across the third-party family; then verdicts."""
    for members in ([r for r in rows if r.claim == 1], [r for r in rows if r.claim == 2],
                    [r for r in rows if r.source == SUMMARY]):
        for row, adjusted in zip(members, holm([r.p for r in members])):
            row.p_adjusted = float(adjusted)
    for row in rows:
        if row.extra.get("pending"):
            row.verdict = f"pending: the sweep has stored {row.seeds} seeds"
            continue
        held, at = row.p_adjusted < ALPHA, f"at {row.seeds} seeds"
        row.verdict = {None: ("a difference", "no difference detected"),
                       "greater": ("a difference", "no difference detected"),
                       "non-inferior": ("non-inferior within the margin", "non-inferiority not shown"),
                       "non-superior": ("no gain beyond the margin", "a gain beyond the margin not ruled out"),
                       }[_kind(row)][0 if held else 1] + " " + at
    fives = [r for r in rows if r.claim == 5]
    for env, regime in {(r.env, r.regime) for r in fives}:
        cell = [r for r in fives if (r.env, r.regime) == (env, regime)]
        held = [r for r in cell if r.p_adjusted < ALPHA and not r.extra.get("pending")]
        for r in cell:
            r.extra["cell_supported"] = bool(held)


def _kind(row: Row) -> str | None:
    return ("non-inferior" if row.test.startswith("non-inferiority") else
            "non-superior" if row.test.startswith("non-superiority") else
            "greater" if row.test.startswith("one-sided") else None)


def exploration(finals, envs: Sequence[str] = ("breakout", "space_invaders")) -> list[Row]:
    """Comparisons chosen after looking at the data: labelled as exploration, uncorrected, deciding
    nothing. Per cell, the best minus the worst of the equal-weight architectures (Welch)."""
    rows = []
    for env in envs:
        for regime in ("frozen", "learned"):
            cells = {a: cell_returns(finals, env, regime, a)[0] for a in EQUAL_WEIGHT}
            if min(len(x) for x in cells.values()) < 2:
                continue
            means = {a: x.mean() for a, x in cells.items()}
            best, worst = max(means, key=means.get), min(means, key=means.get)
            x, y = cell_returns(finals, env, regime, best)[0], cell_returns(finals, env, regime, worst)[0]
            p, ci = welch(x, y)
            rows.append(Row(1, env, regime, "Welch t, chosen after the fact", f"{best} - {worst} (best - worst)",
                            p, ci, float(x.mean() - y.mean()), f"{len(x)} and {len(y)}", planned=False,
                            verdict="exploration"))
    return rows


def cell_summary(finals) -> list[dict]:
    """Per env x regime x arch: seeds, mean with its Student-t interval, IQM with its Tukey-McLaughlin
    interval."""
    out = []
    for (env, regime, arch), g in finals.groupby(["env", "regime", "arch"]):
        x = g["return"].to_numpy(float)
        out.append({"env": env, "regime": regime, "arch": arch, "seeds": len(x), "mean": float(x.mean()),
                    "mean_interval": t_interval(x), "iqm": float(iqm(x)), "iqm_interval": iqm_interval(x)})
    return out
