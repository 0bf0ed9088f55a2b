"""Agent-steps per second of population training: an env step and one DQN update (batch 32,
replay sampling included) per agent per frame, for populations of 1, 8, 32 and 64, measured in
one run so that the ratios are comparable on a shared, noisy machine.

    python benchmarks/throughput.py --json throughput.json
"""
import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402


def measure(cfg: sd.Config, agents: int) -> float:
    """Agent-steps/s over `frames` learning frames (after a short replay warm-up)."""
    pop = [(cfg, seed) for seed in range(agents)]
    warm = dataclasses.replace(cfg, frames=cfg.learning_starts + 20)
    sd.train_population([(warm, s) for _, s in pop], progress=False)  # first-touch costs
    start = time.perf_counter()
    sd.train_population(pop, progress=False)
    wall = time.perf_counter() - start
    return agents * (cfg.frames - cfg.learning_starts) / wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--envs", nargs="+", default=list(sd.CHANNELS))
    parser.add_argument("--arch", default="spatial")
    parser.add_argument("--regimes", nargs="+", default=list(sd.REGIMES))
    parser.add_argument("--agent-steps", type=int, default=12_000,
                        help="learning agent-steps per measurement (split over the population)")
    args = parser.parse_args()

    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "arch": args.arch, "results": {}}
    top, bottom = max(args.populations), min(args.populations)
    for env in args.envs:
        for regime in args.regimes:
            rates = {}
            for n in args.populations:
                frames = max(100, args.agent_steps // n)
                cfg = sd.Config(env=env, arch=args.arch, regime=regime, learning_starts=200,
                                frames=200 + frames)
                rates[n] = measure(cfg, n)
                print(f"{env:15s} {regime:8s} population {n:3d}: {rates[n]:8.0f} agent-steps/s", flush=True)
            ratio = rates[top] / rates[bottom]
            out["results"][f"{env}/{regime}"] = {"agent_steps_per_s": rates, f"ratio_{top}_to_{bottom}": ratio}
            print(f"{env:15s} {regime:8s} ratio {top} vs {bottom}: {ratio:.2f}x", flush=True)
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
