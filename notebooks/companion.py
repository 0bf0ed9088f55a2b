"""What only the book needs, beside its notebooks: a chapter's set-up, statistics over seeds (final
returns, bootstrap intervals, differences, verdicts), the paper's claims, figures laid out as the
paper's, and the mask explorer. `sparse_dqn.py` keeps what a training run needs.

Every notebook starts with

    import sys; sys.path[:0] = ["notebooks", "."]  # this file, from the repo root or notebooks/
    import companion as bk
    chapter = bk.Chapter("03_frozen", profile, results_dir, envs, seeds, frames)
"""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Sequence

import anywidget
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import traitlets

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import sparse_dqn as sd  # noqa: E402
from study import profiles, store  # noqa: E402

ENVS = ("breakout", "space_invaders")  # the paper's panels, left to right
TITLES = {"breakout": "Breakout", "space_invaders": "Space Invaders"}
ARCH_ORDER = ("dense", "random", "spatial", "predictive", "l1", "minatar_cnn")
_PALETTE = sns.color_palette("colorblind", 10).as_hex()
# colorblind-safe and far apart; MinAtar's reference network in grey
ARCH_COLOURS = dict(zip(ARCH_ORDER, [_PALETTE[0], _PALETTE[1], _PALETTE[2], _PALETTE[3], _PALETTE[4], "#7f7f7f"]))
VERDICTS = ("supports", "contradicts", "inconclusive at this scale")

# The paper's findings in its own words where we have them (abstract, TL;DR); the others come from
# third-party summaries of the paper (../shared/paper/method-notes.md) and are marked as such.
CLAIMS = {
    1: ("abstract", "sparse structure has a significant effect on learning performance"),
    2: ("abstract", "choosing the best sparse architecture for a given domain depends on whether the "
                    "hidden layer weights are fixed or learned"),
    3: ("summary", "Breakout, learned weights: predictive gives gains"),
    4: ("summary", "Space Invaders: spatial gives no gain, frozen or learned"),
    5: ("TL;DR", "spatial sparsity not universally superior"),
    6: ("TL;DR", "end-to-end sparsity (L1) capable of matching dense performance when learned"),
    7: ("summary", "L1 does not help with frozen weights"),
}


def colour(arch: str) -> str:
    """One colour per architecture in every figure; registered masks take the next free ones."""
    if arch not in ARCH_COLOURS:
        ARCH_COLOURS[arch] = _PALETTE[(len(ARCH_COLOURS) - 1) % len(_PALETTE)]
    return ARCH_COLOURS[arch]


def arch_order(archs) -> list[str]:
    archs = list(dict.fromkeys(archs))
    return [a for a in ARCH_ORDER if a in archs] + [a for a in archs if a not in ARCH_ORDER]


class Chapter:
    """One notebook's parameters: its profile, result store, games, seeds and frames."""

    def __init__(self, name: str, profile: str, results_dir: str, envs: Sequence[str] = ENVS,
                 seeds: Sequence[int] | None = None, frames: int | None = None):
        profiles.profile_config(profile)  # rejects an unknown profile in one line
        self.name, self.profile = name, profile
        self.results_dir = Path(results_dir) if Path(results_dir).is_absolute() else ROOT / results_dir
        self.envs = [e for e in ENVS if e in envs] + [e for e in envs if e not in ENVS]
        self.seeds = list(seeds or profiles.PROFILES[profile].seeds)
        self.frames = frames or profiles.PROFILES[profile].frames
        self.sweep_only = not profiles.PROFILES[profile].trains_in_book and seeds is None and frames is None
        sns.set_theme(style="whitegrid", context="notebook", font_scale=1.15)
        plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight"})

    @property
    def scale(self) -> str:
        """The scale every number of the chapter was measured at, for its tables."""
        seeds = f"{len(self.seeds)} seed" + "s" * (len(self.seeds) != 1)
        return f"{self.frames:,} frames per agent x {seeds} (profile {self.profile})"

    def config(self, **fields) -> sd.Config:
        return profiles.profile_config(self.profile, **{"frames": self.frames, **fields})

    def _refuse_to_train(self):
        """A profile made by the sweep (study) is only read: a live notebook must not start hours
        of training because a run is missing or stale."""
        problem = self.sweep_only and profiles.missing_runs(self.profile, self.results_dir)
        if problem:
            raise RuntimeError(problem)

    def train(self, configs, seeds: Sequence[int] | None = None, progress: bool = True) -> list[sd.RunResult]:
        self._refuse_to_train()
        return sd.train(configs, list(seeds or self.seeds), self.results_dir, progress)

    def runs(self, archs: Sequence[str], regimes: Sequence[str], **fields) -> pd.DataFrame:
        """The per-episode table of every env x arch x regime x seed: loaded, or trained."""
        self._refuse_to_train()
        return profiles.train_profile(self.profile, self.envs, archs, regimes, self.results_dir, self.seeds,
                                self.frames, **fields)

    def write(self, blob: dict, name: str | None = None):
        """The chapter's numbers as JSON under <results>/summary, for tests and other tools."""
        out = self.results_dir / "summary" / f"{name or self.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(blob, indent=1, default=float))


