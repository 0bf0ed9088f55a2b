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
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import sparse_dqn as sd
from study.checkpoints import Checkpoint


# Config fields added after runs were stored, each with the value that reproduces how older files
# were made; a stored config that lacks any other field, or has one Config does not, is refused.
FIELDS_ADDED: dict = {}


def run_to_json(run: sd.RunResult) -> dict:
    """A run's stored form: every field but the in-memory weights."""
    out = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name != "params"}
    out["config"] = dataclasses.asdict(run.config)
    # MinAtar's returns are whole numbers: "3" rather than "3.0" keeps a study's files small
    out["episode_returns"] = [int(r) if float(r).is_integer() else r for r in run.episode_returns]
    return out


def run_from_json(blob: dict) -> sd.RunResult:
    """A run from its stored form. Its config must name every Config field, but those in
    FIELDS_ADDED, which older files lack and load as the value they were made with."""
    fields = {f.name for f in dataclasses.fields(sd.Config)}
    stored = dict(blob["config"])
    unknown, missing = set(stored) - fields, fields - set(stored) - set(FIELDS_ADDED)
    if unknown or missing:
        raise ValueError(f"config fields {sorted(unknown)} unknown, {sorted(missing)} missing")
    blob = dict(blob, config=sd.Config(**{**FIELDS_ADDED, **stored}))
    blob["episode_returns"] = [float(r) for r in blob["episode_returns"]]
    if "code_version" in blob:  # stored before results were keyed by algorithm version
        del blob["code_version"]
        blob["algorithm_version"] = 1
    blob["sparsity"] = [tuple(r) for r in blob["sparsity"]]
    blob["pan_td_error"] = [tuple(r) for r in blob["pan_td_error"]]
    return sd.RunResult(**blob)


class Store:
    """A results directory, as sparse_dqn.train uses it."""

    def __init__(self, results_dir: str | Path):
        self.root = Path(results_dir)

    def check_writable(self):
        check_results_dir(self.root)

    def load(self, cfg: sd.Config, seed: int) -> sd.RunResult | None:
        """The stored run, or None; a bad file is set aside (where the store is writable) so that
        training makes it again."""
        path = result_path(self.root, cfg, seed)
        try:
            return read_run(path, cfg, seed)
        except BadRun as err:
            if os.access(path.parent, os.W_OK):
                set_aside(path, str(err))
            else:
                warnings.warn(f"{path}: {err}; not used", stacklevel=2)
            return None

    def save(self, run: sd.RunResult):
        write_atomic(result_path(self.root, run.config, run.seed), run_to_json(run))

    def checkpoint(self, agents: Sequence[tuple[sd.Config, int]]) -> Checkpoint:
        return Checkpoint(checkpoint_path(self.root, agents), [run_id(*a) for a in agents])

    def claimed(self, runs: Sequence[tuple[sd.Config, int]], wait: bool = False):
        return claimed(self.root, runs, wait)

    def train_missing(self, agents: list, train: Callable, wait: bool, done: dict):
        """Train each of these runs that the store lacks once across every process sharing it, as
        one population, with train(agents, checkpoint) -> runs; add every run made or found to
        done. First the runs no other process holds (claimed); then, with wait, each of the rest
        once its holder lets go, loaded, or trained here if its holder left it unmade."""
        self.check_writable()  # a read-only store still serves the runs it holds
        pending, block = list(agents), False
        while pending:
            with self.claimed(pending, wait=block) as (mine, others):
                for pair in mine:  # another process may have finished it since it was looked up
                    run = self.load(*pair)
                    if run is not None:
                        done[pair] = run
                mine = [a for a in agents if a in mine and a not in done]
                if mine:
                    checkpoint = self.checkpoint(mine)
                    for pair, run in zip(mine, train(mine, checkpoint)):
                        self.save(run)
                        done[pair] = run
                    checkpoint.remove()
            if others and not block:
                print(f"{len(others)} run(s) held by another process: " + ("waiting for them" if wait else "left to it")
                      + f" ({next(iter(others.values()))})", file=sys.stderr)
            pending = [a for a in pending if a not in done] if wait else []
            block = True


def result_path(results_dir: Path, cfg: sd.Config, seed: int) -> Path:
    return Path(results_dir) / cfg.key() / f"{sd.run_name(cfg, seed)}.json"


