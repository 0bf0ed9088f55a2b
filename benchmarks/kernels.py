"""The sparse layer's C++ kernels, and the replay's sample that feeds them, of this checkout
against those of another version, alone, outside training: both builds in one process, timed
alternately (one thread, min of 5 rounds of 100 calls) on real observations of a batch of 32 from
8 agents' games, and checked equal bit for bit on every round.

    python benchmarks/kernels.py --baseline-rev 8cdb882 --cases space_invaders/predictive breakout/spatial
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import sparse_dqn as sd  # noqa: E402
from engine import backends

def build(name: str, source: str):
    path = Path(tempfile.mkdtemp()) / f"{name}.cpp"
    path.write_text(source)
    return load(name, [str(path)], extra_cflags=backends.KERNEL_FLAGS, extra_ldflags=["-fopenmp"])


def observations(cfg: sd.Config, agents: int, frames: int = 600) -> torch.Tensor:
    """(agents, frames, inputs) observations of random play."""
    games = sd.make_games(cfg, agents)
    games.reset(torch.ones(agents, dtype=torch.bool), torch.rand(agents))
    seen = []
    for _ in range(frames):
        _, done = games.act(torch.randint(0, sd.NUM_ACTIONS, (agents,)), torch.rand(agents))
        seen.append(games.observe().float())
        games.reset(done.bool(), torch.rand(agents))
    return torch.stack(seen, 1)


def timed(fn, *args, calls=100) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - start) / calls * 1e3


def relu_grad(mod):
    """The gradient through the ReLU as a version computes it: its kernel, or torch's gt and where."""
    return getattr(mod, "relu_grad", lambda out, grad_out: torch.where(out > 0, grad_out, 0.0).contiguous())


def forward(mod, plan, masks):
    """The forward kernel as a version takes it: since the unit-major path, with the masks read by
    unit as well as by input; since units are summed in groups, with the groups."""
    doc = mod.sparse_forward.__doc__  # pybind's signature names the arguments
    by_unit = plan.by_unit if "members" in doc else unit_rows(masks) if "by_flat" in doc else ()
    by_input = inverse(mod, plan, masks)
    return lambda x, w, b: mod.sparse_forward(x, w, b, *by_input, *by_unit)


def inverse(mod, plan, masks):
    """The masks read by input as a version takes them: since grouped units, one set for a
    population whose masks are alike; before, one set per agent. Before units were computed from
    entries, with a table of each entry's unit."""
    doc = mod.sparse_forward.__doc__
    tables = plan.inverse
    if "flat: torch.Tensor, by_input" not in doc:  # every version before took a unit table
        tables = (*tables, tables[1] // masks.shape[2])
    if "members" in doc:
        return tables
    return tuple(t.expand(len(masks), -1).contiguous() for t in tables)


def unit_rows(index):
    """The masks read by unit as the kernels took them before units were grouped: every agent's own
    rows in unit order, each unit's inputs ascending (ties in mask order) and its weights' places."""
    n, u, k = index.shape
    inputs, order = torch.sort(index, dim=2, stable=True)
    flat = order + torch.arange(u).view(1, u, 1) * k
    return tuple(t.reshape(n, u * k).to(torch.int32).contiguous() for t in (inputs, flat))


def sample(mod, rings, agents, idx, inputs):
    """The replay's sample of both observations as the sparse layer reads them, (n, inputs, B): since
    inputs_major, written so by the kernel; before, (n, B, inputs) and a transposing copy."""
    major = "inputs_major" in mod.replay_sample.__doc__

    def run():
        x, _, _, x_next, _ = mod.replay_sample(*rings, agents, idx, inputs, *([True] if major else []))
        return x.transpose(1, 2).contiguous(), x_next.transpose(1, 2).contiguous()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", required=True, help="git revision whose sparse_kernels.cpp to compare")
    parser.add_argument("--cases", nargs="+", metavar="ENV/ARCH", default=["breakout/spatial", "space_invaders/predictive"])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    old_source = subprocess.run(["git", "show", f"{args.baseline_rev}:sparse_kernels.cpp"], cwd=ROOT,
                                check=True, capture_output=True, text=True).stdout
    mods = {"old": build(f"kernels_{args.baseline_rev}", old_source),
            "new": build("kernels_checkout", (ROOT / "sparse_kernels.cpp").read_text())}
    out = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__, "results": {}}
    torch.manual_seed(0)
    for case in args.cases:
        env, arch = case.split("/")
        cfg = sd.Config(env=env, arch=arch, regime="learned", pan_frames=5_000)
        n = args.agents
        masks = torch.stack([sd.build_mask(cfg, s)[0] for s in range(n)])
        plan = sd.sparse_plan(masks, cfg.input_size)
        obs = observations(cfg, n)
        units, k = masks.shape[1:]
        packed = torch.stack([mods["new"].replay_pack(o.to(torch.uint8)) for o in obs.transpose(0, 1)], 1)
        rings = (packed, packed.roll(1, 1), torch.zeros(packed.shape[:2], dtype=torch.uint8),
                 torch.zeros(packed.shape[:2]), torch.zeros(packed.shape[:2]))
        agents = torch.arange(n)
        w, b = torch.rand(n, units * k) - 0.5, torch.rand(n, units) - 0.5
        # each version's tables, made once: copying them per call would be timed as the kernel's
        by_input = {name: inverse(mod, plan, masks) for name, mod in mods.items()}
        forwards = {name: forward(mod, plan, masks) for name, mod in mods.items()}
        times = {}
        for _ in range(5):
            x = obs[:, torch.randint(0, obs.shape[1], (32,))].transpose(1, 2).contiguous()
            x_act = obs[:, torch.randint(0, obs.shape[1], (1,))].transpose(1, 2).contiguous()  # acting: one sample
            hidden = forwards["new"](x, w, b)
            grad_out = torch.randn(n, 32, units).transpose(1, 2)  # as the head's backward hands it over
            grad = relu_grad(mods["new"])(hidden, grad_out)
            idx = torch.randint(0, obs.shape[1], (n, 32))
            results = {}
            for name, mod in mods.items():
                times.setdefault(f"forward/{name}", []).append(timed(forwards[name], x, w, b))
                times.setdefault(f"forward_act/{name}", []).append(timed(forwards[name], x_act, w, b))
                times.setdefault(f"grad_weight/{name}", []).append(
                    timed(mod.sparse_grad_weight, grad, x, *by_input[name], units * k))
                times.setdefault(f"relu_grad/{name}", []).append(timed(relu_grad(mod), hidden, grad_out))
                times.setdefault(f"sample/{name}", []).append(timed(sample(mod, rings, agents, idx, cfg.input_size)))
                results[name] = (forwards[name](x, w, b), forwards[name](x_act, w, b),
                                 mod.sparse_grad_weight(grad, x, *by_input[name], units * k),
                                 relu_grad(mod)(hidden, grad_out),
                                 *sample(mod, rings, agents, idx, cfg.input_size)())
            for old, new in zip(results["old"], results["new"]):
                assert torch.equal(old.view(torch.int32), new.view(torch.int32)), f"{case}: the kernels differ"
        best = {key: min(v) for key, v in times.items()}
        out["results"][case] = best
        for kernel in ("forward", "forward_act", "grad_weight", "relu_grad", "sample"):
            o, nw = best[f"{kernel}/old"], best[f"{kernel}/new"]
            print(f"{case:28s} {kernel:11s} old {o:7.3f} ms  new {nw:7.3f} ms  {o / nw:5.2f}x", flush=True)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