# ----------------------------------------------------------------------------------------------
# Statistics over seeds
# ----------------------------------------------------------------------------------------------
def final_returns(df: pd.DataFrame, last: int = 100) -> pd.DataFrame:
    """Final performance per run: mean return of its last `last` episodes."""
    keys = ["env", "arch", "regime", "key", "seed"]
    tail = df.sort_values("episode").groupby(keys).tail(last)
    return tail.groupby(keys, as_index=False)["return"].mean()


def bootstrap_ci(values, statistic=np.mean, level: float = 0.95, seed: int = 0, min_seeds: int = 3):
    """Percentile bootstrap interval (scipy) of a statistic over seeds. With fewer than min_seeds
    per sample it returns NaNs: resampling two numbers gives an interval in name only."""
    from scipy.stats import bootstrap

    values = [np.asarray(v, float) for v in (values if isinstance(values, tuple) else (values,))]
    if min(len(v) for v in values) < min_seeds:
        return float("nan"), float("nan")
    res = bootstrap(tuple(values), statistic, confidence_level=level, method="percentile",
                    n_resamples=2_000, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def final_table(df: pd.DataFrame, last: int = 100) -> pd.DataFrame:
    """Mean final return over seeds with its 95% bootstrap interval, per env, regime and arch."""
    rows = []
    for (env, regime, arch), g in final_returns(df, last).groupby(["env", "regime", "arch"]):
        lo, hi = bootstrap_ci(g["return"].to_numpy())
        rows.append((env, regime, arch, len(g), g["return"].mean(), lo, hi))
    table = pd.DataFrame(rows, columns=["env", "regime", "arch", "seeds", "final return", "ci low", "ci high"])
    order = {a: i for i, a in enumerate(arch_order(table.arch))}
    return table.sort_values(["env", "regime", "arch"], key=lambda c: c.map(order) if c.name == "arch" else c,
                             ignore_index=True)


def difference(df: pd.DataFrame, env: str, regime: str, a: str, b: str, last: int = 100):
    """Mean final return of arch a minus arch b, a 95% bootstrap interval over seeds, and |mean b|."""
    finals = final_returns(df, last)
    sel = finals[(finals.env == env) & (finals.regime == regime)]
    x, y = (sel.loc[sel.arch == arch, "return"].to_numpy() for arch in (a, b))
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"no runs of arch={a if len(x) == 0 else b!r} for {env}, {regime}")
    lo, hi = bootstrap_ci((x, y), statistic=lambda u, v, axis=-1: u.mean(axis) - v.mean(axis))
    return float(x.mean() - y.mean()), lo, hi, float(abs(y.mean()))


def verdict(diff: tuple, expect: str, tolerance: float = 0.1) -> str:
    """Reads a difference (a - b, CI) against a claim: expect 'greater' (a beats b), 'no gain'
    (a does not beat b by more than tolerance x |b|) or 'equal' (within tolerance x |b|)."""
    mean, lo, hi, scale = diff
    margin = tolerance * max(scale, 1e-9)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return VERDICTS[2]
    if expect == "greater":
        return VERDICTS[0] if lo > 0 else VERDICTS[1] if hi < 0 else VERDICTS[2]
    if expect == "no gain":
        return VERDICTS[0] if hi < margin else VERDICTS[1] if lo > 0 else VERDICTS[2]
    if expect == "equal":
        if -margin < lo and hi < margin:
            return VERDICTS[0]
        return VERDICTS[1] if lo > 0 or hi < 0 else VERDICTS[2]
    raise ValueError(f"expect={expect!r} is not allowed; expected greater, no gain or equal")


