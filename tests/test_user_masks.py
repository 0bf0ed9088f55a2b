"""A researcher's own mask: registered under a name, it is an arch everywhere (Config, train, the
CLI, the sweep), is checked for capacity, and keys the store by its contents."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparse_dqn as sd
from study import store

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(frames=300, learning_starts=100, eps_decay_frames=100, replay_size=300, target_update=50,
            hidden_units=200, log_every=100)


@pytest.fixture
def registry():
    saved = dict(sd.MASKS)
    yield sd.MASKS
    sd.MASKS.clear()
    sd.MASKS.update(saved)


def shifted(offset):
    def mask(cfg, seed):
        return (sd.spatial_mask(cfg) + offset) % cfg.input_size
    return mask


def test_a_registered_mask_trains_beside_built_ins_and_is_the_mask_used(registry, tmp_path):
    sd.register_mask("same", lambda cfg, seed: sd.spatial_mask(cfg))
    sd.register_mask("shift", shifted(1))
    archs = ["same", "shift", "spatial"]
    runs = sd.train([sd.Config(arch=a, **TINY) for a in archs], [0], tmp_path, progress=False)
    assert [r.config.arch for r in runs] == archs
    same, shift, spatial = (r.params["hidden_w"] for r in runs)
    assert torch.equal(same, spatial) and runs[0].episode_returns == runs[2].episode_returns
    assert not torch.equal(shift, spatial)
    assert set(store.load_results(tmp_path).arch) == set(archs)


def test_a_changed_mask_never_reuses_old_runs(registry, tmp_path):
    sd.register_mask("shift", shifted(1))
    cfg = sd.Config(arch="shift", **TINY)
    first = store.result_path(tmp_path, cfg, 0)
    sd.train(cfg, [0], tmp_path, progress=False)
    assert first.exists()
    sd.register_mask("shift", shifted(2))
    second = store.result_path(tmp_path, cfg, 0)
    assert second != first and not second.exists()
    run = sd.train(cfg, [0], tmp_path, progress=False)[0]
    assert second.exists() and first.exists() and run.seed == 0
    sd.register_mask("shift", shifted(1))
    assert store.result_path(tmp_path, cfg, 0) == first  # the same contents find the same run


@pytest.mark.parametrize("fn, message", [
    (lambda cfg, seed: sd.spatial_mask(cfg)[:, :5], "shape"),
    (lambda cfg, seed: sd.spatial_mask(cfg).float(), "integer indices"),
    (lambda cfg, seed: sd.spatial_mask(cfg) + cfg.input_size, "integer indices in 0..399"),
    (lambda cfg, seed: torch.zeros(cfg.hidden_units, cfg.k, dtype=torch.long), "repeats an input"),
])
def test_a_mask_without_the_built_ins_capacity_is_refused_in_one_line(registry, fn, message):
    sd.register_mask("bad", fn)
    with pytest.raises(ValueError, match=message) as err:
        sd.train(sd.Config(arch="bad", **TINY), [0], progress=False)
    assert "\n" not in str(err.value)


def test_names_that_would_shadow_or_break_an_arch_are_refused(registry):
    for name in ["spatial", "Row", "two words", ""]:
        with pytest.raises(ValueError, match="not allowed"):
            sd.register_mask(name, shifted(1))
    with pytest.raises(ValueError, match="register_mask adds your own"):
        sd.Config(arch="row")


def test_the_cli_and_the_sweep_take_a_mask_file(tmp_path):
    example = ROOT / "examples" / "row_mask.py"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    train = subprocess.run([sys.executable, "sparse_dqn.py", "--masks", str(example), "train", "--arch", "row",
                            "--out", str(tmp_path), "--no-progress", *args], cwd=ROOT, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    assert "breakout row learned seed 0" in train.stdout and "_mask" in train.stdout
    plan = subprocess.run([sys.executable, "sparse_dqn.py", "--masks", str(example), "sweep", "--profile", "smoke",
                           "--envs", "breakout", "--extra-archs", "row", "--out", str(tmp_path / "s"), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "row/frozen" in plan.stdout and "row/learned" in plan.stdout
    populations = [line for line in plan.stdout.splitlines() if line.strip().startswith("population")]
    assert populations and all("agent-steps/s, about" in line for line in populations)  # each one timed
    assert not (tmp_path / "s").exists()  # a plan trains and writes nothing
    missing = subprocess.run([sys.executable, "sparse_dqn.py", "--masks", str(tmp_path / "nope.py"), "train"],
                             cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.py" in missing.stderr


def test_the_row_example_is_the_centres_row_and_column(registry):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import row_mask  # noqa: F401  registers "row"
    finally:
        sys.path.pop(0)
    cfg = sd.Config(arch="row")
    mask = sd.build_mask(cfg, 0)[0]
    rc = sd.input_coords("breakout")[:, 1:]
    centres = rc[sd.unit_centres(cfg)]
    same_line = (rc[mask] == centres[:, None]).any(-1)
    assert mask.shape == (1200, 36) and bool(same_line.all())
