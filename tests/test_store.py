"""The result store and checkpoints: computed work survives kills, edits and corrupt files."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import sparse_dqn as sd
from engine import backends
from study import checkpoints, profiles, store, sweep as sweeps

SMALL = dict(frames=3_000, learning_starts=300, replay_size=2_000, target_update=100,
             eps_decay_frames=1_000, hidden_units=400, log_every=500, checkpoint_every=500)


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_bit_identical(tmp_path):
    configs = [sd.Config(arch="spatial", **SMALL), sd.Config(arch="random", regime="frozen", **SMALL)]
    script = (f"import sparse_dqn as sd; sd.train({configs!r}, [0, 1], {str(tmp_path)!r}, progress=False)"
              .replace("Config(", "sd.Config("))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(sd.__file__).parent)
    checkpoints = tmp_path / ".checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.exists() and list(checkpoints.glob("[!.]*.pt"))):  # not a temporary file
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not list(tmp_path.glob("*/seed_*.json"))  # killed mid-run: nothing finished
    saved = torch.load(next(checkpoints.glob("[!.]*.pt")), weights_only=False)["frame"]
    assert 0 < saved < SMALL["frames"]

    resumed = sd.train(configs, [0, 1], tmp_path, progress=False)
    whole = sd.train(configs, [0, 1], progress=False)
    for a, b in zip(resumed, whole):
        assert a.resumed_at == [saved] and b.resumed_at == []
        assert a.episode_frames == b.episode_frames
        assert a.episode_returns == b.episode_returns
        assert a.params.keys() == b.params.keys()
        for name in a.params:
            assert torch.equal(a.params[name], b.params[name]), name
    assert not list(checkpoints.glob("*.pt"))  # done: the checkpoint and any half-written one are gone
    assert len(list(tmp_path.glob("*/seed_*.json"))) == 4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_command_at_its_next_block_with_a_checkpoint_and_the_same_command_resumes(tmp_path, signum):
    """Ctrl-C, or a kill of a background sweep, loses no computed frame: with no checkpoint due
    before the end (checkpoint_every beyond frames), the stop itself saves one."""
    stop_late = dict(SMALL, checkpoint_every=100_000)
    flags = [a for name, value in stop_late.items() for a in ("--" + name.replace("_", "-"), str(value))]
    command = [sys.executable, "sparse_dqn.py", "train", "--arch", "spatial", *flags, "--seeds", "0", "1",
               "--out", str(tmp_path)]
    proc = subprocess.Popen(command, cwd=Path(sd.__file__).parent, stderr=subprocess.PIPE)
    seen = b""
    while b"%|" not in seen:  # the progress bar: the frame loop has started
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"the run ended before its frame loop: {seen.decode()[-2000:]}"
        seen += chunk
    proc.send_signal(signum)
    rest = proc.stderr.read().decode()
    assert proc.wait() == 128 + signum, rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("stopped at frame ") and "the same command resumes" in last, rest
    assert not list(tmp_path.glob("*/seed_*.json"))  # nothing half-written
    saved = torch.load(next((tmp_path / ".checkpoints").glob("[!.]*.pt")), weights_only=False)["frame"]
    assert 0 < saved < SMALL["frames"] and saved % sd.FRAME_BLOCK == 0

    subprocess.run(command + ["--no-progress"], cwd=Path(sd.__file__).parent, check=True, capture_output=True)
    cfg = sd.Config(arch="spatial", **stop_late)
    whole = sd.train(cfg, [0, 1], progress=False)
    for b in whole:
        a = store.load_run(tmp_path, cfg, b.seed)
        assert a.resumed_at == [saved]
        assert (a.episode_frames, a.episode_returns) == (b.episode_frames, b.episode_returns)


def test_a_corrupt_stored_run_is_reported_set_aside_and_recomputed(tmp_path):
    cfg = sd.Config(arch="dense", frames=400, learning_starts=200, replay_size=500, hidden_units=400)
    first = sd.train(cfg, [0], tmp_path, progress=False)[0]
    path = store.result_path(tmp_path, cfg, 0)
    path.write_text(path.read_text()[:100])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match=str(path)):
        again = sd.train(cfg, [0], tmp_path, progress=False)[0]
    assert again.params is not None  # recomputed, not loaded
    assert again.episode_returns == first.episode_returns
    assert path.with_name(path.name + ".corrupt").exists()
    stored = json.loads(path.read_text())
    assert stored["seed"] == 0  # rewritten whole
    # what a reader needs to judge bit-level agreement: MKL's dense matmuls round per processor type
    assert stored["provenance"]["cpu"] == backends._cpu_name() and stored["provenance"]["threads"] >= 1


def test_the_store_key_survives_edits_that_leave_training_alone(tmp_path):
    edited = tmp_path / "sparse_dqn.py"
    edited.write_text(Path(sd.__file__).read_text().replace('"""Sparse DQN on MinAtar', '"""Edited docstring', 1)
                      + "\n# an edit to the command line, say\n")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import sparse_dqn; print(sparse_dqn.Config().key())"
    key = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert key == sd.Config().key()
    assert sd.dataclasses.replace(sd.Config(), device="cuda", checkpoint_every=7).key() == sd.Config().key()


def test_the_study_book_refuses_to_train_and_names_what_is_missing(tmp_path):
    store = tmp_path / "results" / "study"
    cfg, seed = profiles.profile_runs("study")[0]
    stale = store / f"{cfg.env}_{cfg.arch}_{cfg.regime}_0123456789ab" / f"seed_{seed}.json"
    stale.parent.mkdir(parents=True)  # a run stored under an older algorithm version
    stale.write_text(json.dumps({"config": sd.dataclasses.asdict(cfg), "algorithm_version": 1}))
    other = store / f"{cfg.env}_{cfg.arch}_{cfg.regime}_ba9876543210" / f"seed_{seed}.json"
    other.parent.mkdir()  # the same arch, regime and seed in another experiment: not stale
    other.write_text(json.dumps({"config": sd.dataclasses.asdict(sd.dataclasses.replace(cfg, lr=1e-3)),
                                 "algorithm_version": sd.ALGORITHM_VERSION}))
    line = profiles.missing_runs("study", store)
    total = len(profiles.profile_runs("study"))
    assert f"{total} of {total} runs of profile study are missing" in line
    assert "1 stored under another algorithm version" in line
    assert "python sparse_dqn.py sweep --profile study" in line
    proc = subprocess.run([sys.executable, str(Path(sd.__file__).parent / "tools" / "build_book.py"),
                           "--profile", "study", "--root", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"error: {profiles.missing_runs('study', store)}"]
    assert not (tmp_path / "executed").exists()  # stopped before any notebook ran


def test_a_study_sweep_makes_the_claims_runs_first_and_the_width_controls_learned_runs_last():
    runs = profiles.profile_runs("study")
    where = {(c.env, c.arch, c.regime, c.l1_coef, s): i for i, (c, s) in enumerate(runs)}
    equal = [i for (_, arch, *_), i in where.items() if arch in profiles.EQUAL_WEIGHT_ARCHS]
    wide_learned = [i for (_, arch, regime, *_), i in where.items() if (arch, regime) == ("dense_wide", "learned")]
    assert max(equal) < len(equal) and min(wide_learned) == len(runs) - len(wide_learned)
    for (env, arch, regime, coef, seed), i in where.items():
        if (arch, regime) == ("l1", "frozen"):  # its mask is its learned run's
            assert where[(env, "l1", "learned", coef, seed)] < i


def test_a_sweep_leaves_held_runs_to_their_holder_and_makes_them_when_it_dies(tmp_path):
    runs = profiles.profile_runs("smoke", ["breakout"])
    first = sweeps.plan_populations(runs, 4)[0]
    blob = repr([(sd.dataclasses.asdict(c), s) for c, s in first])
    holder = subprocess.Popen([sys.executable, "-c", "import sys, sparse_dqn as sd; from study import store; "
                               f"c = store.claimed(sys.argv[1], [(sd.Config(**c), s) for c, s in {blob}]); "
                               "c.__enter__(); print('held', flush=True); sys.stdin.read()", str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with store.claimed(tmp_path, first) as (mine, others):
        assert mine == [] and len(others) == len(first)
        assert all(f"pid {holder.pid} on" in line for line in others.values())
    threading.Timer(3.0, holder.kill).start()  # it dies without making them: the kernel drops its locks
    sweeps.sweep("smoke", ["breakout"], tmp_path, max_agents=4, progress=False)
    holder.wait()
    assert all(store.load_run(tmp_path, *run) is not None for run in runs)


def test_a_sweep_resumes_a_checkpointed_population_whatever_population_size_it_is_given(tmp_path, monkeypatch):
    """A sweep stopped and restarted with another --max-agents (a GPU after a laptop, say) goes on
    from the checkpoint rather than training those runs again from frame 0."""
    runs = profiles.profile_runs("smoke", ["breakout"])
    first = sweeps.plan_populations(runs, 2)[0]
    with monkeypatch.context() as stopping:  # as a first Ctrl-C would: at the end of the first block
        stopping.setattr(checkpoints.Checkpoint, "stop_requested", staticmethod(lambda: True))
        with pytest.raises(checkpoints.Stopped):
            sweeps.sweep("smoke", ["breakout"], tmp_path, max_agents=2, progress=False)
    (manifest,) = (tmp_path / ".checkpoints").glob("[!.]*.json")
    saved = json.loads(manifest.read_text())["frame"]
    assert 0 < saved < first[0][0].frames

    planned = sweeps.sweep("smoke", ["breakout"], tmp_path, max_agents=64, progress=False)
    assert planned[0] == first and len(planned) == 2
    for run in runs:
        assert store.load_run(tmp_path, *run).resumed_at == ([saved] if run in first else [])
    assert not list((tmp_path / ".checkpoints").iterdir())  # manifest and state both gone once done


def test_a_live_study_notebook_never_trains_and_reads_the_committed_study(tmp_path):
    sys.path.insert(0, str(Path(sd.__file__).parent / "notebooks"))
    import companion as bk

    chapter = bk.Chapter("03_frozen", "study", str(tmp_path))
    with pytest.raises(RuntimeError, match="runs of profile study are missing") as err:
        chapter.runs(["spatial"], ["frozen"])
    assert str(err.value) == profiles.missing_runs("study", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written
    # `make book` renders results/study by default, as far as its sweep has got: what the book
    # showed at 5 seeds is all there, and the rest is named with the command that makes it
    committed = Path(sd.__file__).parent / "results" / "study"
    chapter = bk.Chapter("03_frozen", "study", str(committed))
    df = chapter.runs(["dense", "random", "spatial", "predictive", "l1"], ["frozen", "learned"])
    seeds = df.groupby(["env", "arch", "regime"])["seed"].unique()
    assert len(seeds) == 2 * 5 * 2 and all(set(range(5)) <= set(s) for s in seeds)
    pending = chapter.pending()
    assert pending is None or pending.endswith(f"python sparse_dqn.py sweep --profile study --out {committed}")