def learning_curves(df: pd.DataFrame, points: int = 20) -> pd.DataFrame:
    """Per run, the mean return of the episodes that end in each of `points` equal frame bins:
    the tidy input of a line plot whose band bootstraps over seeds."""
    edges = np.linspace(0, df["frame"].max(), points + 1)
    binned = df.assign(frame=edges[1:][np.clip(np.searchsorted(edges, df["frame"], "left") - 1, 0, points - 1)])
    return binned.groupby(["env", "arch", "regime", "seed", "frame"], as_index=False)["return"].mean()


# ----------------------------------------------------------------------------------------------
# The paper's claims, each read from the runs
# ----------------------------------------------------------------------------------------------
def claim(df: pd.DataFrame, number: int, env: str, regime: str, a: str, b: str, expect: str,
          note: str = "") -> dict:
    """One row of a chapter's claims table: the claim, the comparison that tests it, the
    difference of final returns (a - b) with its 95% interval, and the computed verdict."""
    d = difference(df, env, regime, a, b)
    source, words = CLAIMS[number]
    return {"claim": f"{number}. {words}", "source": source,
            "comparison": f"{TITLES.get(env, env)}, {regime}: {a} - {b}" + (f" ({note})" if note else ""),
            "difference": d[0], "ci low": d[1], "ci high": d[2], "verdict": verdict(d, expect)}


def mean_finals(df: pd.DataFrame, env: str) -> pd.Series:
    """Mean final return over seeds per arch (in the book's order) in one game: which is best or
    worst. No interval: final_table bootstraps, this only ranks."""
    finals = final_returns(df)
    means = finals[finals.env == env].groupby("arch")["return"].mean()
    return means.reindex(arch_order(means.index))


def frozen_claims(df: pd.DataFrame, envs: Sequence[str]) -> list[dict]:
    """Claims 1, 4, 5 and 7 against Figure 1's runs (frozen hidden weights)."""
    rows = []
    for env in envs:
        finals = mean_finals(df, env)
        rows.append(claim(df, 1, env, "frozen", finals.idxmax(), finals.idxmin(), "greater", "best - worst, chosen after the fact"))
        rows.append(claim(df, 5, env, "frozen", finals.drop("spatial").idxmax(), "spatial", "greater", "best other - spatial"))
        rows.append(claim(df, 7, env, "frozen", "l1", "dense", "no gain"))
    if "space_invaders" in envs:
        rows.append(claim(df, 4, "space_invaders", "frozen", "spatial", "dense", "no gain"))
    return rows


def learned_claims(df: pd.DataFrame, frozen: pd.DataFrame, envs: Sequence[str]) -> list[dict]:
    """Claims 2, 3, 4 and 6 against Figure 2's runs (learned), with the frozen runs for claim 2."""
    rows = []
    for env in envs:
        best_frozen = mean_finals(frozen, env).idxmax()
        learned = mean_finals(df, env).drop("minatar_cnn", errors="ignore")
        best = learned.idxmax()
        if best != best_frozen:
            rows.append(claim(df, 2, env, "learned", best, best_frozen, "greater", "best learned - best frozen"))
        else:  # the same arch is best in both: the claim holds only if that is within noise
            row = claim(df, 2, env, "learned", best, learned.drop(best).idxmax(), "greater",
                        f"{best} is best frozen and learned; best - runner-up")
            row["verdict"] = VERDICTS[1] if row["verdict"] == VERDICTS[0] else VERDICTS[2]
            rows.append(row)
        rows.append(claim(df, 6, env, "learned", "l1", "dense", "equal"))
    if "breakout" in envs:
        rows.append(claim(df, 3, "breakout", "learned", "predictive", "dense", "greater"))
    if "space_invaders" in envs:
        rows.append(claim(df, 4, "space_invaders", "learned", "spatial", "dense", "no gain"))
    return rows


def l1_claims(df: pd.DataFrame, envs: Sequence[str]) -> list[dict]:
    """Claims 6 and 7: L1 beside dense, frozen and learned."""
    return [row for env in envs for row in (claim(df, 7, env, "frozen", "l1", "dense", "no gain"),
                                            claim(df, 6, env, "learned", "l1", "dense", "equal"))]


