"""A tiny run's whole trajectory, pinned to the algorithm version. If this fails, a change
altered what training computes: bump sparse_dqn.ALGORITHM_VERSION (so that stored results are
not reused) and pin the new digests here. Each kernel backend rounds differently, so each has
its own digest; the pure-torch one is also what machines without a compiler get.

MKL's larger matmuls (the dense, L1 and CNN layers) also round differently from one processor
type to another (its blocking follows the caches), so each backend has one digest per processor
type seen. A change to training changes every one of them: none of the others can stand in."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparse_dqn as sd
from engine import backends

PINNED = {  # (version, backend): {digest: the processor type it was seen on}
    (2, "cpp"): {"9680b9afc2107dbe": "the processors of the sessions and CI runs until 2026-11-26",
                 "190677b1e1f3ffcf": "AMD EPYC, family 26 model 2 (4da5fa5b5b)"},
    (2, "torch"): {"5a652da6e8fbd7b7": "the processors of the sessions and CI runs until 2026-11-26",
                   "a16e61d162e75654": "AMD EPYC, family 26 model 2 (4da5fa5b5b)"},
}

SCRIPT = """
import hashlib, json
import sparse_dqn as sd
from engine import backends
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
print(backends.kernel_backend(), h.hexdigest()[:16])
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
    pins = PINNED.get((sd.ALGORITHM_VERSION, backend))
    assert pins is not None, f"no pin for algorithm version {sd.ALGORITHM_VERSION}: add {value!r}"
    assert value in pins, (f"training changed ({backend} digest {value} on {backends._cpu_name()}, pinned "
                           f"{', '.join(pins)}): bump ALGORITHM_VERSION and pin the new digest; unless "
                           "the unchanged code gives the same digest here, a processor type not seen yet")
