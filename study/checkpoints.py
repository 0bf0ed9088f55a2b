"""A population's checkpoint, and stopping a command without losing computed frames."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch


class Stopped(Exception):
    """A population stopped on request (see stop_on_signal) after saving its checkpoint."""


@dataclass
class _StopRequest:
    requested: int = 0  # the signal that asked for a stop, 0 while none has
    armed: bool = False  # a population with a checkpoint file is in its frame loop


_STOP = _StopRequest()


class Checkpoint:
    """One population's checkpoint file, written atomically: sparse_dqn.train_population loads it
    to resume, saves it every checkpoint_every frames, and stops there when stop_on_signal asks.
    With members, a manifest beside it (the same name, .json) names them and the frame saved: the
    file's name hashes its population, so a sweep planned with other population sizes finds it
    only by its manifest."""

    def __init__(self, path: str | Path, members: Sequence[str] = ()):
        self.path = Path(path)
        self.members = list(members)

    @property
    def manifest(self) -> Path:
        return self.path.with_suffix(".json")

    def load(self, device) -> dict | None:
        """The saved state, or None where there is none. What a killed writer of this population
        left half-written goes first."""
        for stale in self.path.parent.glob(f".tmp-{self.path.stem}-*"):
            stale.unlink(missing_ok=True)
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location=device, weights_only=False)
        except Exception as err:  # truncated, corrupt, or not a checkpoint at all: torch raises many kinds
            aside = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, aside)
            warnings.warn(f"checkpoint {self.path} is unreadable ({type(err).__name__}); set aside as "
                          f"{aside.name}, the population starts again from frame 0", stacklevel=2)
            return None

    def save(self, state: dict):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(self.path, lambda tmp: torch.save(state, tmp))
        if self.members:  # after the state: a manifest never names a frame that was not saved
            blob = json.dumps({"members": self.members, "frame": state["frame"]})
            self._write(self.manifest, lambda tmp: Path(tmp).write_text(blob))

    def _write(self, path: Path, write):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{self.path.stem}-", suffix=path.suffix)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def remove(self):
        self.path.unlink(missing_ok=True)
        self.manifest.unlink(missing_ok=True)

    def arm(self):
        """From now on a stop request is answered with a checkpoint (see stop_on_signal)."""
        _STOP.armed = True

    def disarm(self):
        _STOP.armed = False

    @staticmethod
    def stop_requested() -> bool:
        return bool(_STOP.requested)

    def stop(self, frame: int, frames: int):
        raise Stopped(f"stopped at frame {frame:,} of {frames:,}, checkpoint saved in {self.path}; "
                      "the same command resumes from there")


@contextlib.contextmanager
def stop_on_signal():
    """While held (the command line holds it), a first SIGINT or SIGTERM asks the running
    population to save its checkpoint at the end of its block of frames (at most FRAME_BLOCK
    frames away) and raise Stopped, so that stopping a sweep loses no computed frame. A second
    signal, or one while no checkpoint could be saved, takes its usual effect at once."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, _frame):
        if _STOP.requested or not _STOP.armed:
            signal.signal(signum, before[signum])
            signal.raise_signal(signum)
            return
        _STOP.requested = signum
        print(f"\n{signal.Signals(signum).name}: stopping once this block of frames is checkpointed "
              "(send it again to stop at once and lose the frames since the last checkpoint)",
              file=sys.stderr, flush=True)

    for signum in before:
        signal.signal(signum, handler)
    try:
        yield _STOP
    finally:
        for signum, old in before.items():
            signal.signal(signum, old)
        _STOP.requested, _STOP.armed = 0, False
