"""Side-by-side speed of this checkout's sparse_dqn against another version of it (by default the
commit before the engine rewrite), measured in one run, alternating, through the public API:
`train(Config(...), seeds, progress=False)`. Reports agent-steps/s (frames x agents / wall) and
the ratio new/old per case, from the best of --repeats alternating measurements of each.

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

CASES = [("breakout", "spatial", "frozen"), ("breakout", "spatial", "learned"),
         ("space_invaders", "spatial", "frozen"), ("space_invaders", "predictive", "learned")]


def load_engine(name: str, rev: str | None):
    """sparse_dqn (and its C++ kernels, where the revision has them) at git revision rev, or as
    in the working tree (rev None), loaded from a copy under its own module name. Both engines
    are loaded this way: measured here, an engine imported normally ran about 15% slower than
    the very same code loaded from a copy, which biased every ratio against it."""
    def read(file):
        if rev is None:
            return (ROOT / file).read_text() if (ROOT / file).exists() else None
        shown = subprocess.run(["git", "show", f"{rev}:{file}"], cwd=ROOT, capture_output=True, text=True)
        return shown.stdout if shown.returncode == 0 else None

    def write(path, text):  # an unchanged file keeps its time, so its build is not redone
        if not path.exists() or path.read_text() != text:
            path.write_text(text)

    folder = Path(tempfile.gettempdir()) / f"sparse_dqn_compare_{rev or 'checkout'}"  # one per version
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    write(path, read("sparse_dqn.py"))
    flat_kernels = read("sparse_kernels.cpp")  # before engine/: the kernels beside the module
    if flat_kernels is not None:  # an engine with C++ kernels builds and runs its own
        write(path.with_name("sparse_kernels.cpp"), flat_kernels)
    elif read("engine/backends.py") is not None:
        # engine/ and study/ import under their own names: one version laid out in packages per process
        if any(m == "engine" or m.startswith("engine.") for m in sys.modules):
            sys.exit(f"{rev or 'the checkout'} and another version both have engine/: compare them in two processes")
        files = subprocess.run(["git", "ls-files", "engine", "study"] if rev is None else
                               ["git", "ls-tree", "-r", "--name-only", rev, "engine", "study"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        for file in files:
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            write(folder / file, read(file))
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def rate(sd, env, arch, regime, agents, frames, loop_only=False) -> float:
    """Agent-steps/s of train(); with loop_only, of its frame loop alone, without the set-up (PAN's
    training, for predictive masks), timed from the loop's first progress call to its last."""
    cfg = sd.Config(env=env, arch=arch, regime=regime, frames=frames, learning_starts=200,
                    pan_frames=5_000)
    sd.train(sd.Config(env=env, arch=arch, regime=regime, frames=260, learning_starts=200, pan_frames=5_000),
             list(range(agents)), progress=False)  # warm-up: first-touch and PAN costs
    marks = [time.perf_counter()]
    sd.train(cfg, list(range(agents)), progress=lambda _: marks.append(time.perf_counter()))
    marks.append(time.perf_counter())
    if loop_only and len(marks) < 4:
        sys.exit(f"--loop-only: {sd.__name__}'s train does not call its progress argument (versions "
                 "before the frame loop's progress marks); time it without --loop-only")
    start, end = (marks[1], marks[-2]) if loop_only else (marks[0], marks[-1])
    return agents * frames / (end - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", default="deed7de", help="git revision of the baseline")
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--cases", nargs="+", metavar="ENV/ARCH/REGIME",
                        default=["/".join(c) for c in CASES], help="what to measure (default: the four above)")
    parser.add_argument("--agent-steps", type=int, default=20_000, help="agent-steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each engine per case, alternating")
    parser.add_argument("--loop-only", action="store_true",
                        help="time the frame loop alone, not the set-up (PAN's training for predictive masks)")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args()
    old = load_engine("sparse_dqn_baseline", args.baseline_rev)
    new = load_engine("sparse_dqn_checkout", None)
    out = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__,
           "threads": torch.get_num_threads(), "baseline": args.baseline_rev,
           "kernels": (new.backends if hasattr(new, "backends") else new).kernel_backend(), "results": {}}
    for env, arch, regime in (c.split("/") for c in args.cases):
        for n in args.populations:
            frames = max(400, args.agent_steps // n)
            # old, new, new, old, ...: drift over the run (other work, heat) falls on both alike
            rates = {old: [], new: []}
            for i in range(args.repeats):
                for sd in (old, new) if i % 2 == 0 else (new, old):
                    rates[sd].append(rate(sd, env, arch, regime, n, frames, args.loop_only))
            r_old, r_new = max(rates[old]), max(rates[new])
            name = f"{env}/{arch}/{regime}/{n}"
            out["results"][name] = {"old": r_old, "new": r_new, "ratio": r_new / r_old}
            print(f"{name:40s} old {r_old:8.0f}  new {r_new:8.0f}  agent-steps/s  {r_new / r_old:5.2f}x", flush=True)
            if args.json:  # after every case: an interrupted run keeps what it measured
                args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