def claims_table(rows: list[dict], scale: str):
    """The table a results chapter opens with: claim, our verdict, difference, interval, scale."""
    table = pd.DataFrame(rows)
    table["difference (95% CI)"] = [f"{d:+.2f} ({lo:+.2f}, {hi:+.2f})" if np.isfinite(lo) else f"{d:+.2f} (no interval)"
                                    for d, lo, hi in zip(table["difference"], table["ci low"], table["ci high"])]
    shown = table[["claim", "source", "verdict", "comparison", "difference (95% CI)"]]
    colours = {VERDICTS[0]: "#d8f0d2", VERDICTS[1]: "#f8d4d0", VERDICTS[2]: "#eeeeee"}
    return (shown.style.hide(axis="index")
            .map(lambda v: f"background-color: {colours[v]}", subset=["verdict"])
            .set_caption(f"Measured at {scale}; difference = mean final return of the first arch minus the second.")
            .set_table_attributes('class="claims"'))


def reading(rows: list[dict], scale: str):
    """The chapter's verdicts in one sentence, computed, as Markdown."""
    from IPython.display import Markdown

    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    supported = sorted({r["claim"].split(".")[0] for r in rows if r["verdict"] == VERDICTS[0]}, key=int)
    contradicted = sorted({r["claim"].split(".")[0] for r in rows if r["verdict"] == VERDICTS[1]}, key=int)
    text = (f"**Reading.** At {scale}, of {len(rows)} comparisons {counts[VERDICTS[0]]} support the paper's claim, "
            f"{counts[VERDICTS[1]]} contradict it and {counts[VERDICTS[2]]} are inconclusive.")
    if supported:
        text += f" Supported: claim{'s' * (len(supported) > 1)} {', '.join(supported)}."
    if contradicted:
        text += f" Contradicted: claim{'s' * (len(contradicted) > 1)} {', '.join(contradicted)}."
    return Markdown(text)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def returns_figure(df: pd.DataFrame, title: str, frozen_finals: pd.DataFrame | None = None):
    """Figures 1 and 2 as the paper lays them out: one panel per game (Breakout left), average
    return against frames, the mean over seeds with a 95% bootstrap band; with frozen_finals,
    a dashed line at each architecture's frozen final return."""
    curves = learning_curves(df)
    envs = [e for e in ENVS if e in set(curves.env)]
    archs = arch_order(curves.arch)
    fig, axes = plt.subplots(1, len(envs), figsize=(4.8 * len(envs), 4.2), squeeze=False)
    for ax, env in zip(axes[0], envs):
        sns.lineplot(data=curves[curves.env == env], x="frame", y="return", hue="arch", hue_order=archs,
                     palette={a: colour(a) for a in archs}, errorbar=("ci", 95), n_boot=1000, seed=0,
                     ax=ax, legend=ax is axes[0][-1], lw=2)
        if frozen_finals is not None:
            for _, row in frozen_finals[frozen_finals.env == env].iterrows():
                ax.axhline(row["final return"], ls="--", lw=1.2, color=colour(row["arch"]))
        ax.set_title(TITLES[env])
        ax.set_xlabel("frames")
        ax.set_ylabel("average return")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x / 1e3:g}k" if x < 1e6 else f"{x / 1e6:g}M"))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    axes[0][-1].get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=len(archs), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def random_policy(envs: Sequence[str], episodes: int, movie_frames: int = 60, seed: int = 0):
    """The uniformly random policy in MinAtar itself: a table of its returns and episode lengths
    per game, and its first frames per game, for figures."""
    stats, movies = [], {}
    for env_name in envs:
        env, rng = sd.make_env(sd.Config(env=env_name), seed=seed), np.random.default_rng(seed)
        returns, lengths, total, length, movies[env_name] = [], [], 0.0, 0, []
        while len(returns) < episodes:
            reward, terminal = env.act(int(rng.integers(sd.NUM_ACTIONS)))
            total, length = total + reward, length + 1
            if len(movies[env_name]) < movie_frames:
                movies[env_name].append(sd.observe(env))
            if terminal:
                returns.append(total)
                lengths.append(length)
                total, length = 0.0, 0
                env.reset()
        stats.append((env_name, len(returns), np.mean(returns), np.std(returns), np.mean(lengths)))
    return pd.DataFrame(stats, columns=["env", "episodes", "mean return", "std return", "mean length"]), movies


def minatar_colours(env: str) -> list:
    """MinAtar's own display: black background, one cubehelix colour per channel."""
    return [(0.0, 0.0, 0.0)] + list(sns.color_palette("cubehelix", sd.CHANNELS[env]))


