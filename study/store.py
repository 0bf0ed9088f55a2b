"""The result store: one JSON file per run, under a folder named by the run's configuration and
the algorithm version (sparse_dqn.Config.key), so asking again for a finished run loads it; the
populations' checkpoints beside them; and the locks by which processes sharing a store train
each run once."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import sparse_dqn as sd
from study.checkpoints import Checkpoint


class Store:
    """A results directory, as sparse_dqn.train uses it."""

    def __init__(self, results_dir: str | Path):
        self.root = Path(results_dir)

    def check_writable(self):
        check_results_dir(self.root)

    def load(self, cfg: sd.Config, seed: int) -> sd.RunResult | None:
        return load_run(self.root, cfg, seed)

    def save(self, run: sd.RunResult):
        _write_atomic(result_path(self.root, run.config, run.seed), run.to_json())

    def checkpoint(self, agents: Sequence[tuple[sd.Config, int]]) -> Checkpoint:
        return Checkpoint(checkpoint_path(self.root, agents))


def result_path(results_dir: Path, cfg: sd.Config, seed: int) -> Path:
    return Path(results_dir) / cfg.key() / f"{sd.run_name(cfg, seed)}.json"


def _write_atomic(path: Path, blob: dict):
    """Write to a temporary file beside the target, then rename: a reader sees all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(blob, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_run(path: Path) -> sd.RunResult | None:
    """A stored run, or None if it is missing. An unreadable one (truncated, corrupt) is reported
    with its path and set aside as `<name>.corrupt`, so that it is recomputed, not trusted."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return sd.RunResult.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as err:  # JSON and Unicode errors are ValueErrors
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(f"{path} is unreadable ({type(err).__name__}: {err}); set aside as {aside.name}, "
                      "it will be recomputed", stacklevel=2)
        return None


def load_run(results_dir: Path, cfg: sd.Config, seed: int) -> sd.RunResult | None:
    return read_run(result_path(results_dir, cfg, seed))


def check_results_dir(results_dir: str | Path):
    """Create results_dir if needed and prove it writable, before any training."""
    path = Path(results_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"results directory {str(path)!r} is not writable ({err.strerror})") from None


def checkpoint_path(results_dir: str | Path | None, agents: Sequence[tuple[sd.Config, int]]) -> Path | None:
    """Where a population of these agents checkpoints itself under results_dir."""
    if results_dir is None:
        return None
    # built-in archs keep the names their checkpoints had before registered masks existed
    blob = json.dumps([(cfg.key(), seed if cfg.arch not in sd.MASKS else sd.run_name(cfg, seed)) for cfg, seed in agents])
    return Path(results_dir) / ".checkpoints" / (hashlib.sha256(blob.encode()).hexdigest()[:16] + ".pt")


def episodes_frame(runs: Iterable[sd.RunResult]):
    """Tidy per-episode table: one row per (run, episode) with the agent's config and seed."""
    import pandas as pd

    rows = []
    for run in runs:
        c = run.config
        for i, (frame, ret) in enumerate(zip(run.episode_frames, run.episode_returns)):
            rows.append((c.env, c.arch, c.regime, run.seed, i, frame, ret, c.key()))
    return pd.DataFrame(rows, columns=["env", "arch", "regime", "seed", "episode", "frame",
                                       "return", "key"])


def load_results(results_dir: str | Path):
    """Every completed run under results_dir, as a tidy per-episode DataFrame."""
    runs = [read_run(p) for p in sorted(Path(results_dir).glob("*/seed_*.json"))]
    return episodes_frame(r for r in runs if r is not None)


@contextlib.contextmanager
def claimed(results_dir: str | Path, runs: Sequence[tuple[sd.Config, int]]):
    """Hold the runs of one population for this process, so that sweeps sharing a store (several
    workers on one machine, or on hosts sharing a file system) train each run once. Yields None
    when every run is held here, else a line naming the worker holding one. The holds are flock()s
    on files under results_dir/.claims: the kernel drops them when their process ends, so a killed
    worker leaves nothing to clean up. A frozen L1 run also holds the learned run it needs."""
    import fcntl
    import socket

    folder = Path(results_dir) / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    names = {f"{c.key()}_{sd.run_name(c, s)}" for c, s in runs}
    names |= {f"{dataclasses.replace(c, regime='learned').key()}_{sd.run_name(c, s)}"
              for c, s in runs if c.arch == "l1" and c.regime == "frozen"}
    held, holder = [], None
    try:
        for name in sorted(names):
            f = open(folder / f"{name}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f"{name} is held by {f.read().strip() or 'another worker'}"
                f.close()
                break
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            held.append(f)
        yield holder
    finally:
        for f in held:
            f.close()  # closing drops the flock
