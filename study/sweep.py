"""Sweeps: every run a profile's notebooks need, in populations, on this machine or on Slurm."""
from __future__ import annotations

import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

import sparse_dqn as sd
from study.profiles import profile_runs
from study.store import check_results_dir, checkpointed_populations, load_run, run_id


def plan_populations(runs: Sequence[tuple[sd.Config, int]], max_agents: int) -> list[list[tuple[sd.Config, int]]]:
    """Runs grouped into populations of one game, at most max_agents each, in the order of their
    first runs, each run in the population of its game that was open when it came."""
    populations, open_ = [], {}
    for run in runs:
        env = run[0].env
        if env not in open_ or len(open_[env]) == max_agents:
            open_[env] = []
            populations.append(open_[env])
        open_[env].append(run)
    return populations


def plan_sweep(runs: Sequence[tuple[sd.Config, int]], results_dir: str | Path, max_agents: int):
    """(population, frame it resumes at) for each population of runs: first those that left a
    checkpoint, as they were formed whatever max_agents was then, then the rest by plan_populations."""
    resumed = checkpointed_populations(results_dir, runs)
    held = {run_id(*run) for pop, _ in resumed for run in pop}
    rest = plan_populations([run for run in runs if run_id(*run) not in held], max_agents)
    return resumed + [(pop, 0) for pop in rest]


class SweepJob:
    """One population of a sweep as a callable, for submitit: rerun after preemption or a time
    limit, it resumes from the population's checkpoint."""

    def __init__(self, runs, results_dir, masks=None):
        self.runs, self.results_dir = runs, str(results_dir)
        self.masks = masks if masks is not None else {c.arch: sd.MASKS[c.arch] for c, _ in runs if c.arch in sd.MASKS}

    def __call__(self) -> int:
        # On preemption Slurm sends SIGTERM to every process of the job, the `scontrol requeue`
        # that submitit's USR2 handler is running among them, and a killed scontrol makes the
        # requeue a failure. Ignored here, SIGTERM stays ignored in every child however early it
        # arrives (a disposition survives fork and exec; a wrapper's own `trap` left a window at
        # its start); submitit only logs it anyway.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for name, fn in self.masks.items():  # a fresh Python on the cluster knows only the built-ins
            sd.MASKS.setdefault(name, fn)
        # runs another process holds are left to it; the sweep that submitted this job waits for them
        return sum(run is not None for run in sd.train_runs(self.runs, self.results_dir, progress=False, wait=False))

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SweepJob(self.runs, self.results_dir, self.masks))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} hours"


def measured_rate(population: Sequence[tuple[sd.Config, int]], frames: int = 200) -> float:
    """Agent-steps/s of this population's learning frames, from a short run of its shape: its
    set-up (PAN and replay cut short) and its random play before learning are not timed."""
    short = [(dataclasses.replace(c, frames=2 * frames, learning_starts=frames, log_every=frames,
                                  replay_size=min(c.replay_size, 10_000), pan_frames=min(c.pan_frames, 5_000)), s)
             for c, s in population]
    marks = []  # the loop reports when it starts and after each block: learning is the last block
    sd.train_runs(short, None, progress=lambda _: marks.append(time.perf_counter()))
    return len(short) * frames / (marks[-1] - marks[-2])


def sweep(profile: str, envs: Sequence[str], results_dir: str | Path, max_agents: int = 64,
          executor: str = "local", dry_run: bool = False, slurm: dict | None = None, progress: bool = True,
          device: str = "cpu", extra_archs: Sequence[str] = ()):
    """Train every run of a profile that results_dir lacks (resuming checkpointed populations),
    grouped into populations of at most max_agents; or, with dry_run, print the plan and its
    expected time from a short measured rate. Returns the populations it planned."""
    runs = profile_runs(profile, envs, extra_archs, device=device)
    todo = [r for r in runs if load_run(results_dir, *r) is None]
    planned = plan_sweep(todo, results_dir, max_agents)
    populations = [pop for pop, _ in planned]
    steps = sum(c.frames - start for pop, start in planned for c, _ in pop)
    if dry_run:
        print(f"{profile}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to train in "
              f"{len(populations)} populations ({steps:,} agent-steps)")
        rates, total = {}, 0.0
        for i, (pop, start) in enumerate(planned):
            members = tuple(sorted(f"{c.arch}/{c.regime}" for c, _ in pop))
            shape = (pop[0][0].env, members)
            if shape not in rates:  # populations differ many times over in speed: each shape is timed
                rates[shape] = measured_rate(pop)
            seconds = sum(c.frames - start for c, _ in pop) / rates[shape]
            total += seconds
            resumes = f", resumes at frame {start:,}" if start else ""
            print(f"  population {i}: {pop[0][0].env}, {len(pop)} agents: {', '.join(sorted(set(members)))}{resumes}; "
                  f"measured {rates[shape]:,.0f} agent-steps/s, about {_duration(seconds)}", flush=True)
        if populations:
            print(f"about {_duration(total)} on this machine for one sweep; sweeps sharing the results "
                  "directory split the populations between them")
        return populations
    check_results_dir(results_dir)
    if executor == "slurm":
        return _sweep_slurm(populations, results_dir, slurm or {})
    from tqdm import tqdm

    all_frames = sum(c.frames for c, _ in runs)  # a resumed population reports its checkpoint's frames itself
    bar = tqdm(total=all_frames, initial=all_frames - sum(c.frames for c, _ in todo),
               unit="agent-frame", unit_scale=True, desc=f"sweep {profile}", file=sys.stderr,
               mininterval=5.0, disable=not progress)
    trained = 0  # a run trained here holds its final weights; one loaded from the store does not
    try:
        for pop in populations:  # runs another process holds are left to it for now
            runs_here = sd.train_runs(pop, results_dir, progress=bar.update, wait=False)
            trained += sum(run is not None and run.params is not None for run in runs_here)
        left = [r for r in todo if load_run(results_dir, *r) is None]
        for pop, _ in plan_sweep(left, results_dir, max_agents):  # then waited for: made once, whoever makes them
            trained += sum(run.params is not None for run in sd.train_runs(pop, results_dir, progress=bar.update))
    finally:
        bar.close()
    print(f"sweep {profile}: {trained} of {len(todo)} runs trained here, {len(todo) - trained} by other processes",
          file=sys.stderr)
    return populations


def slurm_executor(results_dir: str | Path, **options):
    """submitit's Slurm executor for this module's jobs (SweepJob): logs and pickles under
    results_dir/.submitit, this module on the jobs' PYTHONPATH; options go to update_parameters."""
    import submitit

    ex = submitit.AutoExecutor(folder=Path(results_dir) / ".submitit", cluster="slurm")
    here = str(Path(__file__).resolve().parent)
    ex.update_parameters(slurm_setup=[f"export PYTHONPATH={here}${{PYTHONPATH:+:$PYTHONPATH}}"], **options)
    return ex


def _sweep_slurm(populations, results_dir, options: dict):
    """One Slurm job per population through submitit; a preempted or timed-out job is requeued
    and resumes from its checkpoint. Waits for every job."""
    ex = slurm_executor(results_dir, **{k: v for k, v in options.items() if v is not None})
    jobs = [ex.submit(SweepJob(pop, str(Path(results_dir).resolve()))) for pop in populations]
    for job in jobs:
        job.result()
    return populations
