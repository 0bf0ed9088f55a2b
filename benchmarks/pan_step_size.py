"""Choose PAN's step size by measurement: the predictors' mean squared TD error over the last
`window` frames of `pan_frames` random-policy frames, for each candidate step size and game.

    python benchmarks/pan_step_size.py --json pan_step_size.json
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--steps", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--frames", type=int, default=sd.Config().pan_frames)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    out = {}
    for env in sd.CHANNELS:
        cfg = sd.Config(env=env)
        for step in args.steps:
            errors = []
            for seed in args.seeds:
                _, log = sd.pan_weights(sd.random_policy_transitions(cfg, seed, args.frames),
                                        cfg.input_size, cfg.pan_gamma, cfg.pan_lambda, step)
                errors.append(log)
            final = float(np.mean([np.mean([e for _, e in log[-10:]]) for log in errors]))
            out.setdefault(env, {})[str(step)] = {"final_td_mse": final, "curves": errors}
            print(f"{env:15s} step {step:g}: mean squared TD error, last 10k frames = {final:.4g}",
                  flush=True)
    args.json.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