def draw_frame(env: str, frame: np.ndarray, ax=None, legend: bool = True):
    """One observation as MinAtar's display draws it: each cell the colour of its highest channel
    that is on, black where none is; with a legend of the channels."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    channels = sd.CHANNELS[env]
    colours = minatar_colours(env)
    numbered = np.amax(frame.reshape(channels, sd.GRID, sd.GRID) * np.arange(1, channels + 1)[:, None, None], 0)
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(numbered + 0.5, cmap=ListedColormap(colours), norm=BoundaryNorm(range(channels + 2), channels + 1),
              interpolation="none")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(TITLES[env])
    if legend:
        ax.legend(handles=[Patch(color=colours[i + 1], label=n) for i, n in enumerate(sd.channel_names(env))],
                  loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=9)
    return ax


def channels_figure(env: str, frame: np.ndarray):
    """One observation channel by channel (a 10x10 binary grid each), then as MinAtar draws it."""
    names = sd.channel_names(env)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(2.0 * (len(names) + 1), 2.4))
    grid = frame.reshape(len(names), sd.GRID, sd.GRID)
    for ax, name, plane in zip(axes, names, grid):
        ax.imshow(plane, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    draw_frame(env, frame, axes[-1], legend=False)
    axes[-1].set_title("as MinAtar draws it", fontsize=10)
    fig.suptitle(TITLES[env])
    fig.tight_layout()
    return fig


def animation(env: str, movie: Sequence[np.ndarray], fps: int = 8):
    """Frames of play as an animated GIF embedded in the page, drawn as MinAtar draws them."""
    import io

    from IPython.display import HTML
    from PIL import Image

    fig, ax = plt.subplots(figsize=(2.6, 2.6))
    pictures = []
    for frame in movie:
        ax.clear()
        draw_frame(env, frame, ax, legend=False)
        fig.canvas.draw()
        pictures.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
    plt.close(fig)
    buf = io.BytesIO()
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:], duration=1000 // fps, loop=0)
    gif = base64.b64encode(buf.getvalue()).decode()
    return HTML(f'<img alt="{TITLES[env]}, random play" src="data:image/gif;base64,{gif}">')


def plot_mask(env: str, inputs: Sequence[int], centre: int | None, title: str = ""):
    """One neighbourhood as the paper's Figures 4 and 5 draw it, a 10x10 panel per channel: the
    inputs that are on in yellow, the centre entry marked with a red X."""
    channels = sd.CHANNELS[env]
    fig, axes = plt.subplots(1, channels, figsize=(1.9 * channels, 2.3))
    grid = np.zeros(channels * sd.GRID * sd.GRID)
    grid[list(inputs)] = 1
    grid = grid.reshape(channels, sd.GRID, sd.GRID)
    for ch, (ax, name) in enumerate(zip(axes, sd.channel_names(env))):
        ax.imshow(grid[ch], cmap="viridis", vmin=0, vmax=1)
        if centre is not None and centre // (sd.GRID * sd.GRID) == ch:
            ax.plot(centre % sd.GRID, (centre // sd.GRID) % sd.GRID, "x", color="red", ms=10, mew=3)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def mask_statistics(env: str, masks: dict, centres: dict):
    """Fan-in and mean grid distance of each architecture's inputs to its unit's centre (NaN
    without centres), and the mean Jaccard overlap of units between architectures."""
    rc = sd.input_coords(env)[:, 1:].float()

    def distance(arch):
        if centres.get(arch) is None:
            return float("nan")
        mask = masks[arch]
        return float((rc[mask] - rc[centres[arch]].unsqueeze(1)).norm(dim=2).mean())

    def overlap(a, b):
        if masks[a].shape != masks[b].shape:
            return float("nan")
        return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / len(set(x.tolist()) | set(y.tolist()))
                              for x, y in zip(masks[a], masks[b])]))

    stats = pd.DataFrame({"fan-in": [masks[a].shape[1] for a in masks],
                          "mean distance to centre": [distance(a) for a in masks]}, index=list(masks))
    sparse = [a for a in masks if a != "dense"]
    return stats, pd.DataFrame([[overlap(a, b) for b in sparse] for a in sparse], index=sparse, columns=sparse)


def capacity_table(chapter: Chapter, archs: Sequence[str] = profiles.FIGURE_ARCHS) -> pd.DataFrame:
    """Hidden units, inputs per unit and hidden weights of each architecture (frozen regime), and
    of MinAtar's reference network, per game: every sparse layer has the same capacity."""
    rows = []
    for env in chapter.envs:
        for arch in archs:
            units, k = chapter.config(env=env, arch=arch, regime="frozen").layer_shape
            rows.append((env, arch, units, k, units * k))
        rows.append((env, "minatar_cnn (reference)", 128, None, 16 * sd.CHANNELS[env] * 9 + 1024 * 128))
    return pd.DataFrame(rows, columns=["env", "arch", "hidden units", "inputs per unit", "hidden weights"]).astype(
        {"inputs per unit": "Int64"})


