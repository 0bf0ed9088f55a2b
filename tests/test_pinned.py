"""A tiny run's whole trajectory, pinned to the algorithm version. If this fails, a change
altered what training computes: bump sparse_dqn.ALGORITHM_VERSION (so that stored results are
not reused) and pin the new digests here. Each kernel backend rounds differently, so each has
its own digest; the pure-torch one is also what machines without a compiler get."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparse_dqn as sd

PINNED = {
    (2, "cpp"): "9680b9afc2107dbe",
    (2, "torch"): "5a652da6e8fbd7b7",
}

SCRIPT = """
import hashlib, json
import sparse_dqn as sd
tiny = dict(frames=900, learning_starts=300, replay_size=1_000, target_update=100, eps_decay_frames=300,
            hidden_units=400, pan_frames=1_000, log_every=300)
configs = [sd.Config(arch="spatial", **tiny), sd.Config(arch="predictive", regime="frozen", **tiny)]
runs = sd.train(configs, [0, 1], progress=False)
runs += sd.train(sd.Config(env="space_invaders", arch="random", **tiny), [0], progress=False)
for env in ("breakout", "space_invaders"):  # the matmul layers: dense, L1 (with its penalty) and the CNN
    runs += sd.train([sd.Config(env=env, arch="dense", **tiny), sd.Config(env=env, arch="l1", l1_coef=1e-3, **tiny),
                      sd.Config(env=env, arch="minatar_cnn", **tiny)], [0], progress=False)
h = hashlib.sha256()
for run in runs:
    h.update(json.dumps([run.episode_frames, run.episode_returns, run.sparsity]).encode())
    for name in sorted(run.params):
        h.update(run.params[name].numpy().tobytes())
print(sd.kernel_backend(), h.hexdigest()[:16])
"""


def digest(backend: str) -> tuple[str, str]:
    # One thread, as the study's sweeps run: on more, MKL splits the dense layers' sums over
    # threads and their last bits depend on how many there are (book/reproducing.md).
    env = dict(os.environ, SPARSE_DQN_KERNELS=backend, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          cwd=Path(sd.__file__).parent, check=True)
    used, value = proc.stdout.split()
    return used, value


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_a_tiny_runs_trajectory_matches_its_pin(backend):
    used, value = digest(backend)
    if used != backend:
        assert not os.environ.get("CI"), f"the {backend} kernels did not build under CI"
        pytest.skip(f"the {backend} kernels are not built on this machine")
    pin = PINNED.get((sd.ALGORITHM_VERSION, backend))
    assert pin is not None, f"no pin for algorithm version {sd.ALGORITHM_VERSION}: add {value!r}"
    assert value == pin, (f"training changed ({backend} digest {value}, pinned {pin}): bump "
                          "ALGORITHM_VERSION and pin the new digest")
