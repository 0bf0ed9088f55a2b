"""How predictive are the predictive masks? For each game and each `pan_idle` choice: cumulants
that never varied in PAN's random-policy data, the share of mask inputs chosen with no evidence
(|w| = 0), the mean grid distance of a unit's inputs to its centre (a spatial mask's is the
floor, a random mask's about 5.2), and the predictors' final TD error.

    python benchmarks/pan_masks.py --json benchmarks/pan_masks.json
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--pan-frames", type=int, default=sd.Config.pan_frames)
    args = parser.parse_args()
    rows = []
    for env in sd.CHANNELS:
        for seed in args.seeds:
            for idle in sd.PAN_IDLE:
                cfg = sd.Config(env=env, arch="predictive", pan_idle=idle, pan_frames=args.pan_frames)
                row = dict(sd.pan_report(cfg, seed), seed=seed)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
