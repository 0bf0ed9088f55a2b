"""Book profiles (how much the book trains: smoke, quick, study, paper) and the runs each needs."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import sparse_dqn as sd
from study.store import episodes_frame, result_path


@dataclass(frozen=True)
class Profile:
    """How much the book trains. Shorter profiles shrink the DQN schedule with the frame budget so
    that a short run still explores, learns and refreshes its target; `paper` is the reference."""
    frames: int
    seeds: tuple[int, ...]
    schedule: dict = dataclasses.field(default_factory=dict)
    l1_coefs: tuple[float, ...] = (1e-6, 1e-5, 1e-4)
    l1_seeds: tuple[int, ...] | None = None
    """Seeds of the L1 coefficient sweep; None: the profile's seeds."""
    cnn_seeds: tuple[int, ...] | None = None
    """Seeds of minatar_cnn, the check against MinAtar's own DQN; None: the profile's seeds."""
    trains_in_book: bool = True
    """False: the book only reads this profile's runs (made by `sweep`), and refuses to start
    while any is missing rather than train for hours."""

    @property
    def coef_seeds(self) -> tuple[int, ...]:
        return self.seeds if self.l1_seeds is None else self.l1_seeds

    @property
    def check_seeds(self) -> tuple[int, ...]:
        return self.seeds if self.cnn_seeds is None else self.cnn_seeds


PROFILES = {
    "smoke": Profile(800, (0,), dict(learning_starts=200, eps_decay_frames=300, replay_size=800,
                                     target_update=100, pan_frames=1_000, hidden_units=400,
                                     log_every=200), l1_coefs=(1e-5, 1e-3)),
    "quick": Profile(10_000, (0, 1), dict(learning_starts=1_000, eps_decay_frames=5_000,
                                          replay_size=10_000, target_update=250, pan_frames=20_000,
                                          log_every=1_000)),
    # MinAtar's reference DQN schedule unchanged, a tenth of its frames: 10 seeds for the claims'
    # architectures, 5 for the check against MinAtar's DQN, 3 per L1 coefficient.
    "study": Profile(500_000, tuple(range(10)), l1_coefs=(1e-6, 1e-5, 1e-4), l1_seeds=(0, 1, 2),
                     cnn_seeds=tuple(range(5)), trains_in_book=False),
    "paper": Profile(5_000_000, tuple(range(30)), l1_coefs=(1e-6, 1e-5, 1e-4, 1e-3)),
}


def profile_config(profile: str, **fields) -> sd.Config:
    """The Config of one run of a book profile; fields override the profile's schedule."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not allowed; expected one of {', '.join(PROFILES)}")
    p = PROFILES[profile]
    return sd.Config(**{"frames": p.frames, **p.schedule, **fields})


def train_profile(profile: str, envs: Sequence[str], archs: Sequence[str], regimes: Sequence[str],
                  results_dir: str | Path, seeds: Sequence[int] | None = None, frames: int | None = None,
                  progress: bool = True, **fields):
    """Train (or load from results_dir) every env x arch x regime of a book profile; each game is
    one population. Returns the tidy per-episode DataFrame."""
    profile_config(profile)  # rejects an unknown profile
    seeds = list(seeds or PROFILES[profile].seeds)
    over = dict(fields, **({"frames": frames} if frames else {}))
    runs = []
    for env in envs:
        configs = [profile_config(profile, env=env, arch=a, regime=r, **over) for r in regimes for a in archs]
        runs += sd.train(configs, seeds, results_dir, progress)
    return episodes_frame(runs)


FIGURE_ARCHS = ("dense", "random", "spatial", "predictive", "l1", "dense_wide")
EQUAL_WEIGHT_ARCHS = ("dense", "random", "spatial", "predictive")
"""The architectures of equal hidden weights that the abstract's claims compare."""


def _sweep_order(run: tuple[sd.Config, int]) -> tuple:
    """The order a sweep trains runs in: what the planned claim tests compare first (the equal-weight
    architectures; the width control's frozen runs, cheap and the frozen chapter's control; then L1,
    whose frozen runs need its learned ones), the width control's learned runs, the dearest, last;
    the two games alternate within each step."""
    cfg, seed = run
    default_l1 = cfg.l1_coef == sd.Config.l1_coef
    step = (0 if cfg.arch in EQUAL_WEIGHT_ARCHS else
            1 if cfg.arch == "dense_wide" and cfg.regime == "frozen" else
            2 if cfg.arch == "l1" and default_l1 and cfg.regime == "learned" else
            3 if cfg.arch == "l1" and cfg.regime == "frozen" else
            5 if cfg.arch == "dense_wide" else 4)
    return step, cfg.regime, cfg.arch, cfg.l1_coef, cfg.env, seed


def profile_runs(profile: str, envs: Sequence[str] = tuple(sd.CHANNELS), extra_archs: Sequence[str] = (),
                 **fields) -> list[tuple[sd.Config, int]]:
    """Every (config, seed) that chapters 03 to 05 of a profile read: each arch x regime of
    Figures 1 and 2 (and of extra_archs, such as registered masks), minatar_cnn, and the L1
    coefficient sweep, in the order a sweep trains them (_sweep_order)."""
    profile_config(profile)  # rejects an unknown profile
    p = PROFILES[profile]
    runs = []
    for env in envs:
        for regime in ("frozen", "learned"):
            runs += [(profile_config(profile, env=env, arch=a, regime=regime, **fields), s)
                     for a in FIGURE_ARCHS + tuple(extra_archs) for s in p.seeds]
        runs += [(profile_config(profile, env=env, arch="minatar_cnn", **fields), s) for s in p.check_seeds]
        runs += [(profile_config(profile, env=env, arch="l1", l1_coef=c, **fields), s)
                 for c in p.l1_coefs for s in p.coef_seeds]
    return sorted(dict.fromkeys(runs), key=_sweep_order)


def _stored_under_another_version(results_dir: str | Path, cfg: sd.Config, seed: int) -> bool:
    """Whether results_dir holds this run made by another ALGORITHM_VERSION of the same config."""
    for path in Path(results_dir).glob(f"{cfg.env}_{cfg.arch}_{cfg.regime}_*/seed_{seed}.json"):
        try:
            blob = json.loads(path.read_text())
            stored = sd.Config(**blob["config"])
        except (OSError, ValueError, KeyError, TypeError):  # unreadable, or fields since renamed
            continue
        same_experiment = dataclasses.replace(stored, **{k: getattr(cfg, k) for k in sd.NOT_IN_KEY}) == cfg
        if same_experiment and blob.get("algorithm_version") != sd.ALGORITHM_VERSION:
            return True
    return False


def missing_runs(profile: str, results_dir: str | Path) -> str | None:
    """None if results_dir holds every run of the profile; else one line naming what is missing
    (and whether it is stale: its config stored under another algorithm version) and the
    command that makes it."""
    runs = profile_runs(profile)
    missing = [(c, s) for c, s in runs if not result_path(results_dir, c, s).exists()]
    if not missing:
        return None
    stale = sum(1 for c, s in missing if _stored_under_another_version(results_dir, c, s))
    first = result_path(results_dir, *missing[0]).relative_to(results_dir)
    return (f"{len(missing)} of {len(runs)} runs of profile {profile} are missing from {results_dir}"
            + (f" ({stale} stored under another algorithm version)" if stale else "")
            + f", e.g. {first}; make them with: python sparse_dqn.py sweep --profile {profile} --out {results_dir}")