# ----------------------------------------------------------------------------------------------
# The mask explorer: one anywidget, live in Jupyter and static in the book
# ----------------------------------------------------------------------------------------------
def _bits(mask, inputs: int) -> str:
    """A (units, k) index mask as base64 of one bitset per unit: what the explorer's JS decodes."""
    mask = np.asarray(mask)
    dense = np.zeros((mask.shape[0], inputs), bool)
    dense[np.arange(mask.shape[0])[:, None], mask] = True
    return base64.b64encode(np.packbits(dense, axis=1, bitorder="little").tobytes()).decode()


def _entry(env: str, mask, centres) -> dict:
    mask = np.asarray(mask)
    return {"units": int(mask.shape[0]), "k": int(mask.shape[1]), "bits": _bits(mask, sd.CHANNELS[env] * sd.GRID ** 2),
            "centres": None if centres is None else [int(c) for c in centres]}


def explorer_data(chapter: Chapter, archs: Sequence[str], seeds: Sequence[int]) -> dict:
    """Every mask the explorer draws: game -> arch -> seed -> bitsets and centres. Masks that do
    not depend on the seed (dense, spatial) are stored once; L1 masks come from the learned L1
    runs of the chapter's store (trained if missing)."""
    data = {}
    for env in chapter.envs:
        game = {"channels": list(sd.channel_names(env)), "colours": [f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
                                                                      for r, g, b in minatar_colours(env)[1:]],
                "archs": {}}
        for arch in archs:
            per_seed = {}
            for seed in ([seeds[0]] if arch in ("dense", "spatial") else seeds):
                cfg = chapter.config(env=env, arch=arch, regime="learned" if arch == "l1" else "frozen")
                if arch == "l1":
                    per_seed[str(seed)] = _entry(env, chapter.train(cfg, [seed], progress=False)[0].mask, None)
                else:
                    per_seed[str(seed)] = _entry(env, sd.build_mask(cfg, seed)[0],
                                                 None if arch == "dense" else sd.mask_centres(cfg, seed).tolist())
            game["archs"][arch] = per_seed
        data[env] = game
    return data


class MaskExplorer(anywidget.AnyWidget):
    """The explorer over explorer_data(...): pick a game, architecture, seed, unit and channel; it
    draws in the browser from the embedded data, so the static book needs no kernel.
    `add_mask(name, env, mask)` shows your own (units, k) index tensor in a live notebook."""
    _esm = Path(__file__).with_name("mask_explorer.js").read_text()
    _css = """
    .mask-explorer .mx-controls { display: flex; flex-wrap: wrap; gap: 0.4em 1.2em; align-items: center; }
    .mask-explorer .mx-controls input[type=number] { width: 5em; }
    .mask-explorer .mx-drawing { display: flex; flex-wrap: wrap; gap: 1.5em; }
    .mask-explorer .mx-panel { margin: 0; width: min(260px, 90vw); }
    .mask-explorer .mx-panel figcaption { text-align: center; font-size: 0.9em; }
    .mask-explorer .mx-centre line { stroke: red; stroke-width: 0.14; stroke-linecap: round; }
    .mask-explorer .mx-count { font-size: 0.42px; text-anchor: middle; fill: #fff; paint-order: stroke;
                               stroke: #222; stroke-width: 0.06px; }
    """
    data = traitlets.Dict().tag(sync=True)
    start = traitlets.Dict().tag(sync=True)

    def add_mask(self, name: str, env: str, mask, centres=None):
        mask = np.asarray(mask)
        inputs = sd.CHANNELS[env] * sd.GRID ** 2
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer) or mask.min() < 0 or mask.max() >= inputs:
            raise ValueError(f"mask of shape {mask.shape} and dtype {mask.dtype} is not allowed; expected a "
                             f"(units, k) integer tensor of indices in 0..{inputs - 1}")
        data = json.loads(json.dumps(self.data))
        data[env]["archs"][name] = {"0": _entry(env, mask, centres)}
        self.start = {"env": env, "arch": name, "seed": "0"}
        self.data = data
