"""What the host does per frame: torch operator calls and Triton launches per learning frame of a
population, each attributed to the line of sparse_dqn.py that made it.

On a GPU each call costs host time (Python, the dispatcher, a launch) whatever the population's
size: 64 spatial learned agents ran at about 4.8 ms a frame on an H200, set by the host
(benchmarks/gpu_h200_triton.json). Counting the calls needs no GPU. --path gpu (the default) runs
the GPU's code path: on a GPU where there is one, else on the CPU (C++ kernels off, masked-dense
plans, Triton's kernels under its interpreter, games reset every frame as on a GPU). --path cpu
counts the CPU's own path (C++ kernels), whose calls cost host time too (a population of one).
Views (no kernel, less host time) are counted apart, and so are calls that wait for the device
(a tensor's value read on the host): on a GPU each one stops the host from running ahead.

    python benchmarks/host_calls.py [--path gpu|cpu] [--env breakout] [--arch spatial] [--regime learned]
"""
import argparse
import collections
import functools
import os
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--path", default="gpu", choices=["gpu", "cpu"])
parser.add_argument("--env", default="breakout", choices=["breakout", "space_invaders"])
parser.add_argument("--arch", default="spatial")
parser.add_argument("--regime", default="learned", choices=["frozen", "learned"])
parser.add_argument("--agents", type=int, default=2)
parser.add_argument("--frames", type=int, default=5, help="learning frames counted")
parser.add_argument("--rows", type=int, default=40, help="call sites listed, most calls first")
parser.add_argument("--out", type=Path, help="also write the table here")
ARGS = parser.parse_args()

import torch  # noqa: E402

EMULATED = ARGS.path == "gpu" and not torch.cuda.is_available()
if EMULATED:  # Triton reads this on import
    os.environ["TRITON_INTERPRET"] = "1"

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402
from engine import backends

VIEWS = {"view", "_unsafe_view", "as_strided", "transpose", "t", "unsqueeze", "squeeze", "select", "slice",
         "expand", "alias", "detach", "permute", "_reshape_alias", "unbind", "split"}
WAITS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal"}


def caller() -> str:
    """The innermost line of sparse_dqn.py on the stack."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename != sd.__file__:
        frame = frame.f_back
    return "elsewhere" if frame is None else f"sparse_dqn.py:{frame.f_lineno} {frame.f_code.co_name}"


class Count(TorchDispatchMode):
    """Counts (kind, operator, call site) while on."""

    def __init__(self):
        super().__init__()
        self.on = False
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on:
            name = func.__name__.split(".")[0]
            self.calls[("wait" if name in WAITS else "view" if name in VIEWS else "op", name, caller())] += 1
        return func(*args, **(kwargs or {}))


def count_launches(count: Count):
    """Counts each Triton launch as ("Triton", kernel, call site), and not the interpreter's own
    torch calls."""
    from triton.runtime import interpreter, jit

    kernel_class = interpreter.InterpretedFunction if EMULATED else jit.JITFunction
    run = kernel_class.run

    def counted(self, *a, **kw):
        on = count.on
        if on:
            count.calls[("Triton", self.fn.__name__, caller())] += 1
        count.on = False
        try:
            return run(self, *a, **kw)
        finally:
            count.on = on

    kernel_class.run = counted


def main():
    count = Count()
    if ARGS.path == "gpu":
        count_launches(count)
    if EMULATED:
        backends._kernels = lambda: None
        sd.sparse_plan = functools.partial(sd.sparse_plan, masked_dense=True)
    learning_starts = 40
    cfg = sd.Config(env=ARGS.env, arch=ARGS.arch, regime=ARGS.regime, learning_starts=learning_starts,
                    replay_size=1_000, pan_frames=1_000, frames=learning_starts + ARGS.frames + 3,
                    eps_decay_frames=10, device="cuda" if ARGS.path == "gpu" and not EMULATED else "cpu")
    # Whole frames, from one update to the one `frames` later, after a first that builds things
    # once; the counted frames act greedily (epsilon below 1).
    update = sd._Group.update
    updates = []

    def counted_update(self, *a, **kw):
        updates.append(self)
        count.on = 1 < len(updates) <= 1 + ARGS.frames
        return update(self, *a, **kw)

    sd._Group.update = counted_update
    with count:
        sd.train(cfg, list(range(ARGS.agents)), progress=False)
    count.on = False
    kinds = collections.Counter()
    for (kind, _, _), c in count.calls.items():
        kinds[kind] += c
    where = "the GPU's path, emulated on the CPU" if EMULATED else f"the {ARGS.path.upper()}'s path"
    lines = [f"{ARGS.env} {ARGS.arch} {ARGS.regime}, {ARGS.agents} agents, {where}, per learning frame: "
             + ", ".join(f"{c / ARGS.frames:g} {kind}" for kind, c in sorted(kinds.items()))]
    for (kind, name, site), c in sorted(count.calls.items(), key=lambda r: (-r[1], r[0][2]))[: ARGS.rows]:
        lines.append(f"{c / ARGS.frames:6g}  {kind:6s} {name:24s} {site}")
    print(*lines, sep="\n")
    if ARGS.out:
        ARGS.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
