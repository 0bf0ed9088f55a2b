"""What only the book needs, beside its notebooks: a chapter's set-up, statistics over seeds (final
returns, Student-t intervals, differences, verdicts), the paper's claims, figures laid out as the
paper's, and the mask explorer. `sparse_dqn.py` keeps what a training run needs.

Every notebook starts with

    import sys; sys.path[:0] = ["notebooks", "."]  # this file, from the repo root or notebooks/
    import companion as bk
    chapter = bk.Chapter("03_frozen", profile, results_dir, envs, seeds, frames)
"""
from __future__ import annotations

import base64
import html
import json
import sys
import zlib
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
from engine.games import channel_names  # noqa: E402
from study import profiles, store  # noqa: E402

import claims  # noqa: E402  beside this file

ENVS = tuple(sd.CHANNELS)  # the games of engine.games' registry: the paper's panels, left to right
TITLES = {env: env.replace("_", " ").title() for env in ENVS}
ARCH_ORDER = ("dense", "random", "spatial", "predictive", "l1", "minatar_cnn", "dense_wide")
_PALETTE = sns.color_palette("colorblind", 10).as_hex()
# Six colours of seaborn's colorblind palette, chosen so that every pair stays apart under each
# common colour-vision deficiency (palette_distances); the width control shares dense's colour and
# is dashed in every figure (CONTROLS). A registered mask takes the palette's next colour.
ARCH_COLOURS = {"dense": _PALETTE[0], "random": _PALETTE[7], "spatial": _PALETTE[3], "predictive": "#000000",
                "l1": _PALETTE[5], "minatar_cnn": _PALETTE[9], "dense_wide": _PALETTE[0]}
CONTROLS = ("dense_wide",)
"""Controls, not the paper's architectures: drawn dashed in every figure."""
BAND = claims.t_interval
"""The 95% band of every curve over seeds: Student t, as in the tables, because at 3 to 10 seeds a
percentile bootstrap's band is narrower than its coverage claims."""


def colour(arch: str) -> str:
    """One colour per architecture in every figure; registered masks take the palette's unused ones."""
    if arch not in ARCH_COLOURS:
        free = [c for c in _PALETTE if c not in ARCH_COLOURS.values()] or _PALETTE
        ARCH_COLOURS[arch] = free[0]
    return ARCH_COLOURS[arch]


