"""The GPU's sparse hidden layer alone, at the update's batch (32) and acting's (1), for a
population of spatial (one table for all) or random (a table each) masks of both games: the
Triton kernels (sparse_triton) on float inputs and on bool ones (bits, as the training loop gives
them), against the masked-dense matmul they replace, and against another version of
sparse_triton.py (--baseline FILE), each timed with CUDA events (the median of --repeats calls).

    python benchmarks/triton_layer.py --agents 1024 --baseline /tmp/old/sparse_triton.py
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402
from engine import triton_kernels as sparse_triton  # noqa: E402


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"baseline_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, repeats: int) -> float:
    """Median milliseconds of fn() over repeats, after one untimed call (compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def cases(kernels, x, w, bias, index, grad):
    """name -> a callable, for one implementation of the layer."""
    def forward(batch, inputs=x):
        return lambda: kernels.sparse_relu_forward(inputs[:, :batch], w, bias, index)

    def backward(inputs):
        out, xt = kernels.sparse_relu_forward(inputs, w, bias, index)
        return lambda: kernels.sparse_relu_backward(xt, index, out, grad)

    runs = {"forward, batch 32": forward(32), "acting, batch 1": forward(1),
            "weight and bias gradients": backward(x)}
    if hasattr(kernels, "pack_samples"):  # a version that takes bool inputs
        bits = x.bool()
        runs |= {"forward, batch 32, bools": forward(32, bits), "weight and bias gradients, bools": backward(bits)}
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--baseline", type=Path, help="another sparse_triton.py to time beside this one")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sd.check_device("cuda")
    versions = {"triton": sparse_triton}
    if args.baseline:
        versions["baseline triton"] = load(args.baseline)
    results = {}
    for env in ("breakout", "space_invaders"):
        for arch in ("spatial", "random"):
            cfg = sd.Config(env=env, arch=arch)
            n, d = args.agents, cfg.input_size
            masks = [sd.build_mask(cfg, seed)[0] for seed in range(n if arch == "random" else 1)]
            index = torch.stack(masks).expand(n, -1, -1).cuda()
            plan = sd.sparse_plan(index, d, masked_dense=True)
            u, k = index.shape[1:]
            x = (torch.rand(n, 32, d, device="cuda") < 0.1).float()
            w, bias = torch.randn(n, u, k, device="cuda") / k ** 0.5, torch.randn(n, u, device="cuda") * 0.1
            grad = torch.randn(n, u, 32, device="cuda")
            runs = {name: cases(m, x, w, bias, plan.gather_index, grad) for name, m in versions.items()}
            wr = w.clone().requires_grad_(True)
            dense = {"forward, batch 32": lambda: sd.sparse_linear(x, w, plan),
                     "acting, batch 1": lambda: sd.sparse_linear(x[:, :1], w, plan),
                     "weight and bias gradients": lambda: sd.sparse_linear(x, wr, plan).backward(grad)}
            runs["masked-dense matmul"] = dense
            row = {}
            for case in runs["triton"]:
                row[case] = {name: round(timed(r[case], args.repeats), 4) for name, r in runs.items() if case in r}
                print(f"{env:15s} {arch:8s} {args.agents} agents, {case:26s} " +
                      ", ".join(f"{name} {ms:.3f} ms" for name, ms in row[case].items()), flush=True)
            results[f"{env}/{arch}"] = row
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "agents": args.agents, "unit": "median ms per call",
                                         "command": "python " + " ".join(sys.argv), "results": results}, indent=1))


if __name__ == "__main__":
    main()
