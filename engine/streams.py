"""Counter-based random streams: draw t of stream s of an agent is a hash of (agent key, s, t),
computed with integer tensor ops, so any frame's draws can be made in bulk, on any device, with no
generator state to carry, checkpoint or share between agents."""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def stream_seed(seed: int, stream: str) -> int:
    """Independent, reproducible integer seed for one named random stream of one agent."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:4], "little")


STREAMS = {"explore": 1, "action": 2, "sticky": 3, "reset": 4, "replay": 5}
_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32), in halves so that no int64 product overflows."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (Wellons' lowbias32): every input bit flips about half the
    output bits."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def agent_keys(seeds: Sequence[int], device="cpu") -> torch.Tensor:
    return torch.tensor([stream_seed(s, "agent") for s in seeds], dtype=torch.long, device=device)


def uniform(keys: torch.Tensor, stream: str, counter: torch.Tensor) -> torch.Tensor:
    """Float64 draws in [0, 1), one per element of counter (any shape broadcasting with keys
    (N,) along dim 0, after keys is viewed as (N, 1, ...)): element-wise functions of the
    agent's key, the stream and the counter."""
    k = keys.view(-1, *([1] * (counter.dim() - 1)))
    h = _mix32(_mix32(k ^ STREAMS[stream]) ^ (counter & _MASK32))
    h = _mix32(h ^ ((counter >> 32) & _MASK32))
    return h.double() * 2.0 ** -32
