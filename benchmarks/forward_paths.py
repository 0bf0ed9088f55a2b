"""The sparse forward pass at the update's batch of 32 on real observations, by each of its two
ways (unit by unit, input by input) and as the kernel chooses, per agent, one thread: whether
choosing pays for its scan of the batch. Units in groups that share their inputs (spatial masks)
are summed by unit without the scan (sparse_kernels.cpp).

    OMP_NUM_THREADS=1 python benchmarks/forward_paths.py --json benchmarks/forward_paths.json
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_dqn as sd  # noqa: E402
from engine import backends
from kernels import observations  # noqa: E402

WAYS = {"chosen": -1, "by unit": 1, "by input": 0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["breakout/spatial", "space_invaders/spatial",
                                                       "breakout/random", "space_invaders/predictive"],
                        metavar="ENV/ARCH")
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kernels = backends._kernels()
    if kernels is None:
        sys.exit("the C++ kernels are not built on this machine")
    torch.manual_seed(0)
    out = {"command": "python " + " ".join(sys.argv), "cpu": backends._cpu_name(), "threads": torch.get_num_threads(),
           "us_per_agent": {}}
    for case in args.cases:
        env, arch = case.split("/")
        cfg = sd.Config(env=env, arch=arch, pan_frames=5_000)
        for n in args.populations:
            masks = torch.stack([sd.build_mask(cfg, seed)[0] for seed in range(n)])
            plan = sd.sparse_plan(masks, cfg.input_size)
            obs = observations(cfg, n)
            w, b = torch.rand(n, cfg.hidden_units * cfg.k) - 0.5, torch.rand(n, cfg.hidden_units) - 0.5
            x = obs[:, torch.randint(0, obs.shape[1], (32,))].transpose(1, 2).contiguous()
            row = {}
            for name, way in WAYS.items():
                def call():
                    return kernels.sparse_forward(x, w, b, *plan.inverse, *plan.by_unit, way)
                for _ in range(3):
                    call()
                calls, best = max(2, 100 // n), float("inf")
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(calls):
                        call()
                    best = min(best, (time.perf_counter() - start) / calls)
                row[name] = round(best / n * 1e6, 2)
            out["us_per_agent"][f"{case}/{n}"] = row
            print(f"{case:28s} {n:3d} agents  " + "  ".join(f"{k} {v:6.1f}" for k, v in row.items()) + "  us per agent",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