def checksum(blob: dict) -> str:
    """The digest a stored run carries of its own contents (all but the checksum itself)."""
    body = {k: v for k, v in blob.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def write_atomic(path: Path, blob: dict):
    """Write to a temporary file beside the target, then rename: a reader sees all or nothing.
    The file carries a checksum of its contents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({**blob, "checksum": checksum(blob)}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class BadRun(ValueError):
    """A stored run that is not what its name says it is: unreadable, altered, or another run."""


def read_run(path: Path, cfg: sd.Config | None = None, seed: int | None = None) -> sd.RunResult | None:
    """A stored run, or None if it is missing. Raises BadRun, with the reason, for a file that
    cannot be read, whose checksum does not match its contents (files stored before checksums
    have none), whose arrays disagree, or, given cfg and seed, that records another config, seed
    or algorithm version than the name it was asked for. Reads only: nothing is renamed."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        blob = json.loads(path.read_text())
        if "checksum" in blob and blob["checksum"] != checksum(blob):
            raise BadRun("its checksum does not match its contents")
        blob.pop("checksum", None)
        run = run_from_json(blob)
    except BadRun:
        raise
    except (ValueError, KeyError, TypeError) as err:  # JSON and Unicode errors are ValueErrors
        raise BadRun(f"unreadable ({type(err).__name__}: {err})") from None
    if len(run.episode_frames) != len(run.episode_returns) or any(
            b <= a for a, b in zip(run.episode_frames, run.episode_frames[1:])):
        raise BadRun("its episode frames and returns disagree")
    if cfg is not None:
        same = {k: v for k, v in dataclasses.asdict(run.config).items() if k not in sd.NOT_IN_KEY} == \
            {k: v for k, v in dataclasses.asdict(cfg).items() if k not in sd.NOT_IN_KEY}
        if not same or run.seed != seed or run.algorithm_version != sd.ALGORITHM_VERSION:
            raise BadRun(f"it records seed {run.seed}, algorithm version {run.algorithm_version} and "
                         f"{'the' if same else 'another'} config, not the run its name says")
    return run


def load_run(results_dir: Path, cfg: sd.Config, seed: int) -> sd.RunResult | None:
    """The stored run of cfg and seed, or None where there is none or (with a one-line warning)
    where its file is bad. Reads only."""
    path = result_path(results_dir, cfg, seed)
    try:
        return read_run(path, cfg, seed)
    except BadRun as err:
        warnings.warn(f"{path}: {err}; not used", stacklevel=2)
        return None


def set_aside(path: Path, reason: str):
    """Rename a bad file to <name>.corrupt, saying why in one line, so that it is made again."""
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    warnings.warn(f"{path}: {reason}; set aside as {aside.name}, it will be recomputed", stacklevel=3)


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


def run_id(cfg: sd.Config, seed: int) -> str:
    """A run's name in a checkpoint's manifest: its file under the results directory, less .json."""
    return f"{cfg.key()}/{sd.run_name(cfg, seed)}"


def checkpointed_populations(results_dir: str | Path, runs: Sequence[tuple[sd.Config, int]]):
    """The populations among runs that left a checkpoint under results_dir, each as it was formed
    (its checkpoint's name hashes its members in order), with the frame it resumes at; most
    advanced first, and a run that two checkpoints share in the most advanced only."""
    by_id = {run_id(*run): run for run in runs}
    found = []
    for manifest in (Path(results_dir) / ".checkpoints").glob("[!.]*.json"):
        try:
            blob = json.loads(manifest.read_text())
            members = [by_id[name] for name in blob["members"]]
            frame = int(blob["frame"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable, or a member is done or outside these runs: that population cannot resume
        state = manifest.with_suffix(".pt")
        if checkpoint_path(results_dir, members) == state and state.exists():
            found.append((members, frame))
    taken, populations = set(), []
    for members, frame in sorted(found, key=lambda f: -f[1]):
        names = {run_id(*run) for run in members}
        if taken.isdisjoint(names):
            populations.append((members, frame))
            taken.update(names)
    return populations


def episodes_frame(runs: Iterable[sd.RunResult]):
    """Tidy per-episode table: one row per (run, episode) with the agent's config and seed."""
    import numpy as np
    import pandas as pd

    columns = ["env", "arch", "regime", "seed", "episode", "frame", "return", "key"]
    parts = []
    for run in runs:  # one block of columns per run: a study holds millions of episodes
        c, n = run.config, len(run.episode_returns)
        parts.append(pd.DataFrame({"env": c.env, "arch": c.arch, "regime": c.regime, "seed": run.seed,
                                   "episode": np.arange(n), "frame": np.asarray(run.episode_frames, np.int64),
                                   "return": np.asarray(run.episode_returns, float), "key": c.key()}, index=None))
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def load_results(results_dir: str | Path):
    """Every completed run under results_dir, as a tidy per-episode DataFrame. Reads only: a bad
    file is named in a warning and left out."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ValueError(f"results directory {str(root)!r} does not exist")
    runs = []
    for path in sorted(root.glob("*/seed_*.json")):
        try:
            run = read_run(path)
        except BadRun as err:
            warnings.warn(f"{path}: {err}; not used", stacklevel=2)
            continue
        if path.parent.name != run.config.key() or path.stem != sd.run_name(run.config, run.seed):
            warnings.warn(f"{path}: it records {run.config.key()}/{sd.run_name(run.config, run.seed)}, not the run "
                          "its name says; not used", stacklevel=2)
            continue
        runs.append(run)
    return episodes_frame(runs)


@contextlib.contextmanager
def claimed(results_dir: str | Path, runs: Sequence[tuple[sd.Config, int]], wait: bool = False):
    """Hold runs for this process, so that every process sharing a store (train and sweep
    commands, on one machine or on hosts sharing a file system) trains each run once. Yields
    (held, others): the runs held here, and a line for each run that another process holds,
    naming it. With wait, each run is waited for until held here (in a fixed order, so two waiting
    processes cannot block each other). The holds are flock()s on files under results_dir/.claims:
    the kernel drops them when their process ends, so a killed holder leaves nothing to clean up."""
    import fcntl
    import socket

    folder = Path(results_dir) / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    files, others = [], {}
    try:
        for run in sorted(dict.fromkeys(runs), key=lambda r: f"{r[0].key()}_{sd.run_name(*r)}"):
            name = f"{run[0].key()}_{sd.run_name(*run)}"
            f = open(folder / f"{name}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                f.seek(0)
                others[run] = f"{name} is held by {f.read().strip() or 'another process'}"
                f.close()
                continue
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            files.append((run, f))
        yield [run for run, _ in files], others
    finally:
        for _, f in files:
            f.close()  # closing drops the flock