# Machado, Oliveira & Fernandes (2009): full-severity simulations on linear RGB.
_DEFICIENCIES = {"protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                                [-0.003882, -0.048116, 1.051998]],
                 "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                                  [-0.011820, 0.042940, 0.968881]],
                 "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                                [0.004733, 0.691367, 0.303900]]}


def _lab(linear_rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of a linear-RGB colour."""
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ np.clip(linear_rgb, 0, 1)
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def palette_distances(archs: Sequence[str] = ARCH_ORDER) -> dict[str, float]:
    """The smallest CIELAB distance (Delta E 1976) between the colours of two architectures that
    the figures tell apart by colour alone (a control is told apart by its dashes), for normal
    vision and each simulated deficiency. About 2.3 is a just-noticeable difference."""
    import matplotlib.colors as mc

    srgb = {a: np.array(mc.to_rgb(colour(a))) for a in archs if a not in CONTROLS}
    linear = {a: np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) for a, c in srgb.items()}
    out = {}
    for vision, matrix in {"normal": np.eye(3), **_DEFICIENCIES}.items():
        labs = {a: _lab(np.asarray(matrix) @ c) for a, c in linear.items()}
        out[vision] = min(float(np.linalg.norm(labs[a] - labs[b])) for i, a in enumerate(labs) for b in list(labs)[i + 1:])
    return out


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
        if self.sweep_only:
            seeds = f"up to {seeds} (each table gives its own)"
        return f"{self.frames:,} frames per agent x {seeds} (profile {self.profile})"

    def config(self, **fields) -> sd.Config:
        return profiles.profile_config(self.profile, **{"frames": self.frames, **fields})

    def _stored(self, configs, seeds) -> list[sd.RunResult]:
        """A sweep's profile (study) is only read, never trained in the book: the stored runs of
        these configs and seeds, those the sweep has not made yet left out (pending() names them).
        Refuses, with the line that names the sweep's command, a store that holds none."""
        runs = [run for cfg in configs for seed in seeds
                if (run := store.load_run(self.results_dir, cfg, seed)) is not None]
        if not runs:
            raise RuntimeError(profiles.missing_runs(self.profile, self.results_dir))
        return runs

    def pending(self) -> str | None:
        """For a sweep's profile, one line on the planned runs not yet in the store; else None."""
        return self.sweep_only and profiles.missing_runs(self.profile, self.results_dir) or None

    def train(self, configs, seeds: Sequence[int] | None = None, progress: bool = True) -> list[sd.RunResult]:
        configs = [configs] if isinstance(configs, sd.Config) else list(configs)
        if self.sweep_only:
            return self._stored(configs, list(seeds or self.seeds))
        return sd.train(configs, list(seeds or self.seeds), self.results_dir, progress)

    def runs(self, archs: Sequence[str], regimes: Sequence[str], **fields) -> pd.DataFrame:
        """The per-episode table of every env x arch x regime x seed: loaded, or trained (not for
        a sweep's profile: there, what the store holds)."""
        if self.sweep_only:
            configs = [self.config(env=e, arch=a, regime=r, **fields) for e in self.envs for r in regimes for a in archs]
            return store.episodes_frame(self._stored(configs, self.seeds))
        return profiles.train_profile(self.profile, self.envs, archs, regimes, self.results_dir, self.seeds,
                                      self.frames, **fields)

    def write(self, blob: dict | list, name: str | None = None):
        """The chapter's numbers as strict JSON under <results>/summary, for tests and other tools:
        a number that does not exist (an interval at one seed, a pending test's) is null, since
        NaN is not JSON and a browser's JSON.parse refuses it."""
        def strict(x):
            if isinstance(x, dict):
                return {k: strict(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [strict(v) for v in x]
            if isinstance(x, (float, np.floating)):
                return float(x) if np.isfinite(x) else None
            return x.item() if isinstance(x, np.generic) else x

        out = self.results_dir / "summary" / f"{name or self.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(strict(blob), indent=1, allow_nan=False))


# ----------------------------------------------------------------------------------------------
# Statistics over seeds
# ----------------------------------------------------------------------------------------------
def final_returns(df: pd.DataFrame, last: int = 100) -> pd.DataFrame:
    """Final performance per run: mean return of its last `last` episodes."""
    keys = ["env", "arch", "regime", "key", "seed"]
    tail = df.sort_values("episode").groupby(keys).tail(last)
    return tail.groupby(keys, as_index=False)["return"].mean()


def final_table(df: pd.DataFrame, last: int = 100) -> pd.DataFrame:
    """Per env, regime and arch: seeds, mean final return with its 95% Student-t interval over
    seeds, and the interquartile mean (IQM) with its 95% Tukey-McLaughlin interval."""
    rows = [(c["env"], c["regime"], c["arch"], c["seeds"], c["mean"], *c["mean_interval"], c["iqm"], *c["iqm_interval"])
            for c in claims.cell_summary(final_returns(df, last))]
    table = pd.DataFrame(rows, columns=["env", "regime", "arch", "seeds", "final return", "ci low", "ci high",
                                        "IQM", "IQM low", "IQM high"])
    order = {a: i for i, a in enumerate(arch_order(table.arch))}
    return table.sort_values(["env", "regime", "arch"], key=lambda c: c.map(order) if c.name == "arch" else c,
                             ignore_index=True)


def learning_curves(df: pd.DataFrame, points: int = 20) -> pd.DataFrame:
    """Per run, the mean return of the episodes that end in each of `points` equal frame bins:
    the tidy input of a line plot whose band spans seeds."""
    edges = np.linspace(0, df["frame"].max(), points + 1)
    binned = df.assign(frame=edges[1:][np.clip(np.searchsorted(edges, df["frame"], "left") - 1, 0, points - 1)])
    return binned.groupby(["env", "arch", "regime", "seed", "frame"], as_index=False)["return"].mean()


# ----------------------------------------------------------------------------------------------
# The claims, each tested as notebooks/claims.py fixes it
# ----------------------------------------------------------------------------------------------
CLAIM_ARCHS = claims.EQUAL_WEIGHT + ("l1", "dense_wide")


def claims_report(chapter: Chapter) -> tuple[list, list]:
    """Every planned test and the exploration, from the runs of every architecture a claim uses,
    both regimes; written to <results>/summary/claims.json (one row per test)."""
    finals = final_returns(chapter.runs(CLAIM_ARCHS, ["frozen", "learned"]))
    planned, explored = claims.planned_tests(finals, chapter.envs), claims.exploration(finals, chapter.envs)
    chapter.write([r.as_json() for r in planned + explored], "claims")
    return planned, explored


def _fmt(x, digits=2):
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def p_value_text(p) -> str:
    return "–" if p is None or not np.isfinite(p) else "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def estimate_text(row: dict) -> str:
    """A claims.json row's estimate as a table shows it: the estimate and its 95% interval; for a
    permutation test, its effect size (eta^2, or the regimes' rank agreement), then its statistic."""
    low, high = row["interval"]
    text = _fmt(row["estimate"]) + ("" if low is None or not np.isfinite(low) else f" [{_fmt(low)}, {_fmt(high)}]")
    if "statistic" not in row:
        return text
    name = {"eta squared": "η²", "mean Kendall tau": "mean τ"}[row["estimate_of"]]
    return f"{name} {text}; {'F' if 'F' in row['test'] else 'statistic'} {_fmt(row['statistic'])}"


def claims_frame(rows: list, numbers: Sequence[int] | None = None) -> pd.DataFrame:
    """The rows of these claims as a table a reader scans: claim, where (game, regime), what is
    tested and how, the estimate with its 95% interval (a difference of mean final returns; for a
    permutation test its effect size, eta^2 or the regimes' rank agreement, and its statistic),
    the p-value (Holm-adjusted for planned tests), the verdict, and the seeds per architecture
    that would give an open test 80% power."""
    out = []
    for r in rows:
        if numbers is not None and r.claim not in numbers:
            continue
        where = ", ".join(x for x in (TITLES.get(r.env, r.env) if r.env else "both games", r.regime) if x)
        open_test = r.planned and r.p_adjusted is not None and r.p_adjusted >= claims.ALPHA
        out.append({"claim": r.claim, "where": where, "tested": f"{r.comparison} ({r.test})",
                    "estimate [95% CI]": estimate_text(r.as_json()),
                    "p (Holm)" if r.planned else "p (uncorrected)": p_value_text(r.p_adjusted if r.planned else r.p),
                    "verdict": r.verdict,
                    "seeds for 80% power": str(r.power_seeds) if open_test and r.power_seeds else ""})
    return pd.DataFrame(out)


def final_display(table: pd.DataFrame):
    """final_table as a reader reads it: one row per game, regime and architecture."""
    shown = pd.DataFrame({
        "game": table.env.map(lambda e: TITLES.get(e, e)), "regime": table.regime, "architecture": table.arch,
        "seeds": table.seeds,
        "final return [95% CI]": [f"{m:.2f} [{_fmt(lo)}, {_fmt(hi)}]" for m, lo, hi in
                                  zip(table["final return"], table["ci low"], table["ci high"])],
        "IQM [95% CI]": [f"{m:.2f} [{_fmt(lo)}, {_fmt(hi)}]" for m, lo, hi in
                         zip(table["IQM"], table["IQM low"], table["IQM high"])]})
    return shown.style.hide(axis="index")


def claims_html(frame: pd.DataFrame) -> str:
    """A claims table as HTML (here and in the intro): each cell labelled with its column, so that
    on a phone's width each row reflows into a card of labelled lines (companion.css) instead of
    scrolling sideways."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    def cell(column, value):
        verdict = ' class="verdict"' if column == "verdict" else ""
        return f'<td data-label="{html.escape(column)}"{verdict}>{html.escape(str(value))}</td>'

    body = "".join("<tr>" + "".join(cell(c, v) for c, v in row.items()) + "</tr>" for _, row in frame.iterrows())
    return f'<div class="table-scroll"><table class="claims"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def claims_tables(rows: list, explored: list, numbers: Sequence[int]):
    """A chapter's claims in two tables never mixed, the paper's words and the summaries', then
    its exploration; each says where its claims come from."""
    from IPython.display import HTML, Markdown, display

    for source, title, note in (
            (claims.PAPER, "What the paper says", "The authors' words, from the abstract."),
            (claims.SUMMARY, "What summaries of the paper say",
             "From summaries of the paper written by paper-digest sites, not by its authors: they may be wrong "
             "about the paper. A verdict here says what our runs show, not whether the paper says it.")):
        shown = [n for n in numbers if claims.CLAIMS[n][0] == source]
        if not shown:
            continue
        quotes = "; ".join(f"**{n}.** *\"{claims.CLAIMS[n][2]}\"* ({claims.CLAIMS[n][1]})" for n in shown)
        display(Markdown(f"**{title}.** {note} {quotes}."))
        display(HTML(claims_html(claims_frame(rows, shown))))
    mine = [r for r in explored if r.claim in numbers]
    if mine:
        display(Markdown("**Exploration**, chosen after looking at the runs: uncorrected, and it decides nothing."))
        display(HTML(claims_html(claims_frame(mine))))


def reading(rows: list, numbers: Sequence[int]):
    """What these claims' planned tests found, in a sentence each, as Markdown."""
    from IPython.display import Markdown

    lines = []
    for n in numbers:
        mine = [r for r in rows if r.claim == n]
        held = [r for r in mine if r.p_adjusted is not None and r.p_adjusted < claims.ALPHA]
        pending = [r for r in mine if r.extra.get("pending")]
        who = "the paper's" if claims.CLAIMS[n][0] == claims.PAPER else "a summary's"
        lines.append(f"- Claim {n} ({who}): {len(held)} of {len(mine)} planned tests find what it says"
                     + (f"; {len(pending)} wait for the sweep's runs" if pending else "") + ".")
    return Markdown("**Reading.**\n\n" + "\n".join(lines))


SPARSE_MASKS = ("random", "spatial", "predictive")


def width_rows(df: pd.DataFrame, regime: str, archs: Sequence[str] = SPARSE_MASKS) -> list[dict]:
    """Each of archs against both dense baselines in one regime, per game: Welch's 95% interval
    of the difference of mean final returns and P(arch > baseline) with its interval."""
    finals = final_returns(df[df.regime == regime])
    rows = []
    for env in [e for e in ENVS if e in set(finals.env)]:
        for arch in archs:
            x, _ = claims.cell_returns(finals, env, regime, arch)
            for base in ("dense", "dense_wide"):
                y, _ = claims.cell_returns(finals, env, regime, base)
                row = dict(env=env, arch=arch, base=base, seeds=(len(x), len(y)), diff=None)
                if min(len(x), len(y)) >= 2:
                    _, row["ci"] = claims.welch(x, y)
                    row["diff"], row["pi"] = x.mean() - y.mean(), claims.prob_improvement(x, y)
                    row["pi_ci"] = claims.improvement_interval(x, y)
                rows.append(row)
    return rows


def width_table(rows: list[dict]) -> pd.DataFrame:
    """Sparsity or width? width_rows as a table: differences of mean final return with Welch's 95%
    interval and P(arch > baseline) with its interval. Descriptive: not among the planned tests."""
    shown = [(TITLES[r["env"]], r["arch"], r["base"],
              "–" if r["diff"] is None else f"{r['diff']:+.2f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]",
              "–" if r["diff"] is None else f"{r['pi']:.2f} [{_fmt(r['pi_ci'][0])}, {_fmt(r['pi_ci'][1])}]",
              "{} and {} seeds".format(*r["seeds"])) for r in rows]
    return pd.DataFrame(shown, columns=["game", "mask", "against", "difference [95% CI]",
                                        "P(mask > baseline) [95% CI]", "runs"])


def _names(archs: Sequence[str]) -> str:
    archs = [f"`{a}`" for a in archs]
    return archs[0] if len(archs) == 1 else ", ".join(archs[:-1]) + " and " + archs[-1]


def width_reading(every: list[dict], regime: str):
    """What width_table shows of one regime's width_rows, a sentence per game, as Markdown: which
    archs end above or below each dense baseline (the Welch interval excludes 0) and which sit
    above `dense` but not above `dense_wide`, whose gain width alone could explain."""
    from IPython.display import Markdown

    lines = []
    for env in dict.fromkeys(r["env"] for r in every):
        rows = [r for r in every if r["env"] == env]
        parts, above = [], {}
        for base in ("dense", "dense_wide"):
            mine = [r for r in rows if r["base"] == base]
            if any(r["diff"] is None for r in mine):
                parts.append(f"against `{base}`: not enough runs yet (2 seeds each at least)")
                continue
            above[base] = [r["arch"] for r in mine if r["ci"][0] > 0]
            below = [r["arch"] for r in mine if r["ci"][1] < 0]
            level = [r["arch"] for r in mine if r["ci"][0] <= 0 <= r["ci"][1]]
            said = [f"{_names(named)} end{'s' * (len(named) == 1)} {where}"
                    for named, where in ((above[base], "above"), (below, "below")) if named]
            said += [f"no difference detected for {_names(level)}"] if level else []
            parts.append(f"against `{base}`, " + "; ".join(said))
        line = f"- {TITLES[env]}: " + "; ".join(parts) + "."
        if len(above) == 2:
            width = [a for a in above["dense"] if a not in above["dense_wide"]]
            beyond = [a for a in above["dense"] if a in above["dense_wide"]]
            if width:
                line += f" Width alone could explain the gain of {_names(width)} over `dense`."
            if beyond:
                line += f" The gain of {_names(beyond)} holds against the equally wide dense layer too."
        lines.append(line)
    return Markdown(f"**Reading, {regime}** (descriptive: uncorrected 95% intervals, not planned tests).\n\n"
                    + "\n".join(lines))


def width_section(df: pd.DataFrame, regimes: Sequence[str], archs: Sequence[str] = SPARSE_MASKS):
    """A chapter's "Sparsity or width?" numbers: per regime, width_table (as cards on a phone, like
    the claims tables) and width_reading."""
    from IPython.display import HTML, display

    for regime in regimes:
        rows = width_rows(df, regime, archs)
        display(HTML(claims_html(width_table(rows))), width_reading(rows, regime))


def improvement_figure(df: pd.DataFrame, regime: str, pairs: Sequence[tuple[str, str]]):
    """The probability of improvement P(A > B) with its 95% interval for each pair a claim
    uses, per game, in one regime (Agarwal et al. 2021)."""
    finals = final_returns(df[df.regime == regime])
    envs = [e for e in ENVS if e in set(finals.env)]
    fig, axes = plt.subplots(1, len(envs), figsize=(4.6 * len(envs), 0.45 * len(pairs) + 1.3), squeeze=False,
                             sharey=True)
    for ax, env in zip(axes[0], envs):
        for i, (a, b) in enumerate(pairs):
            (x, _), (y, _) = claims.cell_returns(finals, env, regime, a), claims.cell_returns(finals, env, regime, b)
            if min(len(x), len(y)) < 2:
                continue
            p = claims.prob_improvement(x, y)
            lo, hi = claims.improvement_interval(x, y)
            ax.errorbar(p, i, xerr=[[p - lo], [hi - p]] if np.isfinite(lo) else None, fmt="o", color=colour(a),
                        capsize=3)
        ax.axvline(0.5, color="grey", lw=1, ls=":")
        ax.set_yticks(range(len(pairs)), [f"{a} > {b}" for a, b in pairs])
        ax.set_xlim(-0.03, 1.03)  # a point at 0 or 1 (runs that separate) stays whole
        ax.set_title(TITLES[env])
        ax.set_xlabel("P(A > B)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def frames_axis(ax):
    """Frames on ax's x axis, labelled and counted as 100k or 5M."""
    ax.set_xlabel("frames")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x / 1e3:g}k" if x < 1e6 else f"{x / 1e6:g}M"))


def returns_figure(df: pd.DataFrame, title: str, frozen_finals: pd.DataFrame | None = None):
    """Figures 1 and 2 as the paper lays them out: one panel per game (Breakout left), average
    return against frames, the mean over seeds with a 95% Student-t band (BAND); with frozen_finals,
    a dashed line at each architecture's frozen final return."""
    curves = learning_curves(df)
    envs = [e for e in ENVS if e in set(curves.env)]
    archs = arch_order(curves.arch)
    fig, axes = plt.subplots(1, len(envs), figsize=(4.8 * len(envs), 4.2), squeeze=False)
    for ax, env in zip(axes[0], envs):
        sns.lineplot(data=curves[curves.env == env], x="frame", y="return", hue="arch", hue_order=archs,
                     palette={a: colour(a) for a in archs}, style="arch", style_order=archs,
                     dashes={a: (4, 2) if a in CONTROLS else "" for a in archs}, errorbar=BAND, ax=ax,
                     legend=ax is axes[0][-1], lw=2)
        if frozen_finals is not None:
            for _, row in frozen_finals[frozen_finals.env == env].iterrows():
                ax.axhline(row["final return"], ls="--", lw=1.2, color=colour(row["arch"]))
        ax.set_title(TITLES[env])
        frames_axis(ax)
        ax.set_ylabel("average return")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    axes[0][-1].get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=len(archs), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def coefficient_table(coef_finals: pd.DataFrame) -> pd.DataFrame:
    """The L1 sweep: per game and coefficient, seeds and mean final return with its Student-t
    interval (exploration)."""
    rows = []
    for (env, coef), g in coef_finals.groupby(["env", "l1_coef"]):
        x = g["return"].to_numpy()
        lo, hi = claims.t_interval(x)
        rows.append((TITLES.get(env, env), f"{coef:g}", len(x), f"{x.mean():.2f} [{_fmt(lo)}, {_fmt(hi)}]"))
    return pd.DataFrame(rows, columns=["game", "L1 coefficient", "seeds", "final return [95% CI]"])


REFERENCE = ROOT / "results" / "reference"
"""MinAtar's own DQN (examples/dqn.py) run to 500,000 frames: see README.md there."""


def reference_runs() -> pd.DataFrame:
    """Per-episode returns of MinAtar's own DQN: env, run, episode, frame, return."""
    return pd.concat([pd.read_csv(REFERENCE / f"minatar_dqn_{env}_500k.csv").assign(env=env) for env in ENVS],
                     ignore_index=True)


def _final_by(df: pd.DataFrame, keys: list[str], frame: int, last: int = 100) -> pd.DataFrame:
    """Mean return of the last `last` episodes ending by `frame`, per keys."""
    done = df[df["frame"] <= frame].sort_values("frame")
    return done.groupby(keys).tail(last).groupby(keys, as_index=False)["return"].mean()


def reference_figure(df: pd.DataFrame):
    """minatar_cnn's learning curves (mean over seeds, 95% Student-t band) with MinAtar's own DQN's
    runs over them, on the same axes and windows of frames."""
    ours = df[df.arch == "minatar_cnn"]
    ref = reference_runs().rename(columns={"run": "seed"}).assign(arch="MinAtar's dqn.py", regime="learned")
    frames = ours["frame"].max()
    curves = learning_curves(pd.concat([ours, ref[ref["frame"] <= frames]], ignore_index=True))
    envs = [e for e in ENVS if e in set(ours.env)]
    fig, axes = plt.subplots(1, len(envs), figsize=(4.8 * len(envs), 4.0), squeeze=False)
    for ax, env in zip(axes[0], envs):
        mine = curves[(curves.env == env) & (curves.arch == "minatar_cnn")]
        sns.lineplot(data=mine, x="frame", y="return", color=colour("minatar_cnn"), errorbar=BAND, ax=ax, lw=2,
                     label=f"ours, minatar_cnn ({mine.seed.nunique()} seeds)")
        for run, g in curves[(curves.env == env) & (curves.arch != "minatar_cnn")].groupby("seed"):
            ax.plot(g["frame"], g["return"], color="black", lw=1.2, ls=("--", ":")[int(run) % 2],
                    label=f"MinAtar's dqn.py, run {run}")
        ax.set_title(TITLES[env])
        frames_axis(ax)
        ax.set_ylabel("average return")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def reference_reading(df: pd.DataFrame, frames: int):
    """Our minatar_cnn beside MinAtar's runs at 400,000 frames and at the end (`frames`), computed,
    as Markdown: where theirs fall among our seeds and against the prediction interval of one more
    run of ours."""
    from IPython.display import Markdown

    ours = df[df.arch == "minatar_cnn"]
    ref = reference_runs()
    lines = []
    for env in [e for e in ENVS if e in set(ours.env)]:
        for frame in sorted({min(400_000, frames), frames}):
            mine = _final_by(ours[ours.env == env], ["seed"], frame)["return"].to_numpy()
            theirs = _final_by(ref[ref.env == env], ["run"], frame)["return"].to_numpy()
            below = int((mine < theirs.min()).sum())
            low, high = claims.t_interval(mine, one_more=True)
            inside = int(((theirs >= low) & (theirs <= high)).sum())
            lines.append(f"- {TITLES[env]}, last 100 episodes by {frame:,} frames: MinAtar's runs "
                         f"{', '.join(f'{t:.2f}' for t in theirs)}; ours {mine.min():.2f} to {mine.max():.2f} "
                         f"(mean {mine.mean():.2f}, {len(mine)} seeds), {below} of ours below both of theirs; "
                         f"{inside} of theirs inside the 95% prediction interval for one more run of ours "
                         f"[{_fmt(low)}, {_fmt(high)}].")
    return Markdown("\n".join(lines) + (
        "\n\nTwo unseeded runs are two draws from MinAtar's agent: they show where its runs can land, not its "
        "mean, and cannot separate a real gap from the spread between seeds. We found no difference in the agents' "
        "settings (the Choices page lists ours; MinAtar's are in `results/reference/README.md`): the same network, "
        "initialisation, Huber loss, centred RMSprop without momentum, schedules and target copies, on games our "
        "tests match to MinAtar's frame by frame. What differs is how, not what: our replay draws a batch's 32 "
        "transitions with replacement (MinAtar's without), and our random numbers come from other streams. "
        "MinAtar's published curves (30 runs) end near 10 in Breakout and 44 in Space Invaders at 5,000,000 "
        "frames, ten times this study's frames: not comparable with these."))


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
        ax.legend(handles=[Patch(color=colours[i + 1], label=n) for i, n in enumerate(channel_names(env))],
                  loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=9)
    return ax


def channels_figure(frames: dict):
    """One observation per game (env -> frame), channel by channel (a 10x10 binary grid each),
    then as MinAtar draws it: a row per game."""
    width = max(sd.CHANNELS[env] for env in frames) + 1
    fig, rows = plt.subplots(len(frames), width, figsize=(1.6 * width, 2.0 * len(frames)), squeeze=False)
    for axes, (env, frame) in zip(rows, frames.items()):
        names = channel_names(env)
        for ax, name, plane in zip(axes, names, frame.reshape(len(names), sd.GRID, sd.GRID)):
            ax.imshow(plane, cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(name, fontsize=10)
        draw_frame(env, frame, axes[-1], legend=False)
        axes[-1].set_title(f"{TITLES[env]}: all", fontsize=10)
        axes[0].set_ylabel(TITLES[env])
        for ax in axes[len(names):-1]:
            ax.axis("off")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
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
    return HTML(f'<img alt="{TITLES[env]}: {len(movie)} frames of uniformly random play, animated" '
                f'src="data:image/gif;base64,{gif}">')


def plot_masks(env: str, neighbourhoods: Sequence[tuple[str, Sequence[int], int | None]]):
    """Neighbourhoods as the paper's Figures 4 and 5 draw them, one row each of (title, inputs,
    centre), a 10x10 panel per channel: the inputs that are on in yellow, the centre entry
    marked with a red X (no centre: None)."""
    channels = sd.CHANNELS[env]
    fig, rows = plt.subplots(len(neighbourhoods), channels, figsize=(1.9 * channels, 2.1 * len(neighbourhoods)),
                             squeeze=False)
    for axes, (title, inputs, centre) in zip(rows, neighbourhoods):
        grid = np.zeros(channels * sd.GRID * sd.GRID)
        grid[list(inputs)] = 1
        for ch, (ax, name, plane) in enumerate(zip(axes, channel_names(env), grid.reshape(channels, sd.GRID, sd.GRID))):
            ax.imshow(plane, cmap="viridis", vmin=0, vmax=1)
            if centre is not None and centre // (sd.GRID * sd.GRID) == ch:
                ax.plot(centre % sd.GRID, (centre // sd.GRID) % sd.GRID, "x", color="red", ms=10, mew=3)
            ax.set_title(name, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0].set_ylabel(title, fontsize=11)
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


def unit_nearest(cfg: sd.Config, seed: int, centre: int) -> tuple[int, int]:
    """(unit, its centre): the first hidden unit centred on input `centre` or, where none is (a
    predictive centre that never varied in PAN's data), on the nearest input that has one,
    preferring the same channel."""
    centres = sd.mask_centres(cfg, seed)
    coords = sd.input_coords(cfg.env).float()
    gap = (coords[centres] - coords[centre]).abs() * sd.torch.tensor([sd.GRID * sd.GRID, 1.0, 1.0])
    unit = int(sd.torch.argmin(gap.sum(1)))  # the first of the nearest
    return unit, int(centres[unit])


def pan_report(cfg: sd.Config, seed: int) -> dict:
    """How predictive a predictive mask is: cumulants that never varied in PAN's data, the share
    of mask inputs chosen with no evidence (|w| = 0), the mean grid distance of a unit's inputs
    to its centre, and the predictors' final TD error."""
    w, log, on_rate = sd.pan_predictors(cfg, seed)
    mask, _ = sd.predictive_mask(cfg, seed)
    centres = sd.predictive_centres(cfg, seed)
    rc = sd.input_coords(cfg.env)[:, 1:].float()
    return {"env": cfg.env, "pan_idle": cfg.pan_idle, "never varied": int(((on_rate == 0) | (on_rate == 1)).sum()),
            "never on": int((on_rate == 0).sum()),
            "zero-evidence inputs": float((w[centres.unsqueeze(1), mask] == 0).float().mean()),
            "mean distance": float((rc[mask] - rc[centres].unsqueeze(1)).norm(dim=2).mean()),
            "final TD error": log[-1][1] if log else float("nan")}


def capacity_table(chapter: Chapter, archs: Sequence[str] = profiles.FIGURE_ARCHS) -> pd.DataFrame:
    """Hidden units, inputs per unit and hidden weights of each architecture (frozen regime), and
    of MinAtar's reference network, per game: every architecture of the paper has the same
    capacity; the width control does not, by design."""
    rows = []
    for env in chapter.envs:
        for arch in archs:
            units, k = chapter.config(env=env, arch=arch, regime="frozen").layer_shape
            rows.append((env, f"{arch} (control)" if arch in CONTROLS else arch, units, k, units * k))
        rows.append((env, "minatar_cnn (reference)", 128, None, 16 * sd.CHANNELS[env] * 9 + 1024 * 128))
    return pd.DataFrame(rows, columns=["env", "arch", "hidden units", "inputs per unit", "hidden weights"]).astype(
        {"inputs per unit": "Int64"})


# ----------------------------------------------------------------------------------------------
# The mask explorer: one anywidget, live in Jupyter and static in the book
# ----------------------------------------------------------------------------------------------
def _deflated(raw: bytes) -> str:
    """zlib, then base64: what the explorer's JS inflates with the browser's DecompressionStream."""
    return base64.b64encode(zlib.compress(raw, 9)).decode()


def _rows(rows) -> str:
    """(rows, k) input indices as each row's ascending gaps, LEB128 varints, deflated: a random
    neighbourhood costs about 5 bits an input, a tenth of a bitset's base64."""
    out = bytearray()
    for row in np.sort(np.asarray(rows), axis=1):
        for gap in np.diff(row, prepend=-1):
            gap = int(gap)
            while gap >= 128:
                out.append(gap & 127 | 128)
                gap >>= 7
            out.append(gap)
    return _deflated(bytes(out))


def _entry(mask, inputs: int, centres=None, rebuilt: str | None = None) -> dict:
    """One (units, k) mask as the explorer's JS reads it (mask_explorer.js, `unpack`): units
    that share a centre and its inputs share one row, so only distinct rows are sent; `rebuilt`
    ("dense", "spatial") names a mask the browser rebuilds, so none are."""
    mask = np.asarray(mask)
    units, k = mask.shape
    entry = {"units": units, "k": k, "centres": None, "row_of": "unit"}
    if centres is not None:
        centres = np.asarray(centres)
        distinct, first = np.unique(centres, return_index=True)
        owner = first[np.searchsorted(distinct, centres)]
        entry["centres"] = ("modulo" if np.array_equal(centres, np.arange(units) % inputs)
                            else _deflated(centres.astype("<u2").tobytes()))
        if np.array_equal(np.sort(mask, axis=1), np.sort(mask[owner], axis=1)):
            entry["row_of"], mask = "centre", mask[first]
    entry["rows"] = rebuilt or _rows(mask)
    return entry


def _mask_entry(cfg: sd.Config, seed: int) -> dict:
    return _entry(sd.build_mask(cfg, seed)[0], cfg.input_size, sd.mask_centres(cfg, seed))


EXPLORER_FORMAT = 1
"""The layout of _entry's output; a stored entry of another layout is made again."""


def _stored_entry(chapter: Chapter, cfg: sd.Config, seed: int) -> dict:
    """A predictive mask's entry, kept under <results>/masks/ beside the runs and keyed as its run
    is: PAN takes tens of seconds a seed and game, which every book built from a committed store
    would pay again. Anything unreadable there is made again and overwritten."""
    path = chapter.results_dir / "masks" / f"{cfg.key()}-{sd.run_name(cfg, seed)}.json"
    try:
        blob = json.loads(path.read_text())
        if blob["format"] == EXPLORER_FORMAT and blob["checksum"] == store.checksum(blob):
            return blob["entry"]
    except (OSError, ValueError, KeyError):
        pass
    entry = _mask_entry(cfg, seed)
    store.write_atomic(path, {"format": EXPLORER_FORMAT, "entry": entry})
    return entry


def explorer_data(chapter: Chapter, archs: Sequence[str], seeds: Sequence[int] | None = None) -> dict:
    """Every mask the explorer draws, compactly: game -> arch -> {"seeds", "masks": seed -> entry}.
    A mask that does not depend on the seed (dense, spatial) is sent once, under "*"; L1 masks
    come from the learned L1 runs of the chapter's store (for a sweep's profile, the seeds it
    has stored so far)."""
    seeds = [str(s) for s in (seeds or chapter.seeds)]
    data = {}
    for env in chapter.envs:
        game = {"channels": list(channel_names(env)), "inputs": sd.CHANNELS[env] * sd.GRID ** 2, "archs": {}}
        for arch in archs:
            cfg = chapter.config(env=env, arch=arch, regime="learned" if arch == "l1" else "frozen")
            if arch == "l1":
                masks = {str(r.seed): _entry(r.mask, game["inputs"])
                         for r in chapter.train(cfg, [int(s) for s in seeds], progress=False)}
            elif arch in ("dense", "dense_wide"):
                masks = {"*": _entry(sd.build_mask(cfg, 0)[0], game["inputs"], rebuilt="dense")}
            elif arch == "spatial":
                masks = {"*": _entry(sd.build_mask(cfg, 0)[0], game["inputs"], sd.mask_centres(cfg, 0), rebuilt="spatial")}
            elif arch == "predictive":
                masks = {s: _stored_entry(chapter, cfg, int(s)) for s in seeds}
            else:
                masks = {s: _mask_entry(cfg, int(s)) for s in seeds}
            game["archs"][arch] = {"seeds": [s for s in seeds if s in masks or "*" in masks], "masks": masks}
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
        data[env]["archs"][name] = {"seeds": ["0"], "masks": {"0": _entry(mask, inputs, centres)}}
        self.start = {"env": env, "arch": name, "seed": "0"}
        self.data = data

    def static_html(self) -> str:
        """The explorer without a widget manager: the same view, its model a few lines over the
        data, written once into the page. The book shows this (text/html, which _config.yml ranks
        above the widget's own output); Jupyter shows the live widget."""
        tail = "export default { render };"
        view = self._esm.rstrip()
        if not view.endswith(tail):
            raise ValueError(f"mask_explorer.js must end with {tail!r}, the line static_html replaces")
        state = json.dumps({"data": self.data, "start": self.start}, separators=(",", ":")).replace("</", "<\\/")
        uid = f"mx-{zlib.crc32(state.encode()):08x}"
        return (f'<style>{self._css}</style><div id="{uid}"></div>\n<script type="module">\n{view[:-len(tail)]}'
                f'const state = {state};\nrender({{model: {{get: (key) => state[key], on: () => {{}}}}, '
                f'el: document.getElementById("{uid}")}});\n</script>')

    def _repr_mimebundle_(self, **kwargs):
        data, metadata = super()._repr_mimebundle_(**kwargs)
        return {**data, "text/html": self.static_html()}, metadata
