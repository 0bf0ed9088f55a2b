"""Nothing lost, nothing mixed: processes sharing a store train each run once, a stored run is
checked against what it claims to be, a corrupt checkpoint is set aside, user errors are one line,
and reading a store writes nothing."""
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import sparse_dqn as sd
from study import profiles, store

ROOT = Path(sd.__file__).parent
SMOKE = ["--frames", "800", "--learning-starts", "200", "--eps-decay-frames", "300", "--replay-size", "800",
         "--target-update", "100", "--pan-frames", "1000", "--hidden-units", "400", "--log-every", "200"]
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "sparse_dqn.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ONE_THREAD, **kw)


def test_two_sweeps_and_a_train_on_one_store_train_every_run_once_with_one_commands_bits(tmp_path):
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    sweep = ["sweep", "--profile", "smoke", "--envs", "breakout", "--no-progress", "--out", str(shared)]
    procs = [cli(*sweep, "--max-agents", "3")]
    time.sleep(0.5)  # staggered starts
    procs.append(cli(*sweep, "--max-agents", "5"))
    time.sleep(0.5)
    procs.append(cli("train", "--env", "breakout", "--arch", "spatial", "--regime", "frozen", *SMOKE,
                     "--seeds", "0", "--out", str(shared), "--no-progress"))
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    runs = profiles.profile_runs("smoke", ["breakout"])
    trained = sum(int(err.split("sweep smoke: ")[1].split(" of ")[0]) for _, err in outputs[:2])
    trained += outputs[2][0].count("(trained)")
    assert trained == len(runs)  # every run trained once, by one of the three
    single = cli(*sweep[:-1], str(alone), "--max-agents", "64")
    assert single.wait(timeout=600) == 0
    for cfg, seed in runs:
        a, b = store.load_run(shared, cfg, seed), store.load_run(alone, cfg, seed)
        assert (a.episode_frames, a.episode_returns, a.sparsity) == (b.episode_frames, b.episode_returns, b.sparsity)
    assert not list(shared.glob("*/.tmp-*")) and not list((shared / ".checkpoints").glob("*"))


def small(**kw):
    return sd.Config(**{**dict(frames=400, learning_starts=200, replay_size=400, target_update=100,
                                eps_decay_frames=100, hidden_units=400, log_every=200), **kw})


def test_a_stored_run_is_checked_against_its_name_and_its_own_contents(tmp_path):
    cfg = small()
    sd.train(cfg, [0, 1], tmp_path, progress=False)
    first, second = (store.result_path(tmp_path, cfg, s) for s in (0, 1))
    shutil.copy(first, second)  # seed 0's file under seed 1's name
    with pytest.warns(UserWarning, match="records .*seed_0, not the run"):
        df = store.load_results(tmp_path)
    assert set(df.seed) == {0} and df.groupby("seed").episode.nunique()[0] == len(df)
    assert second.exists()  # reading renames nothing
    with pytest.warns(UserWarning, match="set aside"):
        again = sd.train(cfg, [0, 1], tmp_path, progress=False)
    assert [r.seed for r in again] == [0, 1] and again[1].params is not None  # seed 1 trained anew
    blob = json.loads(first.read_text())
    blob["episode_returns"][0] += 1  # an edit the checksum catches
    first.write_text(json.dumps(blob))
    with pytest.raises(store.BadRun, match="checksum"):
        store.read_run(first)
    blob = json.loads(second.read_text())
    blob["episode_returns"].pop()  # arrays of different lengths
    blob.pop("checksum")
    second.write_text(json.dumps(blob))
    with pytest.raises(store.BadRun, match="disagree"):
        store.read_run(second)
    blob = json.loads(second.read_text())
    del blob["config"]["lr"]
    second.write_text(json.dumps(blob))
    with pytest.raises(store.BadRun, match=r"missing"):
        store.read_run(second)


def test_the_committed_study_still_loads_with_the_same_numbers():
    path = next((ROOT / "results" / "study").glob("breakout_spatial_frozen_*/seed_0.json"))
    blob = json.loads(path.read_text())
    run = store.read_run(path, sd.Config(**blob["config"]), 0)
    assert run.episode_returns == [float(r) for r in blob["episode_returns"]]


