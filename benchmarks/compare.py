"""Side-by-side speed of this checkout's sparse_dqn against another version of it (by default the
commit before the engine rewrite), measured in one run, alternating, through the public API:
`train(Config(...), seeds, progress=False)`. Reports agent-steps/s (frames x agents / wall) and
the ratio new/old per case.

    python benchmarks/compare.py --baseline-rev deed7de --json benchmarks/compare.json
"""
import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import sparse_dqn as new  # noqa: E402

CASES = [("breakout", "spatial", "frozen"), ("breakout", "spatial", "learned"),
         ("space_invaders", "spatial", "frozen"), ("space_invaders", "predictive", "learned")]


def load_baseline(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:sparse_dqn.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sparse_dqn_baseline.py"
    path.write_text(source)
    kernels = subprocess.run(["git", "show", f"{rev}:sparse_kernels.cpp"], cwd=ROOT, capture_output=True, text=True)
    if kernels.returncode == 0:  # a baseline with C++ kernels builds and runs its own
        path.with_name("sparse_kernels.cpp").write_text(kernels.stdout)
    spec = importlib.util.spec_from_file_location("sparse_dqn_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def rate(sd, env, arch, regime, agents, frames) -> float:
    cfg = sd.Config(env=env, arch=arch, regime=regime, frames=frames, learning_starts=200,
                    pan_frames=5_000)
    sd.train(sd.Config(env=env, arch=arch, regime=regime, frames=260, learning_starts=200, pan_frames=5_000),
             list(range(agents)), progress=False)  # warm-up: first-touch and PAN costs
    start = time.perf_counter()
    sd.train(cfg, list(range(agents)), progress=False)
    return agents * frames / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", default="deed7de", help="git revision of the baseline")
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--cases", nargs="+", metavar="ENV/ARCH/REGIME",
                        default=["/".join(c) for c in CASES], help="what to measure (default: the four above)")
    parser.add_argument("--agent-steps", type=int, default=20_000, help="agent-steps per measurement")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args()
    old = load_baseline(args.baseline_rev)
    out = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__,
           "threads": torch.get_num_threads(), "baseline": args.baseline_rev,
           "kernels": new.kernel_backend(), "results": {}}
    for env, arch, regime in (c.split("/") for c in args.cases):
        for n in args.populations:
            frames = max(400, args.agent_steps // n)
            r_old = rate(old, env, arch, regime, n, frames)
            r_new = rate(new, env, arch, regime, n, frames)
            name = f"{env}/{arch}/{regime}/{n}"
            out["results"][name] = {"old": r_old, "new": r_new, "ratio": r_new / r_old}
            print(f"{name:40s} old {r_old:8.0f}  new {r_new:8.0f}  agent-steps/s  {r_new / r_old:5.2f}x", flush=True)
            if args.json:  # after every case: an interrupted run keeps what it measured
                args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
