"""The Q head's matmul in the layout training uses, beside the layouts that are faster: time per
call and whether each gives the same bits. The sparse layer hands the head its activations
units-major, (N, units, B); the head multiplies the transposed view by head_w. MKL is several
times faster on other layouts but adds up in another order, so adopting one changes training's
numbers (a new ALGORITHM_VERSION, and the committed study would have to be trained again).

    OMP_NUM_THREADS=1 python benchmarks/head_layout.py --json benchmarks/head_layout.json
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402


def microseconds(fn, calls: int) -> float:
    for _ in range(max(10, calls // 20)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--units", type=int, default=sd.Config().hidden_units)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    out = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "units": args.units, "results": {}}
    for n in args.populations:
        for batch in (1, 32):  # acting, and the update's online and target passes
            units_major = torch.relu(torch.randn(n, args.units, batch))
            hidden = units_major.transpose(1, 2)  # (N, B, units), as q_values gets it
            head_w, head_b = torch.randn(n, sd.NUM_ACTIONS, args.units) / 30, torch.randn(n, sd.NUM_ACTIONS)
            layouts = {
                "training's (transposed view)": lambda: torch.baddbmm(head_b.unsqueeze(1), hidden, head_w.transpose(1, 2)),
                "contiguous activations": lambda: torch.baddbmm(head_b.unsqueeze(1), hidden.contiguous(),
                                                                head_w.transpose(1, 2)),
                "head_w @ units-major": lambda: torch.baddbmm(head_b.unsqueeze(2), head_w, units_major).transpose(1, 2),
            }
            reference = layouts["training's (transposed view)"]()
            calls = max(20, 3_000 // n)
            rows = {name: {"us_per_call": microseconds(fn, calls), "same_bits": torch.equal(fn(), reference)}
                    for name, fn in layouts.items()}
            out["results"][f"{n}/{batch}"] = rows
            for name, row in rows.items():
                print(f"N={n:3d} B={batch:2d} {name:30s} {row['us_per_call']:9.1f} us  same bits: {row['same_bits']}",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
