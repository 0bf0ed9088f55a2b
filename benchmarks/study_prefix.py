"""Whether this machine reproduces stored runs: retrain the first frames of a stored run (same
config and seed, fewer frames) and compare its episodes with the stored ones, episode by episode.
A run's first frames do not depend on how many frames it trains in all.

    OMP_NUM_THREADS=1 python benchmarks/study_prefix.py --frames 25000 \\
        results/study/breakout_spatial_learned_*/seed_0.json results/study/breakout_dense_learned_*/seed_0.json
"""
import argparse
import dataclasses
import glob
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402
from engine import backends


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="stored run files (glob patterns allowed)")
    parser.add_argument("--frames", type=int, default=25_000)
    args = parser.parse_args()
    print(f"this machine: {backends._cpu_name()}, {backends.kernel_backend()} kernels")
    for path in [p for pattern in args.runs for p in sorted(glob.glob(pattern))]:
        stored = sd.RunResult.from_json(json.loads(Path(path).read_text()))
        run = sd.train(dataclasses.replace(stored.config, frames=args.frames), [stored.seed], progress=False)[0]
        theirs = [(f, r) for f, r in zip(stored.episode_frames, stored.episode_returns) if f <= args.frames]
        mine = list(zip(run.episode_frames, run.episode_returns))
        differ = next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), None)
        if differ is None and len(mine) == len(theirs):
            verdict = f"all {len(mine):,} episodes identical"
        else:
            differ = min(len(mine), len(theirs)) if differ is None else differ
            verdict = (f"episodes identical up to episode {differ:,} of {len(theirs):,}, then differ "
                       f"(stored {theirs[differ] if differ < len(theirs) else '-'}, here "
                       f"{mine[differ] if differ < len(mine) else '-'}: frame, return)")
        print(f"{path}: {verdict}; stored on {stored.provenance.get('cpu', 'an unrecorded processor')}", flush=True)


if __name__ == "__main__":
    main()
