"""The command line: `python sparse_dqn.py train ...` and `python sparse_dqn.py sweep ...`."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

import sparse_dqn as sd
from study.checkpoints import Stopped, stop_on_signal
from study.profiles import PROFILES
from study.store import check_results_dir, load_run, result_path
from study.sweep import sweep


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2: no usage dump, no traceback
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value: {text!r} (use true or false)")


def load_mask_files(paths: Sequence[str | Path]):
    """Run Python files that call register_mask, so that their masks are architectures here."""
    import importlib.util

    for path in paths:
        path = Path(path)
        spec = importlib.util.spec_from_file_location(f"_sparse_dqn_masks_{path.stem}", path)
        if not path.is_file() or spec is None:
            raise ValueError(f"--masks {str(path)!r} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's file: a syntax error, a failed import, anything it raises
            del sys.modules[spec.name]
            where = f" (line {err.lineno})" if isinstance(err, SyntaxError) else ""
            raise ValueError(f"--masks {str(path)!r} failed{where}: {type(err).__name__}: {err}") from None
        try:  # Slurm jobs unpickle the masks on nodes that cannot import this file by name
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)
        except ImportError:
            pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparse_dqn.py", description=sd.__doc__.split("\n\n")[0])
    masks_help = "a Python file that registers masks with register_mask (repeatable)"
    parser.add_argument("--masks", action="append", default=[], metavar="FILE", help=masks_help)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    tr = sub.add_parser("train", help="train a population and write its results",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(sd.Config):
        kind = _bool if f.type in (bool, "bool") else type(f.default)
        extra = {"choices": {"env": list(sd.CHANNELS), "arch": sd.ARCHS + tuple(sd.MASKS), "regime": sd.REGIMES}[f.name]} \
            if f.name in ("env", "arch", "regime") else {}
        tr.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default,
                        help=f.metadata["doc"], **extra)
    tr.add_argument("--seeds", type=int, nargs="+", default=[0], help="agent seeds")
    tr.add_argument("--out", type=Path, default=Path("results"), help="results directory")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    sw = sub.add_parser("sweep", help="train every run a book profile needs, resumably",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sw.add_argument("--profile", required=True, choices=list(PROFILES), help="book profile")
    sw.add_argument("--envs", nargs="+", default=list(sd.CHANNELS), choices=list(sd.CHANNELS))
    sw.add_argument("--out", type=Path, help="results directory (default: results/<profile>)")
    sw.add_argument("--device", default="cpu", help="torch device of every population")
    sw.add_argument("--extra-archs", nargs="+", default=[], choices=list(sd.MASKS), metavar="ARCH",
                    help="registered masks to train in both regimes beside the figures' archs")
    sw.add_argument("--max-agents", type=int, default=64,
                    help="agents per population (one that left a checkpoint resumes as it was formed)")
    sw.add_argument("--executor", choices=["local", "slurm"], default="local")
    sw.add_argument("--dry-run", action="store_true", help="print the plan and its expected time")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, kind, doc in [("partition", str, "Slurm partition"), ("time-min", int, "job time limit, minutes"),
                            ("gpus", int, "GPUs per job"), ("cpus", int, "CPUs per job"),
                            ("mem-gb", int, "memory per job, GB")]:
        sw.add_argument("--slurm-" + name, type=kind, help=doc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    pre = _Parser(prog="sparse_dqn.py", add_help=False)
    pre.add_argument("--masks", action="append", default=[])
    try:
        load_mask_files(pre.parse_known_args(argv)[0].masks)
    except ValueError as err:
        pre.error(str(err))
    parser = build_parser()
    args = parser.parse_args(argv)
    with stop_on_signal() as stop:
        try:
            return _sweep_command(parser, args) if args.command == "sweep" else _train_command(parser, args)
        except Stopped as err:
            print(err, file=sys.stderr)
            return 128 + stop.requested
        except OSError as err:  # the store became unwritable mid-run: its last checkpoint stands
            parser.exit(2, f"{parser.prog}: error: could not write {err.filename or 'the results'} "
                           f"({err.strerror or err}); what was saved before stays, and the same command resumes\n")


def _train_command(parser, args) -> int:
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(sd.Config)}
    try:
        cfg = sd.Config(**fields)
        sd.check_device(cfg.device)
        for seed in args.seeds if cfg.arch in sd.MASKS else ():  # a registered mask, checked before any work
            sd.user_mask(cfg, seed)
        if any(load_run(args.out, cfg, seed) is None for seed in args.seeds):  # else a read-only store serves
            check_results_dir(args.out)
    except ValueError as err:
        parser.error(str(err))
    runs = sd.train(cfg, args.seeds, args.out, progress=not args.no_progress)
    for run in runs:  # a run trained here holds its final weights; one loaded from the store does not
        print(f"{cfg.env} {cfg.arch} {cfg.regime} seed {run.seed}: {len(run.episode_returns)} episodes, "
              f"mean return of the last 100 = {run.final_return():.2f} -> "
              f"{result_path(args.out, cfg, run.seed)} ({'trained' if run.params is not None else 'stored already'})")
    return 0


def _sweep_command(parser, args) -> int:
    out = args.out or Path("results") / args.profile
    try:
        if args.max_agents < 1:
            raise ValueError(f"--max-agents={args.max_agents} is not allowed; expected an integer >= 1")
        sd.check_device(args.device)
        if not args.dry_run:
            check_results_dir(out)
    except ValueError as err:
        parser.error(str(err))
    slurm = {"slurm_partition": args.slurm_partition, "timeout_min": args.slurm_time_min,
             "gpus_per_node": args.slurm_gpus, "cpus_per_task": args.slurm_cpus, "mem_gb": args.slurm_mem_gb}
    sweep(args.profile, args.envs, out, args.max_agents, args.executor, args.dry_run, slurm,
          progress=not args.no_progress, device=args.device, extra_archs=args.extra_archs)
    return 0
