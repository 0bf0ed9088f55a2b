import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparse_dqn as sd

MODULE = str(Path(sd.__file__))


def cli(*args, cwd):
    return subprocess.run([sys.executable, MODULE, *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, bad", [
    (["--env", "pong"], "pong"),
    (["--arch", "conv"], "conv"),
    (["--frames", "0"], "frames=0"),
    (["--frames", "-5"], "frames=-5"),
    (["--fan-in", "401"], "fan_in=401"),
    (["--frames", "ten"], "ten"),
    (["--seeds"], "--seeds"),
    (["--pan-step-size", "inf"], "pan_step_size=inf"),
    (["--lr", "nan"], "lr=nan"),
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "device="),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, args, bad):
    out = tmp_path / "results"
    proc = cli("train", *args, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and bad in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_help_lists_every_config_field_with_its_doc(tmp_path):
    proc = cli("train", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for f in sd.dataclasses.fields(sd.Config):
        assert "--" + f.name.replace("_", "-") in text
        assert " ".join(f.metadata["doc"].split()) in text


def test_train_writes_results(tmp_path):
    proc = cli("train", "--arch", "random", "--frames", "400", "--learning-starts", "200",
               "--replay-size", "500", "--hidden-units", "400", "--seeds", "0", "1", "--out", "res",
               "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "res").glob("breakout_random_learned_*/seed_*.json"))) == 2


def test_out_under_a_regular_file_fails_before_training(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    proc = cli("train", "--frames", "100000", "--out", "file/results", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "file/results" in lines[0] and "not writable" in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
