"""The Q head's three products at the update's batch of 32, as MKL computes them in training's
layout and as the C++ kernels compute them in MKL's own order of sums: time per call and whether
the bits are the same. The sparse layer hands the head its activations units-major, (N, units, B);
torch multiplies their transposed view by head_w (forward), takes the input's gradient through the
ReLU (grad @ head_w, then the mask) and the weight's (activations @ grad). MKL runs that layout at a
few GFLOP/s; its order of sums for it is reproduced in sparse_kernels.cpp (head_forward_agent,
head_relu_grad, head_grad_weight). Also timed: the layouts MKL is fast on, which sum in another
order (taking one would change training's numbers).

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
from engine import backends


def microseconds(fn, calls: int) -> float:
    for _ in range(max(10, calls // 20)):
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--units", type=int, default=sd.Config().hidden_units)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kernels = backends._kernels()
    if kernels is None:
        sys.exit("the C++ kernels are not built on this machine")
    torch.manual_seed(0)
    out = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__, "cpu": backends._cpu_name(),
           "threads": torch.get_num_threads(), "units": args.units, "batch": 32, "results": {}}
    for n in args.populations:
        units_major = torch.relu(torch.randn(n, args.units, 32))
        hidden = units_major.transpose(1, 2)  # (N, B, units), as torch's head gets it
        head_w, head_b = torch.randn(n, sd.NUM_ACTIONS, args.units) / 30, torch.randn(n, sd.NUM_ACTIONS)
        grad = torch.randn(n, 32, sd.NUM_ACTIONS)
        products = {
            "forward": {
                "MKL, training's layout": lambda: torch.baddbmm(head_b.unsqueeze(1), hidden, head_w.transpose(1, 2)),
                "C++, MKL's order": lambda: kernels.head_forward(units_major, head_w, head_b),
                "MKL, contiguous activations": lambda: torch.baddbmm(head_b.unsqueeze(1), hidden.contiguous(),
                                                                     head_w.transpose(1, 2)),
                "MKL, head_w @ units-major": lambda: torch.baddbmm(head_b.unsqueeze(2), head_w,
                                                                   units_major).transpose(1, 2),
            },
            "input gradient through the ReLU": {
                "MKL, training's layout": lambda: kernels.relu_grad(units_major, torch.bmm(grad, head_w).transpose(1, 2)),
                "C++, MKL's order": lambda: kernels.head_relu_grad(units_major, grad, head_w),
            },
            "weight gradient": {
                "MKL, training's layout": lambda: torch.bmm(units_major, grad).transpose(1, 2),
                "C++, MKL's order": lambda: kernels.head_grad_weight(units_major, grad),
            },
        }
        calls = max(20, 3_000 // n)
        for product, ways in products.items():
            reference = ways["MKL, training's layout"]()
            rows = {name: {"us_per_call": microseconds(fn, calls),
                           "same_bits": torch.equal(fn().contiguous(), reference.contiguous())}
                    for name, fn in ways.items()}
            out["results"][f"{n}/{product}"] = rows
            for name, row in rows.items():
                print(f"N={n:3d} {product:32s} {name:30s} {row['us_per_call']:9.1f} us  same bits: {row['same_bits']}",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