def test_a_corrupt_checkpoint_is_set_aside_and_its_population_starts_again(tmp_path):
    cfg = small(checkpoint_every=200)
    checkpoint = store.checkpoint_path(tmp_path, [(cfg, 0)])
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match=f"checkpoint {checkpoint} is unreadable"):
        run = sd.train(cfg, [0], tmp_path, progress=False)[0]
    assert checkpoint.with_name(checkpoint.name + ".corrupt").exists()
    alone = sd.train(cfg, [0], progress=False)[0]
    assert (run.episode_frames, run.episode_returns) == (alone.episode_frames, alone.episode_returns)


@pytest.mark.parametrize("args, bad", [
    (["--device", "meta"], "device='meta'"),
    (["--masks", "BROKEN", "--arch", "row"], "SyntaxError"),
    (["--masks", "SHAPE", "--arch", "row"], "shape"),
])
def test_user_errors_are_one_line_exit_2_and_write_nothing(tmp_path, args, bad):
    (tmp_path / "broken.py").write_text("import sparse_dqn as sd\ndef oops(:\n")
    (tmp_path / "shape.py").write_text("import torch, sparse_dqn as sd\n"
                                       "sd.register_mask('row', lambda cfg, seed: torch.zeros(3, 2, dtype=torch.long))\n")
    args = [str(tmp_path / "broken.py") if a == "BROKEN" else str(tmp_path / "shape.py") if a == "SHAPE" else a
            for a in args]
    masks = args[:2] if args[0] == "--masks" else []
    rest = args[2:] if masks else args
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "sparse_dqn.py"), *masks, "train", *rest, *SMOKE,
                           "--out", str(out)], capture_output=True, text=True, env=ONE_THREAD)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and bad in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("fields, bad", [({"frames": 1.9}, "frames=1.9"), ({"hidden_units": 10.5}, "hidden_units"),
                                         ({"difficulty_ramping": "no"}, "difficulty_ramping='no'"),
                                         ({"lr": True}, "lr=True")])
def test_the_api_takes_the_types_the_command_line_takes(fields, bad):
    with pytest.raises(ValueError, match=bad):
        sd.Config(**fields)


def test_seeds_must_be_whole_numbers():
    with pytest.raises(ValueError, match=r"seeds=\[1.9\] is not allowed"):
        sd.train(small(), [1.9], progress=False)


def test_reading_a_store_writes_nothing_and_a_missing_store_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        store.load_results(tmp_path / "nowhere")
    cfg = small()
    sd.train(cfg, [0], tmp_path, progress=False)
    path = store.result_path(tmp_path, cfg, 0)
    path.write_text("{ truncated")
    before = sorted(p.name for p in path.parent.iterdir())
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert len(store.load_results(tmp_path)) == 0
    assert sorted(p.name for p in path.parent.iterdir()) == before  # nothing renamed or written
    sd.train(cfg, [0], tmp_path, progress=False)  # train repairs: the bad file set aside, the run made

    def refuse(self):
        raise ValueError("read-only")

    monkeypatch.setattr(store.Store, "check_writable", refuse)
    assert sd.train(cfg, [0], tmp_path, progress=False)[0].params is None  # served without writing
    with pytest.raises(ValueError, match="read-only"):
        sd.train(cfg, [1], tmp_path, progress=False)  # a run it would have to make


def test_losing_write_permission_mid_run_is_one_line_and_keeps_the_checkpoint(tmp_path):
    """As root no permission can be taken away, so the store's writes fail as they would: after
    the population's first checkpoint, every write raises PermissionError."""
    script = f"""
import sys
from study import checkpoints, cli, store
saved = []
real_save = checkpoints.Checkpoint.save
def save(self, state):
    if saved:
        raise PermissionError(13, "Permission denied", str(self.path))
    saved.append(real_save(self, state))
checkpoints.Checkpoint.save = save
def refuse(path, blob):
    raise PermissionError(13, "Permission denied", str(path))
store.write_atomic = refuse
sys.argv[0] = "sparse_dqn.py"
sys.exit(cli.main({["train", *SMOKE, "--checkpoint-every", "200", "--out", str(tmp_path), "--no-progress"]!r}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ONE_THREAD, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Permission denied" in lines[0], proc.stderr
    assert "the same command resumes" in lines[0]
    assert list((tmp_path / ".checkpoints").glob("*.pt"))  # what was saved before stays
