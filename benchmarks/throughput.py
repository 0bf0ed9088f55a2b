"""Agent-steps per second of population training (an env step and one DQN update, batch 32,
replay sampling included, per agent per frame) for every architecture and regime, both games,
and populations of 1 to 256 (or more, on a GPU), measured in one run so that the ratios are
comparable on a shared, noisy machine.

    python benchmarks/throughput.py --json benchmarks/throughput.json
    python benchmarks/throughput.py --device cuda --populations 64 256 1024 --archs spatial
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402
from engine import backends

# Frozen L1 is a sparse frozen layer like any other mask; it is timed as random/frozen.
CASES = [(arch, regime) for arch in sd.ARCHS for regime in sd.REGIMES if (arch, regime) != ("l1", "frozen")]


def measure(env: str, arch: str, regime: str, agents: int, learning_frames: int, device: str) -> float:
    """Agent-steps/s of the frame loop of a run in which every frame after the first 40 (which
    fill the replay past one batch) acts and updates, timed after an untimed warm-up run. The
    run's set-up (masks, initial weights: once per run, seconds for 1,024 agents) is not timed."""
    fields = dict(env=env, arch=arch, regime=regime, learning_starts=40, replay_size=10_000,
                  pan_frames=5_000, device=device)
    seeds = list(range(agents))
    sd.train(sd.Config(frames=100, **fields), seeds, progress=False)  # first-touch and PAN costs
    cfg = sd.Config(frames=40 + learning_frames, **fields)
    marks = []  # the progress callback runs when the frame loop starts and after each block

    def mark(_):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    sd.train(cfg, seeds, progress=mark)
    return agents * cfg.frames / (marks[-1] - marks[0])


def pan_ms_per_frame(env: str, frames: int = 5_000) -> float:
    cfg = sd.Config(env=env, arch="predictive", pan_frames=frames)
    start = time.perf_counter()
    sd.predictive_mask(cfg, seed=10_000)  # a seed no population here uses: not in the cache
    return (time.perf_counter() - start) / frames * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--envs", nargs="+", default=list(sd.CHANNELS), choices=list(sd.CHANNELS))
    parser.add_argument("--archs", nargs="+", default=list(sd.ARCHS), choices=sd.ARCHS)
    parser.add_argument("--regimes", nargs="+", default=list(sd.REGIMES), choices=sd.REGIMES)
    parser.add_argument("--agent-steps", type=int, default=6_400,
                        help="learning agent-steps per measurement (split over the population)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--float-observations", action="store_true",
                        help="hand the GPU's sparse layer its update batches as floats, as before they came as bits")
    parser.add_argument("--torch-games", action="store_true",
                        help="play the games in torch ops on a GPU, as before their Triton kernels")
    args = parser.parse_args()
    sd.check_device(args.device)
    if args.float_observations:
        sample = sd.Replay.sample
        sd.Replay.sample = lambda self, agents, idx, inputs_major=False, binary=False: sample(
            self, agents, idx, inputs_major)
    if args.torch_games:
        kernels = backends.game_kernels
        backends.game_kernels = lambda device, native: kernels(device, native) if device.type == "cpu" else None

    out = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
           "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
           "kernels": backends.kernel_backend() if args.device == "cpu" else ("triton" if backends._triton() else "torch"),
           "float_observations": args.float_observations, "torch_games": args.torch_games, "results": {}}
    if "predictive" in args.archs:  # PAN trains before the first frame: timed apart, per PAN frame
        out["pan_ms_per_frame"] = {env: pan_ms_per_frame(env) for env in args.envs}
        print(f"PAN, ms per frame of its data: {out['pan_ms_per_frame']}", flush=True)
    for env in args.envs:
        for arch, regime in CASES:
            if arch not in args.archs or regime not in args.regimes:
                continue
            rates = {}
            for n in args.populations:
                rates[n] = measure(env, arch, regime, n, max(50, args.agent_steps // n), args.device)
                print(f"{env:15s} {arch:11s} {regime:8s} population {n:5d}: {rates[n]:9.0f} agent-steps/s",
                      flush=True)
            out["results"][f"{env}/{arch}/{regime}"] = rates
            if args.json:  # written as it goes: an interrupted run keeps what it measured
                args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
