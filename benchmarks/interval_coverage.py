"""Coverage of the book's 95% intervals at the study's seed counts (5 and 10), on made-up final
returns whose truth is known, against the BCa bootstrap (10,000 resamples) the book used before:

- the probability of improvement P(A > B): Newcombe's score interval, on normal returns shifted
  by d, whose true P(A > B) is Phi(d / sqrt(2));
- the interquartile mean: Tukey and McLaughlin's interval, on normal, Student t(3) and lognormal
  returns, whose true IQM is the population's 25% trimmed mean.

    python benchmarks/interval_coverage.py [--draws 2000] [--bca-draws 1000]
"""
import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
import claims  # noqa: E402


def bca(statistic, *samples):
    """scipy's BCa interval; NaN where every resample gives the same value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(samples, statistic, method="BCa", n_resamples=10_000, vectorized=True,
                              rng=np.random.default_rng(0))
    return res.confidence_interval.low, res.confidence_interval.high


def coverage(interval, draw, truth: float, draws: int, seed: int = 2) -> str:
    """Coverage of interval(*draw(rng)) where it is defined, its mean width, and the share of
    draws where it is not (a degenerate bootstrap)."""
    rng = np.random.default_rng(seed)
    bounds = np.array([interval(*draw(rng)) for _ in range(draws)], float)
    defined = np.isfinite(bounds).all(axis=1)
    low, high = bounds[defined].T
    undefined = f", undefined in {1 - defined.mean():.0%}" if not defined.all() else ""
    return f"{np.mean((low <= truth) & (truth <= high)):.3f} ({np.mean(high - low):.2f}{undefined})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000, help="data sets per cell for the book's intervals")
    parser.add_argument("--bca-draws", type=int, default=1000, help="data sets per cell for BCa")
    args = parser.parse_args()
    print("P(A > B)\n\n| seeds | true P(A > B) | Newcombe: coverage (width) | BCa: coverage (width) |\n|---|---|---|---|")
    for n in (5, 10):
        for shift in (0.0, 0.8, 1.8, 3.0):
            truth = stats.norm.cdf(shift / np.sqrt(2))
            draw = lambda rng: (rng.normal(shift, 1, n), rng.normal(0, 1, n))  # noqa: E731
            print(f"| {n} | {truth:.3f} | {coverage(claims.improvement_interval, draw, truth, args.draws)} "
                  f"| {coverage(lambda x, y: bca(claims.prob_improvement, x, y), draw, truth, args.bca_draws)} |",
                  flush=True)
    population = {"normal": lambda rng, size: rng.normal(0, 1, size),
                  "Student t(3)": lambda rng, size: rng.standard_t(3, size),
                  "lognormal(0, 0.5)": lambda rng, size: rng.lognormal(0, 0.5, size)}
    print("\nIQM\n\n| seeds | returns | Tukey-McLaughlin: coverage (width) | BCa: coverage (width) |\n|---|---|---|---|")
    for n in (5, 10):
        for name, sample in population.items():
            truth = stats.trim_mean(sample(np.random.default_rng(9), 4_000_000), 0.25)
            draw = lambda rng: (sample(rng, n),)  # noqa: E731
            print(f"| {n} | {name} | {coverage(claims.iqm_interval, draw, truth, args.draws)} "
                  f"| {coverage(lambda x: bca(claims.iqm, x), draw, truth, args.bca_draws)} |", flush=True)


if __name__ == "__main__":
    main()
