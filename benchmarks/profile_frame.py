"""Where a frame of population training spends its time: torch.profiler over the learning frames
of one population (an env step and one update per agent per frame), operators ranked by their own
device time on a GPU, by their own CPU time on the CPU.

    python benchmarks/profile_frame.py --device cuda --agents 1024 --env breakout --arch spatial

On the CPU torch.profiler inflates some operators (it ranked a zero fill at 25% of a frame that
`perf` puts at 3%); --plain trains the same frames without it, for an outside sampler:

    OMP_NUM_THREADS=1 perf record -g -o /tmp/perf.data python benchmarks/profile_frame.py --plain --frames 460
    perf report -i /tmp/perf.data --no-children --sort dso,symbol
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="breakout", choices=list(sd.CHANNELS))
    parser.add_argument("--arch", default="spatial", choices=sd.ARCHS)
    parser.add_argument("--regime", default="learned", choices=sd.REGIMES)
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--frames", type=int, default=100, help="learning frames profiled (at most 460)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--plain", action="store_true", help="no torch.profiler: for perf record")
    args = parser.parse_args()
    sd.check_device(args.device)

    cuda = args.device.startswith("cuda")
    cfg = sd.Config(env=args.env, arch=args.arch, regime=args.regime, learning_starts=40,
                    replay_size=10_000, pan_frames=5_000, frames=40 + args.frames, device=args.device)
    seeds = list(range(args.agents))
    sd.train(cfg, seeds, progress=False)  # warm-up: allocator, kernel builds, first touch
    if args.plain:
        sd.train(cfg, seeds, progress=False)
        return
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda
    prof = profile(activities=activities)
    marks = []

    def mark(_):  # called when the frame loop starts and when its one block ends
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        prof.start() if len(marks) == 1 else prof.stop()  # set-up of many agents is not profiled

    sd.train(cfg, seeds, progress=mark)
    wall = marks[-1] - marks[0]
    table = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=args.rows)
    head = (f"{args.env} {args.arch} {args.regime}, {args.agents} agents on {args.device}: "
            f"{wall / cfg.frames * 1e3:.2f} ms per frame under the profiler, {cfg.frames} frames (40 before learning starts)")
    print(head, table, sep="\n")
    if args.out:
        args.out.write_text(head + "\n" + table)


if __name__ == "__main__":
    main()
