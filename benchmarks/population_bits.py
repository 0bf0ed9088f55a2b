"""Does an agent's run depend on who shares its population, on this device? Trains seed 0 alone,
in a population of 4 and in one of 64 (Breakout, spatial, learned, short), and compares its
episode returns and final parameters bit for bit. On one CPU thread they are equal. On
several, the head's matmul may be split across threads differently for different population
sizes (the test suite's small networks do not show it). On a GPU the batched matmuls may pick other kernels for other
batch counts, and this says whether they do. Exits 1 if they differ.

    python benchmarks/population_bits.py --device cuda
    OMP_NUM_THREADS=2 python benchmarks/population_bits.py --device cpu
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=3_000)
    args = parser.parse_args()
    sd.check_device(args.device)
    cfg = sd.Config(env="breakout", arch="spatial", regime="learned", frames=args.frames,
                    learning_starts=500, target_update=250, device=args.device)
    alone = sd.train(cfg, [0], progress=False)[0]
    same = True
    for n in (4, 64):
        shared = sd.train(cfg, list(range(n)), progress=False)[0]
        returns = shared.episode_returns == alone.episode_returns
        params = all(torch.equal(shared.params[k], alone.params[k]) for k in alone.params)
        print(f"seed 0 in a population of {n} vs alone on {args.device}: episode returns "
              f"{'identical' if returns else 'differ'} ({len(alone.episode_returns)} episodes), "
              f"final parameters {'identical' if params else 'differ'}")
        same &= returns and params
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
