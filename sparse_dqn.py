"""Sparse DQN on MinAtar: the core of the companion to Davelouis, Martin & Bowling,
"On the Interplay Between Sparsity and Training in Deep Reinforcement Learning" (arXiv 2501.16729).

Read top to bottom: configuration, connectivity masks (dense, random, spatial, predictive via
Prediction Adapted Neighbourhoods, L1), the sparse Q-network, the replay buffer, population
training (many agents of one game in lockstep, in batched tensors), the result store, and the
command line. `train(config, seeds)` is the one entry point that notebooks, tests, the CLI and
cluster launchers share.

Observations are flattened channel-major: input index d = channel * 100 + row * 10 + col.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
import weakref
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

# torch's OpenMP threads spin while they wait for work. Where another process shares the cores (a
# background sweep beside the book), spinning threads slow each other down many times over:
# measured here, a one-agent learned-L1 run at 18 frames/s instead of 250. Waiting passively
# costs nothing measurable on an idle machine. OpenMP reads this once, when torch loads it, so it
# takes effect where this module is imported before torch; a setting of your own wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _keep_freed_memory():
    """glibc hands freed blocks of over 128 KiB back to the system, so each new tensor of a frame's
    update (megabytes, at 64 agents) page-faults on first touch: measured here with torch.profiler
    (benchmarks/profile_frame.py), zeroing the weight gradient of 64 Breakout agents took 5.0 ms a
    learning frame against 0.5 ms in a loop of its own. Keeping freed blocks for reuse (up to
    glibc's 32 MiB ceiling) took it to 1.9 ms, and changes no result. A
    MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ of your own wins."""
    if sys.platform != "linux" or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


_keep_freed_memory()

GRID = 10
CHANNELS = {"breakout": 4, "space_invaders": 6}
# dense_wide is a control, not one of the paper's architectures: a dense layer as wide as the sparse
# masks (hidden_units units), so it has k / inputs times their weights' density but input_size / k
# times their weights. With frozen hidden weights only the head learns, and the head of `dense`
# sees 108 random features where the sparse masks' see 1,200: dense_wide separates width from
# sparsity.
ARCHS = ("dense", "random", "spatial", "predictive", "l1", "minatar_cnn", "dense_wide")
REGIMES = ("frozen", "learned")
PAN_IDLE = ("move", "spatial", "random")
NUM_ACTIONS = 6
# Bump when a change alters what training computes (tests/test_pinned.py fails until you do):
# the result store keys runs by it, so edits that leave training alone keep every stored run.
ALGORITHM_VERSION = 2
NOT_IN_KEY = ("device", "checkpoint_every")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
def _field(default, doc: str):
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Config:
    env: str = _field("breakout", "MinAtar game: breakout or space_invaders")
    arch: str = _field("spatial", "hidden-layer connectivity: " + ", ".join(ARCHS) + ", or a name given to register_mask")
    regime: str = _field("learned", "hidden weights frozen at initialisation, or learned end to end")
    hidden_units: int = _field(1200, "hidden units of every sparse architecture and of L1's dense layer")
    fan_in: int = _field(0, "inputs per sparse hidden unit (k); 0 means 9 x channels, a 3x3 patch")
    pan_frames: int = _field(50_000, "random-policy frames that train PAN's predictors (not in `frames`)")
    pan_gamma: float = _field(0.99, "discount of PAN's predictors (PAN's own value)")
    pan_lambda: float = _field(0.8, "trace decay of PAN's TD(lambda) (PAN's own value)")
    pan_step_size: float = _field(3e-3, "step size of PAN's TD(lambda); least TD error of 1e-4..1e-2, both games")
    pan_idle: str = _field("move", "units centred on a cumulant that never varied in PAN's data: move (to "
                           "cumulants that vary), spatial (nearest inputs), random (random tie-break)")
    l1_coef: float = _field(1e-5, "L1 penalty on hidden weights, per agent (arch l1, learned)")
    sparsity_threshold: float = _field(1e-3, "|w| below this counts as zero in effective sparsity")
    log_every: int = _field(10_000, "frames between effective-sparsity records")
    frames: int = _field(5_000_000, "environment frames per agent")
    replay_size: int = _field(100_000, "replay capacity, transitions per agent")
    batch_size: int = _field(32, "transitions per update")
    learning_starts: int = _field(5_000, "frames of uniform-random actions before learning")
    eps_start: float = _field(1.0, "exploration epsilon when learning starts")
    eps_end: float = _field(0.1, "final exploration epsilon")
    eps_decay_frames: int = _field(100_000, "frames of linear epsilon decay after learning starts")
    target_update: int = _field(1_000, "updates between target-network copies")
    gamma: float = _field(0.99, "discount of the DQN target")
    lr: float = _field(2.5e-4, "centred RMSprop step size")
    rms_alpha: float = _field(0.95, "centred RMSprop squared-gradient decay")
    rms_eps: float = _field(0.01, "centred RMSprop epsilon")
    sticky_action_prob: float = _field(0.1, "MinAtar sticky-action probability")
    difficulty_ramping: bool = _field(True, "MinAtar difficulty ramping")
    device: str = _field("cpu", "torch device (cpu, cuda, cuda:1, ...); not part of the result key")
    checkpoint_every: int = _field(50_000, "frames between checkpoints of a population that has a "
                                   "results directory; not part of the result key")

    def __post_init__(self):
        def bad(name, allowed):
            raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; expected {allowed}")

        if self.env not in CHANNELS:
            bad("env", "one of " + ", ".join(CHANNELS))
        if self.arch not in ARCHS and self.arch not in MASKS:
            bad("arch", "one of " + ", ".join(ARCHS + tuple(MASKS)) + " (register_mask adds your own)")
        if self.regime not in REGIMES:
            bad("regime", "one of " + ", ".join(REGIMES))
        if self.pan_idle not in PAN_IDLE:
            bad("pan_idle", "one of " + ", ".join(PAN_IDLE))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                bad(f.name, "a finite number")
        for name in ("hidden_units", "frames", "replay_size", "batch_size", "target_update",
                     "log_every", "pan_frames", "checkpoint_every"):
            if getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        for name in ("learning_starts", "eps_decay_frames"):
            if getattr(self, name) < 0:
                bad(name, "an integer >= 0")
        if not 0 <= self.fan_in <= self.input_size:
            bad("fan_in", f"0..{self.input_size} (the input size of {self.env}; 0 = 9 x channels)")
        for name in ("pan_gamma", "pan_lambda", "gamma", "rms_alpha", "eps_start", "eps_end",
                     "sticky_action_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "a number in [0, 1]")
        for name in ("pan_step_size", "lr", "rms_eps"):
            if not getattr(self, name) > 0.0:
                bad(name, "a number > 0")
        for name in ("l1_coef", "sparsity_threshold"):
            if not getattr(self, name) >= 0.0:
                bad(name, "a number >= 0")
        try:
            torch.device(self.device)
        except RuntimeError:
            bad("device", "a torch device such as cpu or cuda")

    @property
    def channels(self) -> int:
        return CHANNELS[self.env]

    @property
    def input_size(self) -> int:
        return self.channels * GRID * GRID

    @property
    def k(self) -> int:
        """Fan-in of the sparse masks (random, spatial, predictive, L1)."""
        return self.fan_in or min(9 * self.channels, self.input_size)

    @property
    def dense_units(self) -> int:
        """Units of the equal-capacity dense layer: as many hidden weights as the sparse masks."""
        return max(1, round(self.hidden_units * self.k / self.input_size))

    @property
    def fully_connected(self) -> bool:
        """Whether every hidden unit sees every input: dense, dense_wide, and L1 as it learns."""
        return self.arch in ("dense", "dense_wide") or (self.arch == "l1" and self.regime == "learned")

    @property
    def layer_shape(self) -> tuple[int, int]:
        """(units, inputs per unit) of the hidden layer as trained."""
        if self.arch == "dense":
            return self.dense_units, self.input_size
        return self.hidden_units, self.input_size if self.fully_connected else self.k

    def key(self) -> str:
        """Result-store key: the experiment's fields and the algorithm version; not the device
        or the checkpoint interval, which do not change what is computed."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_IN_KEY}
        blob = json.dumps(fields, sort_keys=True) + f"/v{ALGORITHM_VERSION}"
        return f"{self.env}_{self.arch}_{self.regime}_" + hashlib.sha256(blob.encode()).hexdigest()[:12]


# Fields that every agent of one population must share: they set the lockstep loop and replay.
SHARED_FIELDS = ("env", "frames", "replay_size", "batch_size", "learning_starts", "eps_start",
                 "eps_end", "eps_decay_frames", "target_update", "gamma", "lr", "rms_alpha",
                 "rms_eps", "sticky_action_prob", "difficulty_ramping", "device", "log_every",
                 "sparsity_threshold", "checkpoint_every")


def _seed(seed: int, stream: str) -> int:
    """Independent, reproducible integer seed for one named random stream of one agent."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:4], "little")


def make_env(cfg: Config, seed: int):
    from minatar import Environment

    env = Environment(cfg.env, sticky_action_prob=cfg.sticky_action_prob,
                      difficulty_ramping=cfg.difficulty_ramping)
    env.seed(seed)
    env.reset()
    return env


def observe(env) -> np.ndarray:
    """The flat channel-major 0/1 observation of a MinAtar env, as bool (input_size,)."""
    return np.ascontiguousarray(env.state().transpose(2, 0, 1)).reshape(-1)


# ----------------------------------------------------------------------------------------------
# Counter-based random streams: draw t of stream s of an agent is a hash of (agent key, s, t),
# computed with integer tensor ops, so any frame's draws can be made in bulk, on any device,
# with no generator state to carry, checkpoint or share between agents.
# ----------------------------------------------------------------------------------------------
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
    return torch.tensor([_seed(s, "agent") for s in seeds], dtype=torch.long, device=device)


def uniform(keys: torch.Tensor, stream: str, counter: torch.Tensor) -> torch.Tensor:
    """Float64 draws in [0, 1), one per element of counter (any shape broadcasting with keys
    (N,) along dim 0, after keys is viewed as (N, 1, ...)): element-wise functions of the
    agent's key, the stream and the counter."""
    k = keys.view(-1, *([1] * (counter.dim() - 1)))
    h = _mix32(_mix32(k ^ STREAMS[stream]) ^ (counter & _MASK32))
    h = _mix32(h ^ ((counter >> 32) & _MASK32))
    return h.double() * 2.0 ** -32


# ----------------------------------------------------------------------------------------------
# MinAtar as batched torch state: N games of one kind step together on the config's device.
# Every rule of minatar 1.0.15 (the reference; tests compare frame by frame), including sticky
# actions (one draw per act) and the last action kept across episodes. Draws come in as tensors,
# so a test can feed the very numbers that minatar's own RandomState produces.
# ----------------------------------------------------------------------------------------------
def native_kernels(device: torch.device, native: bool | None):
    """The C++ kernels for a game or replay on `device`: used where native is True, or None (the
    default) on a CPU where they are built; None where native is False."""
    kernels = _kernels() if device.type == "cpu" else None
    if native and kernels is None:
        raise ValueError("native=True needs the C++ kernels and a CPU device")
    return kernels if native or native is None else None


def game_kernels(device: torch.device, native: bool | None):
    """The kernels that step and observe a game on `device`, by default (native None) the C++ ones
    on a CPU where they are built and the Triton ones (sparse_triton, which also reset it) where
    Triton runs: one call where torch ops make about a hundred (Space Invaders' step). native True:
    the C++ ones or an error; False: None, torch ops."""
    if native is False:
        return None
    kernels = native_kernels(device, native)
    return kernels if kernels is not None else _triton_for(torch.empty(0, device=device))


class BatchedGame:
    """native: step and observe in compiled kernels (see game_kernels), or (False) in torch ops.
    All run the same rules on the same state tensors."""

    def __init__(self, n: int, sticky_action_prob: float, device, native: bool | None = None):
        self.n, self.sticky, self.device = n, sticky_action_prob, torch.device(device)
        self.rows = torch.arange(n, device=self.device)
        self.last_action = torch.zeros(n, dtype=torch.long, device=self.device)
        self._kernels = game_kernels(self.device, native)
        self._reset_kernel = getattr(self._kernels, self.reset_kernel_name, None)  # Triton's have one
        # The training loop resets the agents whose episode ended every frame, without asking
        # whether any did, on a GPU (the question waits for the device) and where the kernels
        # reset (one launch); on the CPU a check is cheaper than a reset.
        self.resets_unasked = self.device.type != "cpu" or self._reset_kernel is not None

    def act(self, actions: torch.Tensor, sticky_draw: torch.Tensor):
        """minatar.Environment.act for every agent: a draw below the sticky probability repeats
        the last action. Returns (rewards, terminals) as float tensors (N,)."""
        actions = torch.where(sticky_draw < self.sticky, self.last_action, actions)
        self.last_action = actions
        return self.step(actions)

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in vars(self).items() if isinstance(v, torch.Tensor)}

    def load_state_dict(self, state: dict):
        for k, v in state.items():
            setattr(self, k, v.to(self.device))

    def _at(self, grid: torch.Tensor, row, col) -> torch.Tensor:
        """grid[n, row[n], col[n]] for every agent n (row, col may be ints or (N,) tensors)."""
        return grid[self.rows, row, col]


# Ball directions 0..3: up-left, up-right, down-right, down-left; and how each bounce maps them.
_BALL_DX, _BALL_DY = (-1, 1, 1, -1), (-1, -1, 1, 1)
_FLIP_X, _FLIP_Y, _FLIP_XY = (1, 0, 3, 2), (3, 2, 1, 0), (2, 3, 0, 1)


class BatchedBreakout(BatchedGame):
    channels = 4
    reset_kernel_name = "breakout_reset"

    def __init__(self, n: int, sticky_action_prob: float = 0.1, ramping: bool = True, device="cpu",
                 native: bool | None = None):
        super().__init__(n, sticky_action_prob, device, native)
        z = torch.zeros(n, dtype=torch.long, device=self.device)
        self.ball_x, self.ball_y, self.ball_dir, self.pos = z.clone(), z.clone(), z.clone(), z.clone()
        self.last_x, self.last_y = z.clone(), z.clone()
        self.strike = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.bricks = torch.zeros(n, GRID, GRID, dtype=torch.bool, device=self.device)
        lut = functools.partial(torch.tensor, device=self.device)
        self._dx, self._dy = lut(_BALL_DX), lut(_BALL_DY)
        self._flip_x, self._flip_y, self._flip_xy = lut(_FLIP_X), lut(_FLIP_Y), lut(_FLIP_XY)

    def reset(self, which: torch.Tensor, draw: torch.Tensor):
        """Reset the agents where `which`; a draw below 0.5 starts the ball at the left, as
        minatar's randint(2) == 0 does."""
        if self._reset_kernel is not None:
            return self._reset_kernel(self.ball_x, self.ball_y, self.ball_dir, self.pos, self.last_x, self.last_y,
                                      self.strike, self.bricks, which, draw)
        right = draw >= 0.5
        self.ball_x = torch.where(which, torch.where(right, 9, 0), self.ball_x)
        self.ball_dir = torch.where(which, torch.where(right, 3, 2), self.ball_dir)
        self.ball_y = torch.where(which, 3, self.ball_y)
        self.pos = torch.where(which, 4, self.pos)
        self.last_x = torch.where(which, self.ball_x, self.last_x)
        self.last_y = torch.where(which, self.ball_y, self.last_y)
        self.strike = self.strike & ~which
        fresh = torch.zeros_like(self.bricks[0])
        fresh[1:4] = True
        self.bricks = torch.where(which.view(-1, 1, 1), fresh, self.bricks)

    def step(self, actions: torch.Tensor):
        if self._kernels is not None:
            return self._kernels.breakout_step(self.ball_x, self.ball_y, self.ball_dir, self.pos, self.last_x,
                                              self.last_y, self.strike, self.bricks, actions.contiguous())
        self.pos = torch.where(actions == 1, (self.pos - 1).clamp_min(0),
                               torch.where(actions == 3, (self.pos + 1).clamp_max(9), self.pos))
        self.last_x, self.last_y = self.ball_x, self.ball_y
        d = self.ball_dir
        new_x, new_y = self.ball_x + self._dx[d], self.ball_y + self._dy[d]
        side = (new_x < 0) | (new_x > 9)
        new_x = new_x.clamp(0, 9)
        d = torch.where(side, self._flip_x[d], d)
        top = new_y < 0
        new_y = new_y.clamp_min(0)
        d = torch.where(top, self._flip_y[d], d)
        hit_y = new_y.clamp_max(9)
        cell = self._at(self.bricks, hit_y, new_x)
        brick = ~top & cell
        score = brick & ~self.strike
        # every agent rewrites its own cell, cleared where it scored: no boolean indexing, whose
        # data-dependent shape makes the GPU wait for the host
        self.bricks[self.rows, hit_y, new_x] = cell & ~score
        new_y = torch.where(score, self.last_y, new_y)
        d = torch.where(score, self._flip_y[d], d)
        bottom = ~top & ~brick & (new_y == 9)
        refill = bottom & ~self.bricks.flatten(1).any(1)
        self.bricks[:, 1:4] |= refill.view(-1, 1, 1)
        under = bottom & (self.ball_x == self.pos)
        corner = bottom & ~under & (new_x == self.pos)
        d = torch.where(under, self._flip_y[d], torch.where(corner, self._flip_xy[d], d))
        new_y = torch.where(under | corner, self.last_y, new_y)
        self.strike = (self.strike | score) & brick
        self.ball_x, self.ball_y, self.ball_dir = new_x, new_y, d
        return score.float(), (bottom & ~under & ~corner).float()

    def observe(self) -> torch.Tensor:
        """(N, 400) 0/1 uint8, channel-major: paddle, ball, trail, brick."""
        if self._kernels is not None:
            return self._kernels.breakout_observe(self.ball_x, self.ball_y, self.pos, self.last_x, self.last_y,
                                                 self.bricks)
        obs = torch.zeros(self.n, self.channels, GRID, GRID, dtype=torch.uint8, device=self.device)
        obs[:, 3] = self.bricks
        cells = torch.stack([9 * GRID + self.pos, (GRID + self.ball_y) * GRID + self.ball_x,
                             (2 * GRID + self.last_y) * GRID + self.last_x], 1)
        return _set_cells(obs.view(self.n, -1), cells)


SHOT_COOL_DOWN, ENEMY_MOVE_INTERVAL, ENEMY_SHOT_INTERVAL = 5, 12, 10


class BatchedSpaceInvaders(BatchedGame):
    channels = 6
    reset_kernel_name = "space_invaders_reset"

    def __init__(self, n: int, sticky_action_prob: float = 0.1, ramping: bool = True, device="cpu",
                 native: bool | None = None):
        super().__init__(n, sticky_action_prob, device, native)
        self.ramping = ramping
        z = torch.zeros(n, dtype=torch.long, device=self.device)
        self.pos, self.alien_dir, self.move_interval = z.clone(), z.clone(), z.clone()
        self.move_timer, self.alien_shot_timer, self.shot_timer, self.ramp_index = (z.clone() for _ in range(4))
        grid = torch.zeros(n, GRID, GRID, dtype=torch.bool, device=self.device)
        self.aliens, self.f_bullets, self.e_bullets = grid.clone(), grid.clone(), grid.clone()
        self._cols = torch.arange(GRID, device=self.device)

    def _fresh_aliens(self) -> torch.Tensor:
        fresh = torch.zeros_like(self.aliens[0])
        fresh[0:4, 2:8] = True
        return fresh

    def reset(self, which: torch.Tensor, draw: torch.Tensor | None = None):
        """Reset the agents where `which` (Space Invaders draws nothing at reset)."""
        if self._reset_kernel is not None:
            return self._reset_kernel(
                self.pos, self.alien_dir, self.move_interval, self.move_timer, self.alien_shot_timer,
                self.shot_timer, self.ramp_index, self.aliens, self.f_bullets, self.e_bullets, which)
        w3 = which.view(-1, 1, 1)
        self.pos = torch.where(which, 5, self.pos)
        self.f_bullets = self.f_bullets & ~w3
        self.e_bullets = self.e_bullets & ~w3
        self.aliens = torch.where(w3, self._fresh_aliens(), self.aliens)
        self.alien_dir = torch.where(which, -1, self.alien_dir)
        self.move_interval = torch.where(which, ENEMY_MOVE_INTERVAL, self.move_interval)
        self.move_timer = torch.where(which, ENEMY_MOVE_INTERVAL, self.move_timer)
        self.alien_shot_timer = torch.where(which, ENEMY_SHOT_INTERVAL, self.alien_shot_timer)
        self.ramp_index = torch.where(which, 0, self.ramp_index)
        self.shot_timer = torch.where(which, 0, self.shot_timer)

    def step(self, actions: torch.Tensor):
        if self._kernels is not None:
            return self._kernels.space_invaders_step(
                self.pos, self.alien_dir, self.move_interval, self.move_timer, self.alien_shot_timer,
                self.shot_timer, self.ramp_index, self.aliens, self.f_bullets, self.e_bullets,
                actions.contiguous(), self.ramping)
        fire = (actions == 5) & (self.shot_timer == 0)
        self.f_bullets[self.rows, 9, self.pos] |= fire  # no boolean indexing: see Breakout's bricks
        self.shot_timer = torch.where(fire, SHOT_COOL_DOWN, self.shot_timer)
        self.pos = torch.where(~fire & (actions == 1), (self.pos - 1).clamp_min(0),
                               torch.where(~fire & (actions == 3), (self.pos + 1).clamp_max(9), self.pos))
        self.f_bullets = self.f_bullets.roll(-1, 1)
        self.f_bullets[:, 9] = False
        self.e_bullets = self.e_bullets.roll(1, 1)
        self.e_bullets[:, 0] = False
        terminal = self._at(self.e_bullets, 9, self.pos) | self._at(self.aliens, 9, self.pos)

        move = self.move_timer == 0
        self.move_timer = torch.where(
            move, torch.minimum(self.aliens.flatten(1).sum(1), self.move_interval), self.move_timer)
        turn = move & ((self.aliens[:, :, 0].any(1) & (self.alien_dir < 0))
                       | (self.aliens[:, :, 9].any(1) & (self.alien_dir > 0)))
        terminal |= turn & self.aliens[:, 9].any(1)
        self.alien_dir = torch.where(turn, -self.alien_dir, self.alien_dir)
        sideways = torch.where((self.alien_dir > 0).view(-1, 1, 1), self.aliens.roll(1, 2), self.aliens.roll(-1, 2))
        self.aliens = torch.where(turn.view(-1, 1, 1), self.aliens.roll(1, 1),
                                  torch.where(move.view(-1, 1, 1), sideways, self.aliens))
        terminal |= move & self._at(self.aliens, 9, self.pos)

        shoot = self.alien_shot_timer == 0
        self.alien_shot_timer = torch.where(shoot, ENEMY_SHOT_INTERVAL, self.alien_shot_timer)
        # the nearest column holding an alien (ties to the left), and its lowest alien
        occupied = self.aliens.any(1)
        rank = (self._cols - self.pos.view(-1, 1)).abs() * GRID + self._cols
        col = torch.where(occupied, rank, 10 * GRID * GRID).argmin(1)
        in_col = self.aliens[self.rows, :, col]
        row = torch.where(in_col, self._cols, -1).amax(1) % GRID  # no alien in the column: row 9
        self.e_bullets[self.rows, row, col] |= shoot

        kills = self.aliens & self.f_bullets
        reward = kills.flatten(1).sum(1).float()
        self.aliens &= ~kills
        self.f_bullets &= ~kills
        self.shot_timer -= (self.shot_timer > 0).long()
        self.move_timer -= 1
        self.alien_shot_timer -= 1
        cleared = ~self.aliens.flatten(1).any(1)
        ramp = cleared & (self.move_interval > 6) & self.ramping
        self.move_interval -= ramp.long()
        self.ramp_index += ramp.long()
        self.aliens = torch.where(cleared.view(-1, 1, 1), self._fresh_aliens(), self.aliens)
        return reward, terminal.float()

    def observe(self) -> torch.Tensor:
        """(N, 600) 0/1 uint8, channel-major: cannon, alien, alien_left, alien_right,
        friendly_bullet, enemy_bullet."""
        if self._kernels is not None:
            return self._kernels.space_invaders_observe(self.pos, self.alien_dir, self.aliens, self.f_bullets,
                                                       self.e_bullets)
        obs = torch.zeros(self.n, self.channels, GRID, GRID, dtype=torch.uint8, device=self.device)
        left = (self.alien_dir < 0).view(-1, 1, 1)
        obs[:, 1] = self.aliens
        obs[:, 2] = self.aliens & left
        obs[:, 3] = self.aliens & ~left
        obs[:, 4] = self.f_bullets
        obs[:, 5] = self.e_bullets
        return _set_cells(obs.view(self.n, -1), (9 * GRID + self.pos).unsqueeze(1))


def _set_cells(obs: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """obs (N, inputs) with obs[n, cells[n, j]] = 1. A scatter of a number, not obs[rows, ...] = 1:
    on a GPU that assignment copies its 1 from host memory, and the copy waits for all the work
    queued before it (torch.profiler, 1,024 Breakout agents on an H200: 0.26 ms of host time per
    assignment, six a frame)."""
    return obs.scatter_(1, cells, 1)


GAMES = {"breakout": BatchedBreakout, "space_invaders": BatchedSpaceInvaders}


def make_games(cfg: Config, n: int) -> BatchedGame:
    return GAMES[cfg.env](n, cfg.sticky_action_prob, cfg.difficulty_ramping, cfg.device)


# ----------------------------------------------------------------------------------------------
# Connectivity masks: each returns a (units, k) long tensor of input indices, distinct per row.
# Unit u is centred on input u % input_size, so every input centres the same number of units.
# ----------------------------------------------------------------------------------------------
def input_coords(env: str) -> torch.Tensor:
    """(input_size, 3) tensor of (channel, row, col) for each flat input index."""
    c, r, q = torch.meshgrid(torch.arange(CHANNELS[env]), torch.arange(GRID), torch.arange(GRID),
                             indexing="ij")
    return torch.stack([c.reshape(-1), r.reshape(-1), q.reshape(-1)], 1)


def unit_centres(cfg: Config) -> torch.Tensor:
    return torch.arange(cfg.hidden_units) % cfg.input_size


def dense_mask(cfg: Config) -> torch.Tensor:
    """Every unit of a fully connected layer (dense, dense_wide, learned L1) sees every input."""
    return torch.arange(cfg.input_size).expand(cfg.layer_shape[0], -1).clone()


def spatial_mask(cfg: Config) -> torch.Tensor:
    """The k inputs nearest each centre on the grid (Euclidean on row, col; all channels of a
    location are equally near); ties go to the lower flat index, so the mask is deterministic."""
    return _nearest_first(cfg.env)[:, : cfg.k][unit_centres(cfg)]


def random_mask(cfg: Config, seed: int) -> torch.Tensor:
    """k inputs drawn uniformly without replacement, independently for each neighbourhood."""
    g = torch.Generator().manual_seed(_seed(seed, "random-mask"))
    keys = torch.rand(cfg.input_size, cfg.input_size, generator=g)
    return torch.argsort(keys, dim=1)[:, : cfg.k][unit_centres(cfg)]


def _largest_first(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k largest of each row's magnitudes (>= 0 or NaN), largest first, ties in
    ascending position: argsort(descending=True, stable=True)[:, :k], in a third of its time (a
    nonnegative float's bits order as integers do, so value and position make one integer key)."""
    if magnitudes.dtype != torch.float32:
        return torch.argsort(magnitudes, dim=1, descending=True, stable=True)[:, :k]
    d = magnitudes.shape[1]
    key = (magnitudes.contiguous().view(torch.int32).long() << 32) + (d - 1 - torch.arange(d))
    return key.topk(k, dim=1).indices


def top_k_by_magnitude(weights: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices of the k largest |w| in each row. Exact ties (inputs never seen, weights still 0)
    are broken uniformly at random, so no corner of the grid is favoured."""
    g = torch.Generator().manual_seed(_seed(seed, "tie-break"))
    perm = torch.argsort(torch.rand(weights.shape, generator=g), dim=1)
    return perm.gather(1, _largest_first(weights.abs().gather(1, perm), k))


def pan_weights(transitions: Iterable[tuple[np.ndarray, np.ndarray, bool]], input_size: int,
                gamma: float, lam: float, step_size: float, log_every: int = 1_000):
    """Prediction Adapted Neighbourhoods' predictors: one linear GVF per cumulant input c, predicting
    the discounted future of o[c] from the whole observation (no bias), all learned together by
    TD(lambda) with accumulating traces. Because every GVF shares features, gamma and lambda, one
    trace vector serves them all and an update is one outer product.

    transitions yields (o, o_next, terminal); at a terminal step the predictors do not bootstrap and
    the trace restarts. Returns the (cumulant, input) weight matrix and the mean squared TD error
    per `log_every` steps as [(step, mse), ...]."""
    w = np.zeros((input_size, input_size), np.float64)
    z = np.zeros(input_size, np.float64)
    log, err_sum = [], 0.0
    for t, (o, o_next, terminal) in enumerate(transitions, 1):
        o = o.astype(np.float64)
        o_next = o_next.astype(np.float64)
        bootstrap = 0.0 if terminal else gamma * (w @ o_next)
        delta = o_next + bootstrap - w @ o
        z = gamma * lam * z + o
        # Inputs not yet seen this episode have zero trace: their columns would gain exactly
        # +-0, which leaves w as it is (w never holds -0), so only the others are updated.
        seen = np.flatnonzero(z)
        w[:, seen] += step_size * np.outer(delta, z[seen])
        err_sum += float(delta @ delta) / input_size
        if terminal:
            z[:] = 0.0
        if t % log_every == 0:
            log.append((t, err_sum / log_every))
            err_sum = 0.0
    return torch.from_numpy(w).float(), log


def random_policy_transitions(cfg: Config, seed: int, frames: int) -> Iterator:
    env = make_env(cfg, _seed(seed, "pan-env"))
    rng = np.random.default_rng(_seed(seed, "pan-policy"))
    o = observe(env)
    for _ in range(frames):
        _, terminal = env.act(int(rng.integers(NUM_ACTIONS)))
        o_next = observe(env)
        yield o, o_next, terminal
        if terminal:
            env.reset()
            o_next = observe(env)
        o = o_next


@functools.lru_cache(maxsize=64)
def _pan(env: str, seed: int, frames: int, gamma: float, lam: float, step: float,
         sticky: float, ramping: bool):
    """PAN's predictors, their TD-error curve, and how often each input was on in their data."""
    cfg = Config(env=env, sticky_action_prob=sticky, difficulty_ramping=ramping)
    on = np.zeros(cfg.input_size)

    def counted():
        for o, o_next, terminal in random_policy_transitions(cfg, seed, frames):
            on[:] += o
            yield o, o_next, terminal

    w, log = pan_weights(counted(), cfg.input_size, gamma, lam, step)
    return w, log, torch.from_numpy(on / frames)


def _pan_of(cfg: Config, seed: int):
    return _pan(cfg.env, seed, cfg.pan_frames, cfg.pan_gamma, cfg.pan_lambda, cfg.pan_step_size,
                cfg.sticky_action_prob, cfg.difficulty_ramping)


@functools.lru_cache(maxsize=None)
def _nearest_first(env: str) -> torch.Tensor:
    """(inputs, inputs): for each centre, every input ordered by grid distance (spatial's order).
    One copy per game, shared by every caller (none writes to it): a population of 64 spatial
    agents sorted it 64 times, a quarter of a short run's set-up."""
    rc = input_coords(env)[:, 1:].float()
    return torch.argsort(torch.cdist(rc, rc), dim=1, stable=True)


def predictive_centres(cfg: Config, seed: int) -> torch.Tensor:
    """The cumulant each predictive unit is centred on. With pan_idle='move', units whose input
    never varied in PAN's data (always off, or always on: nothing to predict) are dealt in turn
    to the inputs that did vary, so every unit has a predictor with evidence and every
    architecture keeps its unit and weight counts; otherwise, unit_centres."""
    centres = unit_centres(cfg)
    if cfg.pan_idle != "move":
        return centres
    on_rate = _pan_of(cfg, seed)[2]
    varies = torch.nonzero((on_rate > 0) & (on_rate < 1)).flatten()
    return varies[torch.arange(cfg.hidden_units) % len(varies)] if len(varies) else centres


def mask_centres(cfg: Config, seed: int) -> torch.Tensor:
    """The input each hidden unit of this architecture is centred on."""
    return predictive_centres(cfg, seed) if cfg.arch == "predictive" else unit_centres(cfg)


def unit_nearest(cfg: Config, seed: int, centre: int) -> tuple[int, int]:
    """(unit, its centre): the first hidden unit centred on input `centre` or, where none is (a
    predictive centre that never varied in PAN's data), on the nearest input that has one,
    preferring the same channel."""
    centres = mask_centres(cfg, seed)
    coords = input_coords(cfg.env).float()
    gap = (coords[centres] - coords[centre]).abs() * torch.tensor([GRID * GRID, 1.0, 1.0])
    unit = int(torch.argmin(gap.sum(1)))  # the first of the nearest
    return unit, int(centres[unit])


def predictive_mask(cfg: Config, seed: int) -> tuple[torch.Tensor, list]:
    """PAN neighbourhoods: for each centre c, the k inputs with the largest |w| in c's predictor,
    trained on `pan_frames` frames of a uniformly random policy, then fixed. Inputs with equal |w|
    (most often zero: no evidence) are taken nearest the centre first, or at random with
    pan_idle='random'. Returns the mask and the predictors' TD-error curve."""
    w, log, _ = _pan_of(cfg, seed)
    if cfg.pan_idle == "random":
        return top_k_by_magnitude(w, cfg.k, seed)[unit_centres(cfg)], log
    near = _nearest_first(cfg.env)
    return near.gather(1, _largest_first(w.abs().gather(1, near), cfg.k))[predictive_centres(cfg, seed)], log


def pan_report(cfg: Config, seed: int) -> dict:
    """How predictive a predictive mask is: cumulants that never varied in PAN's data, the share
    of mask inputs chosen with no evidence (|w| = 0), the mean grid distance of a unit's inputs
    to its centre, and the predictors' final TD error."""
    w, log, on_rate = _pan_of(cfg, seed)
    mask, _ = predictive_mask(cfg, seed)
    centres = predictive_centres(cfg, seed)
    rc = input_coords(cfg.env)[:, 1:].float()
    return {"env": cfg.env, "pan_idle": cfg.pan_idle, "never varied": int(((on_rate == 0) | (on_rate == 1)).sum()),
            "never on": int((on_rate == 0).sum()),
            "zero-evidence inputs": float((w[centres.unsqueeze(1), mask] == 0).float().mean()),
            "mean distance": float((rc[mask] - rc[centres].unsqueeze(1)).norm(dim=2).mean()),
            "final TD error": log[-1][1] if log else float("nan")}


def l1_mask(hidden_weights: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The L1 mask: the k largest |w| of each unit of a trained dense L1 layer (units, inputs)."""
    return top_k_by_magnitude(hidden_weights, k, seed)


MASKS: dict[str, Callable[[Config, int], torch.Tensor]] = {}
"""Masks registered by users: name -> function of (Config, seed) returning a (hidden_units, k) tensor of input indices."""
_MASK_DIGESTS: dict = {}


def register_mask(name: str, fn: Callable[[Config, int], torch.Tensor] | None = None):
    """Make your own connectivity an architecture: `fn(cfg, seed)` returns, for each of the
    cfg.hidden_units units, its cfg.k input indices (unit u is centred on input u mod input size,
    as spatial's units are). Then `Config(arch=name)` trains it in either regime, and the CLI
    (`--masks FILE`), the sweep and the notebooks take the name. Stored runs are keyed by the
    mask's contents, so a changed mask never reuses old runs. Usable as a decorator."""
    if fn is None:
        return lambda f: register_mask(name, f)
    if name in ARCHS or not isinstance(name, str) or not name.isidentifier() or not name.islower():
        raise ValueError(f"mask name {name!r} is not allowed; expected a new lower-case identifier, "
                         f"not one of {', '.join(ARCHS)}")
    MASKS[name] = fn
    _MASK_DIGESTS.clear()
    return fn


def user_mask(cfg: Config, seed: int) -> torch.Tensor:
    """A registered mask, checked: (hidden_units, k) integer indices into the input, none repeated
    within a unit, so that it has exactly the capacity of the built-in sparse masks."""
    mask = torch.as_tensor(MASKS[cfg.arch](cfg, seed))
    shape = (cfg.hidden_units, cfg.k)
    if (tuple(mask.shape) != shape or mask.dtype.is_floating_point or mask.dtype == torch.bool
            or int(mask.min()) < 0 or int(mask.max()) >= cfg.input_size):
        raise ValueError(f"mask {cfg.arch!r} returned a {mask.dtype} tensor of shape {tuple(mask.shape)}; "
                         f"expected integer indices in 0..{cfg.input_size - 1} of shape {shape}")
    if (mask.sort(dim=1).values.diff(dim=1) == 0).any():
        raise ValueError(f"mask {cfg.arch!r} repeats an input within a unit; expected {cfg.k} distinct inputs per unit")
    return mask.long()


def run_name(cfg: Config, seed: int) -> str:
    """A run's name in the store: its seed and, for a registered mask, a digest of its contents."""
    if cfg.arch not in MASKS:
        return f"seed_{seed}"
    key = (cfg, seed)
    if key not in _MASK_DIGESTS:
        _MASK_DIGESTS[key] = hashlib.sha256(user_mask(cfg, seed).numpy().tobytes()).hexdigest()[:10]
    return f"seed_{seed}_mask{_MASK_DIGESTS[key]}"


# ----------------------------------------------------------------------------------------------
# The sparse Q-network, batched over a population: leading dimension N is the agent.
# ----------------------------------------------------------------------------------------------
# How sparse_kernels.cpp is compiled. -fopenmp: ATen's parallel_for splits work over threads only
# where OpenMP is on. -fno-math-errno: lets the compiler vectorise sqrt. -march=native: the widest
# vectors this processor has.
KERNEL_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-march=native"]


@functools.lru_cache(maxsize=None)
def _kernels():
    """The C++ CPU kernels (sparse_kernels.cpp), compiled on first use and cached by torch; None,
    with one warning, where they cannot be built. SPARSE_DQN_KERNELS=torch skips them."""
    if os.environ.get("SPARSE_DQN_KERNELS", "cpp") == "torch":
        return None
    try:
        import ninja  # the build tool, from requirements.txt; torch looks for it on PATH
        from torch.utils.cpp_extension import load

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        source = Path(__file__).with_name("sparse_kernels.cpp")
        # The build is named after the processor's features, the source and where it lies, so
        # machines that share a home directory (a cluster's nodes) each build their own, two
        # checkouts of different versions never load each other's kernels, and two copies of one
        # version (benchmarks/compare.py loads one from a temporary folder) do not rebuild each
        # other's: torch rebuilds a named extension whose source path changed.
        digest = hashlib.sha256(source.read_bytes() + str(source.resolve()).encode()).hexdigest()[:10]
        return load(f"sparse_dqn_kernels_{_cpu_id()}_{digest}", [str(source)], extra_cflags=KERNEL_FLAGS,
                    extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # no compiler, no headers, a failed build: the torch path still works
        warnings.warn(f"C++ kernels unavailable, using the pure-torch path ({type(err).__name__}: "
                      f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''})", stacklevel=2)
        return None


def _cpu_id() -> str:
    """A short hash of this processor's model and instruction-set flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        info = platform.processor() + platform.machine()
    lines = sorted({line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))})
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:10]


@functools.lru_cache(maxsize=None)
def _cpu_name() -> str:
    """This processor's model, family and model number and _cpu_id (its flags): MKL's larger
    matmuls (dense, L1 and CNN layers) round differently from one processor type to another."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return f"unknown ({_cpu_id()})"
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return (f"{fields.get('model name', 'unknown')}, family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')} ({_cpu_id()})")


def kernel_backend() -> str:
    """'cpp' where the CPU kernels are built and used, else 'torch'."""
    return "cpp" if _kernels() is not None else "torch"


@dataclass(frozen=True)
class SparsePlan:
    """A population's masks laid out for the kernels: built once, reused by every forward."""
    flat: torch.Tensor | None  # (N * units, k): rows of the (N * inputs, batch) input table
    pattern: torch.Tensor | None  # sparse CSR (N * units, N * inputs): where the weight gradient lives
    inputs: int
    inverse: tuple | None = None  # for the C++ kernels: the masks read by input (one set if alike)
    by_unit: tuple | None = None  # for the C++ forward: each unit's inputs sorted, their weights, its group
    grouped_order: torch.Tensor | None = None  # for the C++ forward: see _grouped_weights
    index: torch.Tensor | None = None  # (N, units, k), for the masked-dense layout alone
    gather_index: torch.Tensor | None = None  # index as int32, (1, units, k) if all alike: for Triton
    cache: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)  # see _per_weight


def _alike(index: torch.Tensor) -> torch.Tensor:
    """index (N, units, k), or its first agent's alone (1, units, k) where all agents' masks are
    alike (spatial masks are the same for every seed): the kernels then read one copy of the
    tables made from it, which stays in cache, instead of one per agent."""
    return index[:1] if len(index) > 1 and bool((index == index[:1]).all()) else index


def _inverse(index: torch.Tensor, inputs: int) -> tuple:
    """(ptr (N, inputs + 1), flat (N, units * k)) as int32: the entries of input i of agent n are
    flat[n, ptr[n, i]:ptr[n, i + 1]], places in its (units * k) weights (the unit: place // k)."""
    n, u, k = index.shape
    by_input = torch.argsort(index.reshape(n, u * k), dim=1, stable=True)
    counts = torch.zeros(n, inputs, dtype=torch.long).scatter_add_(1, index.reshape(n, u * k),
                                                                   torch.ones(n, u * k, dtype=torch.long))
    ptr = F.pad(counts.cumsum(1), (1, 0))
    return tuple(t.to(torch.int32).contiguous() for t in (ptr, by_input))


# sparse_kernels.cpp's kChunk: units of a group summed together, each input column loaded once.
_UNIT_CHUNK = 6


def _by_unit(index: torch.Tensor) -> tuple:
    """(inputs (N, units * k), flat (N, units * k), members (N, units), group_start (N, units + 1),
    groups (N,)) as int32. The units grouped by the inputs they read: group g of agent n is
    members[n, group_start[n, g]:group_start[n, g + 1]], for g below groups[n]. Row i of inputs
    and flat (k entries) are unit members[n, i]'s inputs in ascending order (ties in mask order)
    and the positions of their weights in the agent's (units * k) row."""
    n, u, k = index.shape
    inputs, order = torch.sort(index, dim=2, stable=True)
    flat = order + torch.arange(u).view(1, u, 1) * k
    agent = torch.arange(n).view(n, 1, 1).expand(n, u, 1)
    group = _equal_rows(torch.cat([agent, inputs], 2).reshape(n * u, k + 1)).view(n, u)
    if len(torch.unique(group)) * _UNIT_CHUNK > n * u:
        # Groups shorter than a chunk on average gain little from sharing loads, and visiting them
        # group by group scatters the reads of their rows: they are left one unit each, in order.
        group = torch.arange(u).expand(n, u)
    members = torch.argsort(group, dim=1, stable=True)
    grouped = group.gather(1, members)
    first = torch.ones(n, u, dtype=torch.bool)
    first[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    starts = torch.where(first, torch.arange(u), u).sort(dim=1).values
    group_start = torch.cat([starts, torch.full((n, 1), u)], 1)
    rows = members.unsqueeze(2).expand(n, u, k)
    return tuple(t.to(torch.int32).contiguous() for t in (inputs.gather(1, rows).reshape(n, u * k),
                                                          flat.gather(1, rows).reshape(n, u * k),
                                                          members, group_start, first.sum(1)))


def _equal_rows(rows: torch.Tensor) -> torch.Tensor:
    """A label per row of rows (R, C) int64, equal for equal rows, numbered in the order of their
    first rows. Rows are compared by a hash first, which takes a fifth of torch.unique(dim=0)'s
    time for 64 predictive masks, then checked against their first row of that hash."""
    r, c = rows.shape
    mix = torch.randint(1, 2**62, (c,), generator=torch.Generator().manual_seed(0)) | 1
    labels, which = torch.unique((rows * mix).sum(1), return_inverse=True)  # int64 products wrap around
    first = torch.full((len(labels),), r).scatter_reduce_(0, which, torch.arange(r), "amin")
    if not torch.equal(rows[first[which]], rows):  # two different rows share a hash
        which = torch.unique(rows, dim=0, return_inverse=True)[1]
        first = torch.full((int(which.max()) + 1,), r).scatter_reduce_(0, which, torch.arange(r), "amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(len(first))
    return rank[which]


def sparse_plan(index: torch.Tensor, inputs: int, masked_dense: bool | None = None) -> SparsePlan:
    """Plan for masks index (N, units, k) over `inputs` inputs per agent. masked_dense (the
    default off the CPU) runs the layer as a batched matmul with the weights scattered into a
    dense matrix (see _MaskedDenseLinear); otherwise it gathers only the k inputs of each unit."""
    n, u, k = index.shape
    if masked_dense is None:
        masked_dense = index.device.type != "cpu"
    if masked_dense:
        return SparsePlan(None, None, inputs, index=index, gather_index=_alike(index).to(torch.int32).contiguous())
    native = index.device.type == "cpu" and _kernels() is not None
    inverse = by_unit = grouped_order = None
    if native:  # the kernels' tables, one set for masks all alike
        shared = _alike(index)
        inverse, by_unit = _inverse(shared, inputs), _by_unit(shared)
        grouped_order = _grouped_order(by_unit)
    flat = (index + torch.arange(n, device=index.device).view(n, 1, 1) * inputs).view(n * u, k)
    crow = torch.arange(0, n * u * k + 1, k, device=index.device)
    with warnings.catch_warnings():  # sparse CSR is "beta" in torch; we rely only on sampled_addmm
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, flat.reshape(-1), torch.zeros(n * u * k, device=index.device),
                                          (n * u, n * inputs), check_invariants=False)
    return SparsePlan(flat, pattern, inputs, inverse, by_unit, grouped_order=grouped_order)


class _SparseLinear(torch.autograd.Function):
    """out[n, u, b] = sum_j weight[n, u, j] * x[n, b, index[n, u, j]].

    Forward gathers the k inputs of each unit (embedding_bag, one fused kernel); the weight
    gradient is a sampled dense-dense product at the mask's nonzeros (sampled_addmm). Both cost
    O(units * k * batch), never O(units * inputs * batch)."""

    @staticmethod
    def forward(ctx, x, weight, plan):
        n, b, d = x.shape
        u, k = weight.shape[1:]
        table = x.transpose(1, 2).reshape(n * d, b).contiguous()  # embedding_bag wants rows
        out = F.embedding_bag(plan.flat, table, mode="sum", per_sample_weights=weight.reshape(n * u, k))
        ctx.save_for_backward(table, weight)
        ctx.plan = plan
        return out.view(n, u, b)

    @staticmethod
    def backward(ctx, grad_out):
        table, weight = ctx.saved_tensors
        plan = ctx.plan
        n, u, k = weight.shape
        b = table.shape[1]
        grad_out = grad_out.reshape(n * u, b).contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            rows = table.T.contiguous()  # (batch, N * inputs)
            grad_w = torch.sparse.sampled_addmm(plan.pattern.to(grad_out.dtype), grad_out, rows, beta=0.0)
            grad_w = grad_w.values().view(n, u, k)
        if ctx.needs_input_grad[0]:
            contrib = weight.reshape(n * u, k, 1) * grad_out.view(n * u, 1, b)
            grad_table = torch.zeros_like(table).index_add_(0, plan.flat.reshape(-1), contrib.view(-1, b))
            grad_x = grad_table.view(n, plan.inputs, b).transpose(1, 2)
        return grad_x, grad_w, None


class _MaskedDenseLinear(torch.autograd.Function):
    """sparse_linear as a batched matmul with each agent's weights scattered into a dense
    (units, inputs) matrix of zeros. Only k / inputs of its multiply-adds count (9% in Breakout),
    yet on a GPU a matmul's regular memory access beats the gather and the sampled product of
    _SparseLinear many times over (see the README's GPU figures). The zeros add exact zeros, so
    only the order of the sums differs from the gather."""

    @staticmethod
    def forward(ctx, x, weight, plan):
        ctx.save_for_backward(x, weight)
        ctx.plan = plan
        return torch.bmm(_scatter_dense(weight, plan), x.transpose(1, 2))  # (N, units, B)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grad_out, x).gather(2, ctx.plan.index)
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad_out.transpose(1, 2), _scatter_dense(weight, ctx.plan))
        return grad_x, grad_w, None


def _scatter_dense(weight: torch.Tensor, plan: SparsePlan) -> torch.Tensor:
    """weight (N, units, k) as (N, units, inputs) with zeros off the mask, kept for each weight
    tensor until it changes in place (_per_weight): in one frame, acting and the update read the
    same online weights, and the target's change only when it is synced. Made anew for each of a
    frame's three forward passes, the scatters alone took 2.9 of about 11 ms per learning frame of
    1,024 agents on an H200 (benchmarks/gpu_profile_h200_after.txt)."""
    def scatter():
        n, u, _ = weight.shape
        return weight.new_zeros(n, u, plan.inputs).scatter_(2, plan.index, weight.detach())
    return _per_weight(plan, weight, "dense", scatter)


@functools.lru_cache(maxsize=None)
def _triton():
    """sparse_triton, the GPU kernels of the sparse hidden layer; None where Triton is not
    installed or SPARSE_DQN_KERNELS=torch asks for the pure-torch path."""
    if os.environ.get("SPARSE_DQN_KERNELS", "cpp") == "torch":
        return None
    try:
        import sparse_triton
    except ImportError:
        return None
    return sparse_triton


def _triton_for(x: torch.Tensor):
    """sparse_triton where it runs x: on a GPU, or on the CPU under Triton's interpreter
    (TRITON_INTERPRET=1, which the tests use)."""
    return _triton() if x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1" else None


class _SparseReluTriton(torch.autograd.Function):
    """sparse_relu_layer by the Triton kernels (sparse_triton): a gather-multiply-sum that reads
    k / inputs of what _MaskedDenseLinear's matmul reads, with bias and ReLU in the same pass, and
    the weight and bias gradients in one backward pass. x takes no gradient (observations); as
    bool, it is gathered as bits."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan):
        out, xt = _triton().sparse_relu_forward(x, weight, bias, plan.gather_index)
        ctx.save_for_backward(xt, out)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xt, out = ctx.saved_tensors
        grad_w, grad_b = _triton().sparse_relu_backward(xt, ctx.plan.gather_index, out, grad_out)
        return None, grad_w, grad_b, None


def _per_weight(plan: SparsePlan, weight: torch.Tensor, kind: str, make):
    """make(), a layout of weight's, kept in the plan until weight changes in place (its version
    counter moves) or is freed."""
    key = (kind, id(weight))
    hit = plan.cache.get(key)
    if hit is not None and hit[0]() is weight and hit[1] == weight._version:
        return hit[2]
    made = make()
    cache = plan.cache  # not the plan itself: the callback must not keep it alive
    plan.cache[key] = (weakref.ref(weight, lambda _: cache.pop(key, None)), weight._version, made)
    return made


def _grouped_weights(weight: torch.Tensor, plan: SparsePlan) -> torch.Tensor | None:
    """For weights that do not learn (frozen hidden weights, the target network's), a copy (N,
    units * k) laid out for the C++ forward: group by group (plan.by_unit), input by input, the
    group's members side by side. A batch's inputs that are on then read a few short runs of
    weights instead of one weight per unit row, and acting sums a group's members at once. None
    for weights that learn: they change with every update, and a copy would cost a pass of its own."""
    if weight.requires_grad:
        return None
    n = weight.shape[0]
    order = plan.grouped_order.expand(n, -1)
    return _per_weight(plan, weight, "grouped", lambda: weight.detach().reshape(n, -1).gather(1, order))


def _grouped_order(by_unit: tuple) -> torch.Tensor:
    """(N or 1, units * k): for each place of _grouped_weights' layout, the weight it holds."""
    _, flat, members, group_start, _ = by_unit
    m, u = members.shape
    k = flat.shape[1] // u
    row = torch.arange(u).repeat(m, 1)
    group = torch.searchsorted(group_start.long(), row, right=True) - 1
    first = group_start.long().gather(1, group)
    size = group_start.long().gather(1, group + 1) - first
    at = (first * k + (row - first)).unsqueeze(2) + torch.arange(k).view(1, 1, k) * size.unsqueeze(2)
    return torch.empty(m, u * k, dtype=torch.long).scatter_(1, at.view(m, u * k), flat.long())


class _SparseReluCpp(torch.autograd.Function):
    """relu(sparse_linear(x, weight, mask) + bias) in one C++ kernel that visits only the inputs
    that are on somewhere in the batch, with bias and ReLU applied in the same pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan):
        n, u, k = weight.shape
        xt = x.transpose(1, 2).contiguous()  # (N, inputs, B)
        flat_w = weight.reshape(n, u * k).contiguous()
        out = _kernels().sparse_forward(xt, flat_w, bias.contiguous(), *plan.inverse, *plan.by_unit,
                                        grouped_w=_grouped_weights(weight, plan))
        ctx.save_for_backward(xt, flat_w, out)
        ctx.plan, ctx.shape = plan, weight.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xt, flat_w, out = ctx.saved_tensors
        grad = _kernels().relu_grad(out, grad_out)  # (N, units, B), through the ReLU
        return *_sparse_grads(ctx, grad, xt, flat_w, ctx.needs_input_grad[:3]), None


class _SparseQCpp(torch.autograd.Function):
    """The sparse network's Q-values, _SparseReluCpp's layer then the head, for the update's batch.
    The head is what torch.baddbmm computes on the layer's units-major output seen transposed, as
    q_values hands it over elsewhere, and in MKL's order of sums for that layout, so the same bits:
    MKL runs that layout at a tenth of the speed of its others. Each agent's head is taken while its
    activations are in cache (sparse_q), and the target network's are never written out. Backward
    takes the head's input gradient through the ReLU in one pass (head_relu_grad, again MKL's
    order) and its weight gradient as the product autograd would make gives it (head_grad_weight,
    MKL's order for the DQN's batch of 32, 6 actions and an even number of units; torch.bmm itself
    otherwise)."""

    @staticmethod
    def forward(ctx, x, weight, bias, head_w, head_b, plan):
        n, u, k = weight.shape
        xt = x.transpose(1, 2).contiguous()
        flat_w = weight.reshape(n, u * k).contiguous()
        keep = any(ctx.needs_input_grad)  # the activations, for backward; the target's pass has none
        out, q = _kernels().sparse_q(xt, flat_w, bias.contiguous(), *plan.inverse, *plan.by_unit,
                                     head_w.contiguous(), head_b.contiguous(), keep, _grouped_weights(weight, plan))
        if keep:
            ctx.save_for_backward(xt, flat_w, out, head_w)
        ctx.plan, ctx.shape = plan, weight.shape
        return q

    @staticmethod
    def backward(ctx, grad_q):
        xt, flat_w, out, head_w = ctx.saved_tensors
        needs = ctx.needs_input_grad
        n, units, batch = out.shape
        mkls_order_known = batch == 32 and grad_q.shape[2] == 6 and units % 2 == 0 and units >= 16
        grad_head_b = grad_q.sum(1) if needs[4] else None
        if mkls_order_known and grad_q.is_contiguous() and needs[1] and needs[3] and not needs[0]:
            # training's update with learned hidden weights: its three products in one pass
            grad_head_w, grad, grad_w = _kernels().sparse_q_backward(out, grad_q, head_w, xt, *ctx.plan.inverse)
            return None, grad_w.view(ctx.shape), grad.sum(2) if needs[2] else None, grad_head_w, grad_head_b, None
        grad_head_w = None
        if needs[3]:
            if mkls_order_known and grad_q.is_contiguous():
                grad_head_w = _kernels().head_grad_weight(out, grad_q)
            else:
                grad_head_w = torch.bmm(out, grad_q).transpose(1, 2)
        grads = (None, None, None)
        if any(needs[:3]):
            grads = _sparse_grads(ctx, _kernels().head_relu_grad(out, grad_q, head_w), xt, flat_w, needs[:3])
        return *grads, grad_head_w, grad_head_b, None


def _sparse_grads(ctx, grad, xt, flat_w, needs):
    """Gradients of the C++ sparse layer's input, weights and bias from grad (N, units, B) taken
    through its ReLU."""
    grad_x = grad_w = grad_b = None
    if needs[1]:
        grad_w = _kernels().sparse_grad_weight(grad, xt, *ctx.plan.inverse, flat_w.shape[1]).view(ctx.shape)
    if needs[2]:
        grad_b = grad.sum(2)
    if needs[0]:
        grad_x = _kernels().sparse_grad_input(grad, flat_w, *ctx.plan.inverse, xt.shape[1]).transpose(1, 2)
    return grad_x, grad_w, grad_b


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | SparsePlan) -> torch.Tensor:
    """Each unit sees only its k inputs. x (N, B, inputs), weight and mask (N, units, k) ->
    (N, units, B). Equal to x @ dense-masked weight, in values and gradients."""
    plan = mask if isinstance(mask, SparsePlan) else sparse_plan(mask, x.shape[2])
    return (_SparseLinear if plan.index is None else _MaskedDenseLinear).apply(x, weight, plan)


def sparse_relu_layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      mask: torch.Tensor | SparsePlan) -> torch.Tensor:
    """The sparse hidden layer: relu(sparse_linear(x, weight, mask) + bias), (N, units, B). In
    float32 it runs the C++ kernels on the CPU where they are built and the Triton kernels on the
    GPU where Triton is installed, else pure torch: the gather on the CPU, the masked-dense matmul
    on the GPU. x may be bool (binary inputs, as observations are): the Triton kernels then gather
    bits, 32 samples in a word (see sparse_triton); the other paths take it as 0.0 and 1.0."""
    plan = mask if isinstance(mask, SparsePlan) else sparse_plan(mask, x.shape[2])
    float32 = weight.dtype == bias.dtype == torch.float32
    if (plan.gather_index is not None and float32 and x.dtype in (torch.float32, torch.bool) and not x.requires_grad
            and _triton_for(x) is not None):
        return _SparseReluTriton.apply(x, weight, bias, plan)
    x = x.to(weight.dtype) if x.dtype == torch.bool else x
    if plan.inverse is not None and float32 and x.dtype == torch.float32:
        return _SparseReluCpp.apply(x, weight, bias, plan)
    return F.relu(sparse_linear(x, weight, plan) + bias.unsqueeze(2))


def init_params(cfg: Config, seed: int, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One agent's initial parameters, PyTorch's default Linear/Conv init (uniform +-1/sqrt(fan_in)),
    drawn from the agent's own stream so that populations are reproducible member by member."""
    g = torch.Generator().manual_seed(_seed(seed, "init"))

    def uniform(shape, fan_in):
        return (torch.rand(shape, generator=g) * 2 - 1) / math.sqrt(fan_in)

    if cfg.arch == "minatar_cnn":
        c = cfg.channels
        return {"conv_w": uniform((16, c, 3, 3), c * 9), "conv_b": uniform((16,), c * 9),
                "fc_w": uniform((128, 1024), 1024), "fc_b": uniform((128,), 1024),
                "head_w": uniform((NUM_ACTIONS, 128), 128), "head_b": uniform((NUM_ACTIONS,), 128)}
    units, k = mask.shape
    return {"index": mask, "hidden_w": uniform((units, k), k), "hidden_b": uniform((units,), k),
            "head_w": uniform((NUM_ACTIONS, units), units),
            "head_b": uniform((NUM_ACTIONS,), units)}


HIDDEN_PARAMS = {"conv_w", "conv_b", "fc_w", "fc_b", "hidden_w", "hidden_b"}


class _BatchedLinear(torch.autograd.Function):
    """torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2)), with the weight gradient made
    in the weight's own (N, out, in) layout. Autograd makes it as (N, in, out) and transposes it,
    and AccumulateGrad then copies the transpose into the weight's layout: for the dense layers of
    10 L1 agents that copy took 16 of about 55 ms per learning frame (torch.profiler, Breakout,
    one thread). For x laid out (N, B, in), as the dense layers get it, the two products round
    alike (tests/test_network.py); for the head, whose input comes units-major from the sparse
    layer, they do not, so the head keeps autograd's."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(1) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Each agent's x (N, B, in) @ weight (N, out, in).T + bias (N, out) -> (N, B, out)."""
    return _BatchedLinear.apply(x, weight, bias)


# The smallest batch that takes the C++ head: from 16 samples on, MKL's baddbmm adds the head's
# sums in the order the kernels take (tests/test_network.py); acting's batch of one goes to MKL.
HEAD_CPP_BATCH = 16


def q_values(params: dict[str, torch.Tensor], x: torch.Tensor, plan: SparsePlan | None = None) -> torch.Tensor:
    """Q-values (N, B, actions) of a population's networks on observations x (N, B, inputs), float
    or bool; plan, when given, is sparse_plan(params["index"], inputs), saved from an earlier call."""
    if "index" in params:
        plan = plan or sparse_plan(params["index"], x.shape[2])
    if x.dtype == torch.bool and (plan is None or plan.gather_index is None):
        x = x.to(params["head_w"].dtype)  # only the GPU's sparse layer reads bits (sparse_relu_layer)
    if "conv_w" in params:
        n, b, _ = x.shape
        channels = params["conv_w"].shape[2]
        grouped = x.view(n, b, channels, GRID, GRID).transpose(0, 1).reshape(b, n * channels, GRID, GRID)
        conv = F.conv2d(grouped, params["conv_w"].flatten(0, 1), params["conv_b"].flatten(), groups=n)
        feats = F.relu(conv).view(b, n, -1).transpose(0, 1)  # (N, B, 1024)
        hidden = F.relu(batched_linear(feats, params["fc_w"], params["fc_b"]))
    elif "index" in params:
        native = plan.inverse is not None and x.dtype == params["hidden_w"].dtype == torch.float32
        if native and x.shape[1] >= HEAD_CPP_BATCH:
            return _SparseQCpp.apply(x, params["hidden_w"], params["hidden_b"], params["head_w"],
                                     params["head_b"], plan)
        hidden = sparse_relu_layer(x, params["hidden_w"], params["hidden_b"], plan).transpose(1, 2)
    else:  # a fully connected layer (dense, learned L1): one matmul beats any gather
        hidden = F.relu(batched_linear(x, params["hidden_w"], params["hidden_b"]))
    return _head(params, hidden)


def _head(params: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """The Q head on hidden (N, B, units). (N, B, units) @ (N, units, A): of the bmm layouts, the
    one whose per-agent results do not depend on N, in values and gradients, so that populations
    match runs alone bit for bit (on one thread: with more, MKL may split a small population's
    sums across threads)."""
    return torch.baddbmm(params["head_b"].unsqueeze(1), hidden, params["head_w"].transpose(1, 2))


# ----------------------------------------------------------------------------------------------
# Replay
# ----------------------------------------------------------------------------------------------
class Replay:
    """One ring per agent, all written in lockstep; observations stored bit-packed."""

    def __init__(self, agents: int, capacity: int, input_size: int, device: torch.device,
                 native: bool | None = None):
        device = torch.device(device)
        self._native = native_kernels(device, native)  # pack and sample
        nbytes = (input_size + 7) // 8
        self.capacity, self.input_size, self.size, self.pos = capacity, input_size, 0, 0
        # Slots are read only once written (sample draws below size): left unfilled, the rings'
        # pages are touched as they fill, not all at once (1 GB for 64 agents at the default size).
        self.obs = torch.empty(agents, capacity, nbytes, dtype=torch.uint8, device=device)
        self.next_obs = torch.empty_like(self.obs)
        self.action = torch.zeros(agents, capacity, dtype=torch.uint8, device=device)
        self.reward = torch.zeros(agents, capacity, device=device)
        self.done = torch.zeros(agents, capacity, device=device)
        self._shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=device)

    def pack(self, obs: torch.Tensor) -> torch.Tensor:
        """(N, input_size) 0/1 uint8 -> (N, bytes), most significant bit first (numpy's packbits)."""
        if self._native is not None:
            return self._native.replay_pack(obs.contiguous())
        pad = (-obs.shape[1]) % 8
        bits = F.pad(obs, (0, pad)).view(obs.shape[0], -1, 8)
        return (bits << self._shifts).sum(2, dtype=torch.uint8)

    def add(self, obs_packed, action, reward, next_packed, done):
        i = self.pos
        self.obs[:, i], self.next_obs[:, i] = obs_packed, next_packed
        self.action[:, i], self.reward[:, i], self.done[:, i] = action, reward, done
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def unpack(self, packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        bits = (packed.unsqueeze(-1) >> self._shifts) & 1
        return bits.flatten(-2)[..., : self.input_size].to(dtype)

    def sample(self, agents: torch.Tensor, idx: torch.Tensor, inputs_major: bool = False, binary: bool = False):
        """Transitions idx (n, B) of the given agents (n,), observations unpacked to float (n, B,
        inputs); with the C++ kernels and inputs_major, laid out (n, inputs, B) in memory, as the
        sparse layer's kernels read them; with binary, as bool, by torch ops (for the GPU's
        sparse layer, which gathers bits)."""
        if self._native is not None and not binary:
            return tuple(self._native.replay_sample(self.obs, self.next_obs, self.action, self.reward, self.done,
                                                    agents.contiguous(), idx.contiguous(), self.input_size,
                                                    inputs_major))
        rows, dtype = agents.unsqueeze(1), torch.bool if binary else torch.float32
        return (self.unpack(self.obs[rows, idx], dtype), self.action[rows, idx].long(), self.reward[rows, idx],
                self.unpack(self.next_obs[rows, idx], dtype), self.done[rows, idx])

    def state_dict(self) -> dict:
        return {"obs": self.obs, "next_obs": self.next_obs, "action": self.action, "reward": self.reward,
                "done": self.done, "size": self.size, "pos": self.pos}

    def load_state_dict(self, state: dict):
        for name, value in state.items():
            setattr(self, name, value.to(self.obs.device) if isinstance(value, torch.Tensor) else value)


# ----------------------------------------------------------------------------------------------
# Population training
# ----------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """One agent's run: its per-episode records and what was measured along the way."""
    config: Config
    seed: int
    episode_frames: list[int]
    episode_returns: list[float]
    sparsity: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    pan_td_error: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    mask: list[list[int]] | None = None
    wall_seconds: float = 0.0
    algorithm_version: int = ALGORITHM_VERSION
    resumed_at: list[int] = dataclasses.field(default_factory=list)
    """Frames at which training resumed from a checkpoint (empty for a run in one go)."""
    provenance: dict = dataclasses.field(default_factory=dict)
    """Where and how the run was computed: command, machine, torch, kernels, device."""
    params: dict | None = dataclasses.field(default=None, repr=False, compare=False)
    """Final network parameters, in memory only: a run loaded from the store has none."""

    def final_return(self, last: int = 100) -> float:
        tail = self.episode_returns[-last:]
        return float(np.mean(tail)) if tail else float("nan")

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}
        out["config"] = dataclasses.asdict(self.config)
        # MinAtar's returns are whole numbers: "3" rather than "3.0" keeps a study's files small
        out["episode_returns"] = [int(r) if float(r).is_integer() else r for r in self.episode_returns]
        return out

    @classmethod
    def from_json(cls, blob: dict) -> "RunResult":
        blob = dict(blob, config=Config(**blob["config"]))
        blob["episode_returns"] = [float(r) for r in blob["episode_returns"]]
        if "code_version" in blob:  # stored before results were keyed by algorithm version
            del blob["code_version"]
            blob["algorithm_version"] = 1
        blob["sparsity"] = [tuple(r) for r in blob["sparsity"]]
        blob["pan_td_error"] = [tuple(r) for r in blob["pan_td_error"]]
        return cls(**blob)


class CentredRMSprop:
    """torch.optim.RMSprop(centered=True, momentum=0), step for step, except that the variance
    estimate is clamped at zero before its square root. A weight whose gradient is constant (the
    L1 term alone, on an input never seen) makes mean-square minus squared-mean round below zero,
    and torch's version then writes NaN into that weight.

    l1 maps a parameter's position to per-agent coefficients c (its leading dimension): the step
    adds c * sign(w), the gradient of the penalty c * |w|.sum(), to that parameter's gradient. It
    is the number autograd would add, without a forward and backward pass over every weight."""

    def __init__(self, params: list[torch.Tensor], lr: float, alpha: float, eps: float,
                 l1: dict[int, torch.Tensor] | None = None):
        self.params, self.lr, self.alpha, self.eps, self.l1 = params, lr, alpha, eps, l1 or {}
        self.square_avg = [torch.zeros_like(p) for p in params]
        self.grad_avg = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, act: tuple | None = None) -> torch.Tensor | None:
        """One step of every parameter. act (i, xt, bias, plan), where the C++ kernels take it:
        parameter i is a C++ sparse layer's weights (N, units, k), bias its bias (a parameter
        too), and the step of each agent's weights is followed by acting's forward on the next
        observations xt (N, inputs, 1), returned as the layer's activations (N, units, 1), the
        bits sparse_relu_layer gives; None where the step could not take it."""
        float32 = all(p.dtype == torch.float32 for p in self.params)
        native = _kernels() if float32 and all(p.device.type == "cpu" for p in self.params) else None
        fused = native or (_triton_for(self.params[0]) if float32 else None)
        acting = act[0] if act is not None and native is not None else None  # a C++ kernel: see act
        activations = None
        order = sorted(range(len(self.params)), key=lambda i: i == acting)  # the weights after their bias
        for i in order:
            p, sq, mean = self.params[i], self.square_avg[i], self.grad_avg[i]
            g, l1 = p.grad, self.l1.get(i)
            if fused is not None and p.is_contiguous() and g.is_contiguous():
                if i == acting:
                    _, xt, bias, plan = act
                    activations = fused.centred_rmsprop_step_then_act(
                        p, g, sq, mean, self.lr, self.alpha, self.eps, l1, xt, bias, *plan.inverse)
                else:
                    fused.centred_rmsprop_step(p, g, sq, mean, self.lr, self.alpha, self.eps, l1)
                p.grad = None
                continue
            if l1 is not None:
                g = g + l1.view(-1, *[1] * (p.dim() - 1)) * p.sgn()
            sq.mul_(self.alpha).addcmul_(g, g, value=1 - self.alpha)
            mean.lerp_(g, 1 - self.alpha)
            avg = sq.addcmul(mean, mean, value=-1).clamp_min_(0).sqrt_().add_(self.eps)
            p.addcdiv_(g, avg, value=-self.lr)
            p.grad = None
        return activations


class _Group:
    """Agents of a population whose networks share shapes and regime: one set of batched tensors,
    one optimiser. Frozen hidden tensors are plain tensors: no gradient, no optimiser state."""

    def __init__(self, members: list[int], cfgs: list[Config], params: list[dict], device, population: int):
        self.members = torch.tensor(members, device=device)
        self.everyone = members == list(range(population))
        self.frozen = cfgs[0].regime == "frozen"
        stacked = {name: torch.stack([p[name] for p in params]).to(device) for name in params[0]}
        index, inputs = stacked.get("index"), torch.arange(cfgs[0].input_size, device=device)
        if index is not None and index.shape[-1] == len(inputs) and bool((index == inputs).all()):
            del stacked["index"]  # every unit sees every input, in order: a plain matmul
        for name, tensor in stacked.items():
            learns = name in ("head_w", "head_b") or (not self.frozen and name in HIDDEN_PARAMS)
            tensor.requires_grad_(learns)
        self.params = stacked
        self.plan = sparse_plan(stacked["index"], cfgs[0].input_size) if "index" in stacked else None
        self.inputs_major = self.plan is not None and self.plan.inverse is not None  # the C++ sparse layer
        self.binary = self.plan is not None and self.plan.gather_index is not None  # the GPU's: see sample
        self.acts_in_step = self.inputs_major and not self.frozen  # see update
        self.target = {n: t.detach().clone() if t.requires_grad else t for n, t in stacked.items()}
        c = cfgs[0]
        self.learned = learned = [name for name, t in stacked.items() if t.requires_grad]
        coefs = [cf.l1_coef if (cf.arch == "l1" and not self.frozen) else 0.0 for cf in cfgs]
        l1 = {learned.index("hidden_w"): torch.tensor(coefs, device=device)} if any(coefs) else None
        self.optimizer = CentredRMSprop([stacked[name] for name in learned], lr=c.lr, alpha=c.rms_alpha,
                                        eps=c.rms_eps, l1=l1)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """The members' rows of a population's tensor: t itself where they are the population, in
        order (no copy: on a GPU, each copy is a call)."""
        return t if self.everyone else t[self.members]

    def update(self, batch, gamma: float, act_on: torch.Tensor | None = None) -> torch.Tensor | None:
        """One DQN update of every member. act_on: the next frame's observations (N, 1, inputs); for
        a learned C++ sparse layer, the step then makes their activations on the new weights, which
        it returns for greedy (else None): acting reads the weights while they are in cache."""
        obs, action, reward, next_obs, done = batch
        q = q_values(self.params, obs, self.plan).gather(2, action.unsqueeze(2)).squeeze(2)
        with torch.no_grad():
            target = reward + gamma * (1 - done) * q_values(self.target, next_obs, self.plan).amax(2)
        # The L1 penalty's gradient is added by the optimiser (CentredRMSprop's l1).
        F.smooth_l1_loss(q, target, reduction="none").mean(1).sum().backward()
        act = None
        if act_on is not None and self.acts_in_step:
            act = (self.learned.index("hidden_w"), act_on.transpose(1, 2).contiguous(), self.params["hidden_b"],
                   self.plan)
        return self.optimizer.step(act)

    def greedy(self, x: torch.Tensor, activations: torch.Tensor | None = None) -> torch.Tensor:
        """The members' greedy actions (N,) on observations x (N, 1, inputs); activations: their
        sparse layer's on x, from the last update (see update), if it made them."""
        if activations is None:
            return q_values(self.params, x, self.plan).squeeze(1).argmax(1)
        return _head(self.params, activations.transpose(1, 2)).squeeze(1).argmax(1)

    def state_dict(self) -> dict:
        return {"params": {n: t.detach() for n, t in self.params.items()}, "target": self.target,
                "square_avg": self.optimizer.square_avg, "grad_avg": self.optimizer.grad_avg}

    @torch.no_grad()
    def load_state_dict(self, state: dict):
        for name, tensor in self.params.items():
            tensor.copy_(state["params"][name])
            self.target[name].copy_(state["target"][name])
        for mine, saved in zip(self.optimizer.square_avg + self.optimizer.grad_avg,
                               state["square_avg"] + state["grad_avg"]):
            mine.copy_(saved)

    def sync_target(self):
        with torch.no_grad():
            for name, tensor in self.params.items():
                if tensor.requires_grad:
                    self.target[name].copy_(tensor)


def epsilon(cfg: Config, frame: int) -> float:
    if frame < cfg.learning_starts:
        return 1.0
    if cfg.eps_decay_frames == 0:
        return cfg.eps_end
    progress = min(1.0, (frame - cfg.learning_starts) / cfg.eps_decay_frames)
    return cfg.eps_start + progress * (cfg.eps_end - cfg.eps_start)


def _check_population(agents: Sequence[tuple[Config, int]]):
    first = agents[0][0]
    for cfg, _ in agents[1:]:
        for name in SHARED_FIELDS:
            if getattr(cfg, name) != getattr(first, name):
                raise ValueError(f"{name}={getattr(cfg, name)!r} differs within one population "
                                 f"(another agent has {getattr(first, name)!r}); allowed to differ: "
                                 "arch, regime, hidden_units, fan_in, pan_*, l1_coef")


def build_mask(cfg: Config, seed: int, learned_l1_mask: torch.Tensor | None = None):
    """The (units, k) mask of one agent, and the PAN TD-error curve for predictive masks. A frozen
    L1 agent takes the L1 mask of the learned L1 run of its game and seed."""
    if cfg.fully_connected:
        return dense_mask(cfg), []
    if cfg.arch == "random":
        return random_mask(cfg, seed), []
    if cfg.arch == "spatial":
        return spatial_mask(cfg), []
    if cfg.arch == "predictive":
        return predictive_mask(cfg, seed)
    if cfg.arch in MASKS:
        return user_mask(cfg, seed), []
    if cfg.arch == "l1":
        if learned_l1_mask is None:
            raise ValueError("arch='l1' with regime='frozen' needs the learned L1 run's mask")
        return learned_l1_mask, []
    return None, []


def train_population(agents: Sequence[tuple[Config, int]], progress: bool | Callable[[int], None] = True,
                     l1_masks: dict[tuple[Config, int], torch.Tensor] | None = None,
                     checkpoint: Path | None = None) -> list[RunResult]:
    """Train agents (config, seed) of one game in lockstep: one env step each per frame, one update
    each per frame after learning starts. Each agent has its own game, replay ring, weights,
    optimiser state and random streams, so its results do not depend on who shares the population.

    With `checkpoint` (a file path), the population saves itself there atomically every
    `checkpoint_every` frames, resumes from it if it exists, and deletes it when done."""
    _check_population(agents)
    cfg0 = agents[0][0]
    device = torch.device(cfg0.device)
    n = len(agents)
    start = time.perf_counter()

    masks, pan_logs, params = [], [], []
    for cfg, seed in agents:
        mask, log = build_mask(cfg, seed, (l1_masks or {}).get((cfg, seed)))
        masks.append(mask)
        pan_logs.append(log)
        params.append(init_params(cfg, seed, mask))
    by_shape = defaultdict(list)
    for i, (cfg, _) in enumerate(agents):
        by_shape[(cfg.arch == "minatar_cnn", cfg.layer_shape, cfg.regime)].append(i)
    groups = [_Group(ix, [agents[i][0] for i in ix], [params[i] for i in ix], device, n)
              for ix in by_shape.values()]
    l1_agents = [(g, j, i) for g in groups for j, i in enumerate(g.members.tolist())
                 if agents[i][0].arch == "l1" and not g.frozen]

    keys = agent_keys([s for _, s in agents], device)
    game = make_games(cfg0, n)
    game.reset(torch.ones(n, dtype=torch.bool, device=device),
               uniform(keys, "reset", torch.zeros(1, dtype=torch.long, device=device)))
    replay = Replay(n, cfg0.replay_size, cfg0.input_size, device)
    episode_return = torch.zeros(n, device=device)
    episodes = [([], []) for _ in range(n)]
    sparsity = [[] for _ in range(n)]
    first_frame, updates, resumed_at = 0, 0, []
    if checkpoint is not None:  # what a killed writer of this population left half-written
        for stale in Path(checkpoint).parent.glob(f".tmp-{Path(checkpoint).stem}-*"):
            stale.unlink(missing_ok=True)
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        first_frame, updates, episodes, sparsity, resumed_at = (
            state[k] for k in ("frame", "updates", "episodes", "sparsity", "resumed_at"))
        resumed_at = resumed_at + [first_frame]
        start -= state["wall"]
        episode_return = state["episode_return"]
        game.load_state_dict(state["game"])
        replay.load_state_dict(state["replay"])
        for g, gs in zip(groups, state["groups"]):
            g.load_state_dict(gs)
    obs = game.observe()

    # armed before the bar shows: a user (or a test) who sees the frame loop start and stops it
    # then must get the checkpointed stop, not the signal's default
    _STOP.armed = checkpoint is not None
    bar = _progress(cfg0.frames, n, progress is True, first_frame)
    report = progress if callable(progress) else None
    if report is not None:
        report(n * first_frame)
    frame = first_frame
    acted = {}  # group: its activations on the next frame's observations if its update made them
    while frame < cfg0.frames:
        # One block of frames: its draws come in bulk, its episode ends reach the host at its end.
        block = min(FRAME_BLOCK, cfg0.frames - frame, _next_stop(cfg0, frame) - frame)
        frames = torch.arange(frame, frame + block, device=device)
        u = {s: uniform(keys, s, frames.view(1, -1)) for s in ("explore", "action", "sticky", "reset")}
        u_replay = uniform(keys, "replay", frames.view(1, -1, 1) * cfg0.batch_size
                           + torch.arange(cfg0.batch_size, device=device))
        random_actions = (u["action"] * NUM_ACTIONS).long()
        ended = torch.zeros(block, n, dtype=torch.bool, device=device)
        ended_return = torch.zeros(block, n, device=device)
        for t in range(block):
            eps = epsilon(cfg0, frame)
            actions = random_actions[:, t]
            if eps < 1.0:
                with torch.no_grad():
                    x = obs.float().unsqueeze(1)
                    greedy = _by_member([(g, g.greedy(g.rows(x), acted.pop(g, None))) for g in groups])
                actions = torch.where(u["explore"][:, t] < eps, actions, greedy)
            reward, done = game.act(actions, u["sticky"][:, t])
            next_obs = game.observe()
            replay.add(replay.pack(obs), actions, reward, replay.pack(next_obs), done)
            episode_return += reward
            ended[t], ended_return[t] = done, episode_return
            ended_now = done.bool()
            episode_return = episode_return.masked_fill(ended_now, 0.0)
            if game.resets_unasked or ended_now.any():
                game.reset(ended_now, u["reset"][:, t])
                next_obs = game.observe()
            obs = next_obs

            if frame >= cfg0.learning_starts:
                idx = (u_replay[:, t] * replay.size).long()
                acts_next = frame + 1 < cfg0.frames and epsilon(cfg0, frame + 1) < 1.0
                x = obs.float().unsqueeze(1) if acts_next and any(g.acts_in_step for g in groups) else None
                for g in groups:
                    batch = replay.sample(g.members, g.rows(idx), g.inputs_major, g.binary)
                    acted[g] = g.update(batch, cfg0.gamma, g.rows(x) if x is not None and g.acts_in_step else None)
                updates += 1
                if updates % cfg0.target_update == 0:
                    for g in groups:
                        g.sync_target()
            frame += 1

        for (t, i), r in zip(ended.nonzero().tolist(), ended_return[ended].tolist()):  # two copies per block
            episodes[i][0].append(frame - block + t + 1)
            episodes[i][1].append(r)
        if frame % cfg0.log_every == 0 or frame == cfg0.frames:
            for g, j, i in l1_agents:
                w = g.params["hidden_w"][j].detach()
                sparsity[i].append((frame, float((w.abs() < cfg0.sparsity_threshold).float().mean())))
        stopping = bool(_STOP.requested) and checkpoint is not None and frame < cfg0.frames
        if checkpoint is not None and (frame % cfg0.checkpoint_every == 0 or stopping) and frame < cfg0.frames:
            _save_checkpoint(checkpoint, {
                "frame": frame, "updates": updates, "episodes": episodes, "sparsity": sparsity,
                "resumed_at": resumed_at, "wall": time.perf_counter() - start,
                "episode_return": episode_return, "game": game.state_dict(),
                "replay": replay.state_dict(), "groups": [g.state_dict() for g in groups]})
        if stopping:
            if bar is not None:
                bar.close()
            raise Stopped(f"stopped at frame {frame:,} of {cfg0.frames:,}, checkpoint saved in {checkpoint}; "
                          "the same command resumes from there")
        if report is not None:
            report(n * block)
        if bar is not None:
            recent = [np.mean(e[1][-100:]) for e in episodes if e[1]]
            bar.update(frame - bar.n)
            bar.set_postfix(ret=f"{np.mean(recent):.2f}" if recent else "-", refresh=False)
    _STOP.armed = False
    if bar is not None:
        bar.close()

    wall = time.perf_counter() - start
    results = []
    for i, (cfg, seed) in enumerate(agents):
        g, j = next((g, j) for g in groups for j, a in enumerate(g.members.tolist()) if a == i)
        final = {name: t[j].detach().cpu().clone() for name, t in g.params.items()}
        mask = None
        if cfg.arch == "l1" and cfg.regime == "learned":
            mask = l1_mask(final["hidden_w"], cfg.k, seed).tolist()
        results.append(RunResult(cfg, seed, episodes[i][0], episodes[i][1], sparsity[i],
                                 pan_logs[i], mask, wall, resumed_at=resumed_at,
                                 provenance=_provenance(cfg0, n), params=final))
    return results


def _by_member(values: list[tuple[_Group, torch.Tensor]]) -> torch.Tensor:
    """The population's (N,) tensor from each group's values for its members."""
    if len(values) == 1 and values[0][0].everyone:
        return values[0][1]
    out = values[0][1].new_empty(sum(len(g.members) for g, _ in values))
    for g, v in values:
        out[g.members] = v
    return out


def _provenance(cfg: Config, agents: int) -> dict:
    import platform

    return {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "machine": platform.node(),
            "processor": platform.processor() or platform.machine(), "cpu": _cpu_name(),
            "torch": torch.__version__,
            "kernels": kernel_backend() if cfg.device == "cpu" else "torch", "device": cfg.device,
            "population": agents,
            # work split over threads may add up in another order: the same run on another thread
            # count can differ in the last bits
            "threads": torch.get_num_threads()}


# Frames per block of the training loop: draws are made, and episode ends collected, per block.
FRAME_BLOCK = 500


def _next_stop(cfg: Config, frame: int) -> int:
    """The next frame after `frame` at which the loop must look up: a sparsity record or a
    checkpoint is due."""
    return min((frame // every + 1) * every for every in (cfg.log_every, cfg.checkpoint_every))


def _save_checkpoint(path: Path, state: dict):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.stem}-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Stopped(Exception):
    """A population stopped on request (see stop_on_signal) after saving its checkpoint."""


@dataclass
class _StopRequest:
    requested: int = 0  # the signal that asked for a stop, 0 while none has
    armed: bool = False  # a population with a checkpoint file is in its frame loop


_STOP = _StopRequest()


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


def _progress(frames: int, agents: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm import tqdm  # plain-text bar: works in terminals, logs and papermill alike

    return tqdm(total=frames, initial=initial, unit="frame", desc=f"{agents} agent{'s' * (agents > 1)}",
                mininterval=2.0, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Result store and the one entry point
# ----------------------------------------------------------------------------------------------
def result_path(results_dir: Path, cfg: Config, seed: int) -> Path:
    return Path(results_dir) / cfg.key() / f"{run_name(cfg, seed)}.json"


def _write_atomic(path: Path, blob: dict):
    """Write to a temporary file beside the target, then rename: a reader sees all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(blob, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_run(path: Path) -> RunResult | None:
    """A stored run, or None if it is missing. An unreadable one (truncated, corrupt) is reported
    with its path and set aside as `<name>.corrupt`, so that it is recomputed, not trusted."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return RunResult.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as err:  # JSON and Unicode errors are ValueErrors
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(f"{path} is unreadable ({type(err).__name__}: {err}); set aside as {aside.name}, "
                      "it will be recomputed", stacklevel=2)
        return None


def load_run(results_dir: Path, cfg: Config, seed: int) -> RunResult | None:
    return read_run(result_path(results_dir, cfg, seed))


def check_device(device: str):
    """Refuse, before any work, a device that this machine cannot allocate on."""
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"device={device!r} is not available here ({first}); expected cpu"
                         + ", cuda" * torch.cuda.is_available()) from None


def check_results_dir(results_dir: str | Path):
    """Create results_dir if needed and prove it writable, before any training."""
    path = Path(results_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"results directory {str(path)!r} is not writable ({err.strerror})") from None


def checkpoint_path(results_dir: str | Path | None, agents: Sequence[tuple[Config, int]]) -> Path | None:
    """Where a population of these agents checkpoints itself under results_dir."""
    if results_dir is None:
        return None
    # built-in archs keep the names their checkpoints had before registered masks existed
    blob = json.dumps([(cfg.key(), seed if cfg.arch not in MASKS else run_name(cfg, seed)) for cfg, seed in agents])
    return Path(results_dir) / ".checkpoints" / (hashlib.sha256(blob.encode()).hexdigest()[:16] + ".pt")


def train(configs: Config | Sequence[Config], seeds: Sequence[int], results_dir: str | Path | None = None,
          progress: bool | Callable[[int], None] = True) -> list[RunResult]:
    """Train every (config, seed) pair of one game as one population and return their results.

    With results_dir, completed runs are loaded instead of recomputed, and new ones are saved there
    atomically. Frozen L1 agents first need the learned L1 run of the same game and seed: it is
    loaded, or trained in the same call."""
    configs = [configs] if isinstance(configs, Config) else list(configs)
    wanted = [(cfg, int(s)) for cfg in configs for s in seeds]
    if not wanted:
        raise ValueError("seeds=[] is not allowed; expected at least one seed")
    return train_runs(wanted, results_dir, progress)


def train_runs(wanted: Sequence[tuple[Config, int]], results_dir: str | Path | None = None,
               progress: bool | Callable[[int], None] = True) -> list[RunResult]:
    """train() for any list of (config, seed) pairs of one game. progress may be a function, called
    with the agent-frames done as they are done (a sweep's one progress bar)."""
    wanted = list(wanted)
    _check_population(wanted)
    check_device(wanted[0][0].device)
    if results_dir is not None:
        check_results_dir(results_dir)
    done = {}
    if results_dir is not None:
        for cfg, seed in wanted:
            run = load_run(results_dir, cfg, seed)
            if run is not None:
                done[(cfg, seed)] = run

    def needs_l1_source(cfg):
        return cfg.arch == "l1" and cfg.regime == "frozen"

    sources = {(dataclasses.replace(cfg, regime="learned"), s) for cfg, s in wanted
               if needs_l1_source(cfg) and (cfg, s) not in done}
    for src in sources:
        if src not in done and results_dir is not None:
            run = load_run(results_dir, *src)
            if run is not None:
                done[src] = run
    first = [a for a in dict.fromkeys(wanted + sorted(sources, key=str))
             if a not in done and not needs_l1_source(a[0])]
    for pair, run in zip(first, _train_and_save(first, results_dir, progress)):
        done[pair] = run
    second = [a for a in wanted if a not in done]
    if second:
        masks = {a: torch.tensor(done[(dataclasses.replace(a[0], regime="learned"), a[1])].mask)
                 for a in second}
        for pair, run in zip(second, _train_and_save(second, results_dir, progress, masks)):
            done[pair] = run
    return [done[a] for a in wanted]


def _train_and_save(agents, results_dir, progress, l1_masks=None) -> list[RunResult]:
    if not agents:
        return []
    checkpoint = checkpoint_path(results_dir, agents)
    runs = train_population(agents, progress, l1_masks, checkpoint)
    if results_dir is not None:
        for run in runs:
            _write_atomic(result_path(results_dir, run.config, run.seed), run.to_json())
        checkpoint.unlink(missing_ok=True)
    return runs


def episodes_frame(runs: Iterable[RunResult]):
    """Tidy per-episode table: one row per (run, episode) with the agent's config and seed."""
    import pandas as pd

    rows = []
    for run in runs:
        c = run.config
        for i, (frame, ret) in enumerate(zip(run.episode_frames, run.episode_returns)):
            rows.append((c.env, c.arch, c.regime, run.seed, i, frame, ret, c.key()))
    return pd.DataFrame(rows, columns=["env", "arch", "regime", "seed", "episode", "frame",
                                       "return", "key"])


def load_results(results_dir: str | Path):
    """Every completed run under results_dir, as a tidy per-episode DataFrame."""
    runs = [read_run(p) for p in sorted(Path(results_dir).glob("*/seed_*.json"))]
    return episodes_frame(r for r in runs if r is not None)


# ----------------------------------------------------------------------------------------------
# Profiles: how much the book trains
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """How much the book trains. Shorter profiles shrink the DQN schedule with the frame budget so
    that a short run still explores, learns and refreshes its target; `paper` is the reference."""
    frames: int
    seeds: tuple[int, ...]
    schedule: dict = dataclasses.field(default_factory=dict)
    l1_coefs: tuple[float, ...] = (1e-6, 1e-5, 1e-4)
    l1_seeds: tuple[int, ...] | None = None
    """Seeds of the L1 coefficient sweep; None: the profile's seeds."""
    cnn_seeds: tuple[int, ...] | None = None
    """Seeds of minatar_cnn, the check against MinAtar's own DQN; None: the profile's seeds."""
    trains_in_book: bool = True
    """False: the book only reads this profile's runs (made by `sweep`), and refuses to start
    while any is missing rather than train for hours."""

    @property
    def coef_seeds(self) -> tuple[int, ...]:
        return self.seeds if self.l1_seeds is None else self.l1_seeds

    @property
    def check_seeds(self) -> tuple[int, ...]:
        return self.seeds if self.cnn_seeds is None else self.cnn_seeds


PROFILES = {
    "smoke": Profile(800, (0,), dict(learning_starts=200, eps_decay_frames=300, replay_size=800,
                                     target_update=100, pan_frames=1_000, hidden_units=400,
                                     log_every=200), l1_coefs=(1e-5, 1e-3)),
    "quick": Profile(10_000, (0, 1), dict(learning_starts=1_000, eps_decay_frames=5_000,
                                          replay_size=10_000, target_update=250, pan_frames=20_000,
                                          log_every=1_000)),
    # MinAtar's reference DQN schedule unchanged, a tenth of its frames: 10 seeds for the claims'
    # architectures, 5 for the check against MinAtar's DQN, 3 per L1 coefficient.
    "study": Profile(500_000, tuple(range(10)), l1_coefs=(1e-6, 1e-5, 1e-4), l1_seeds=(0, 1, 2),
                     cnn_seeds=tuple(range(5)), trains_in_book=False),
    "paper": Profile(5_000_000, tuple(range(30)), l1_coefs=(1e-6, 1e-5, 1e-4, 1e-3)),
}


def profile_config(profile: str, **fields) -> Config:
    """The Config of one run of a book profile; fields override the profile's schedule."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not allowed; expected one of {', '.join(PROFILES)}")
    p = PROFILES[profile]
    return Config(**{"frames": p.frames, **p.schedule, **fields})


def train_profile(profile: str, envs: Sequence[str], archs: Sequence[str], regimes: Sequence[str],
                  results_dir: str | Path, seeds: Sequence[int] | None = None, frames: int | None = None,
                  progress: bool = True, **fields):
    """Train (or load from results_dir) every env x arch x regime of a book profile; each game is
    one population. Returns the tidy per-episode DataFrame."""
    profile_config(profile)  # rejects an unknown profile
    seeds = list(seeds or PROFILES[profile].seeds)
    over = dict(fields, **({"frames": frames} if frames else {}))
    runs = []
    for env in envs:
        configs = [profile_config(profile, env=env, arch=a, regime=r, **over) for r in regimes for a in archs]
        runs += train(configs, seeds, results_dir, progress)
    return episodes_frame(runs)


@functools.lru_cache(maxsize=None)
def channel_names(env: str) -> tuple[str, ...]:
    from minatar import Environment

    names = Environment(env).env.channels
    return tuple(sorted(names, key=names.get))


# ----------------------------------------------------------------------------------------------
# Sweeps: every run a profile's notebooks need, in populations, on this machine or on Slurm
# ----------------------------------------------------------------------------------------------
FIGURE_ARCHS = ("dense", "random", "spatial", "predictive", "l1", "dense_wide")
EQUAL_WEIGHT_ARCHS = ("dense", "random", "spatial", "predictive")
"""The architectures of equal hidden weights that the abstract's claims compare."""


def _sweep_order(run: tuple[Config, int]) -> tuple:
    """The order a sweep trains runs in: what the planned claim tests compare first (the equal-weight
    architectures, then L1, whose frozen runs need its learned ones), the width control's learned
    runs, the dearest, last; the two games alternate within each step."""
    cfg, seed = run
    default_l1 = cfg.l1_coef == Config.l1_coef
    step = (0 if cfg.arch in EQUAL_WEIGHT_ARCHS else
            1 if cfg.arch == "l1" and default_l1 and cfg.regime == "learned" else
            2 if cfg.arch == "l1" and cfg.regime == "frozen" else
            3 if cfg.arch == "dense_wide" and cfg.regime == "frozen" else
            5 if cfg.arch == "dense_wide" else 4)
    return step, cfg.regime, cfg.arch, cfg.l1_coef, cfg.env, seed


def profile_runs(profile: str, envs: Sequence[str] = tuple(CHANNELS), extra_archs: Sequence[str] = (),
                 **fields) -> list[tuple[Config, int]]:
    """Every (config, seed) that chapters 03 to 05 of a profile read: each arch x regime of
    Figures 1 and 2 (and of extra_archs, such as registered masks), minatar_cnn, and the L1
    coefficient sweep, in the order a sweep trains them (_sweep_order)."""
    profile_config(profile)  # rejects an unknown profile
    p = PROFILES[profile]
    runs = []
    for env in envs:
        for regime in ("frozen", "learned"):
            runs += [(profile_config(profile, env=env, arch=a, regime=regime, **fields), s)
                     for a in FIGURE_ARCHS + tuple(extra_archs) for s in p.seeds]
        runs += [(profile_config(profile, env=env, arch="minatar_cnn", **fields), s) for s in p.check_seeds]
        runs += [(profile_config(profile, env=env, arch="l1", l1_coef=c, **fields), s)
                 for c in p.l1_coefs for s in p.coef_seeds]
    return sorted(dict.fromkeys(runs), key=_sweep_order)


def _stored_under_another_version(results_dir: str | Path, cfg: Config, seed: int) -> bool:
    """Whether results_dir holds this run made by another ALGORITHM_VERSION of the same config."""
    for path in Path(results_dir).glob(f"{cfg.env}_{cfg.arch}_{cfg.regime}_*/seed_{seed}.json"):
        try:
            blob = json.loads(path.read_text())
            stored = Config(**blob["config"])
        except (OSError, ValueError, KeyError, TypeError):  # unreadable, or fields since renamed
            continue
        same_experiment = dataclasses.replace(stored, **{k: getattr(cfg, k) for k in NOT_IN_KEY}) == cfg
        if same_experiment and blob.get("algorithm_version") != ALGORITHM_VERSION:
            return True
    return False


def missing_runs(profile: str, results_dir: str | Path) -> str | None:
    """None if results_dir holds every run of the profile; else one line naming what is missing
    (and whether it is stale: its config stored under another algorithm version) and the
    command that makes it."""
    runs = profile_runs(profile)
    missing = [(c, s) for c, s in runs if not result_path(results_dir, c, s).exists()]
    if not missing:
        return None
    stale = sum(1 for c, s in missing if _stored_under_another_version(results_dir, c, s))
    first = result_path(results_dir, *missing[0]).relative_to(results_dir)
    return (f"{len(missing)} of {len(runs)} runs of profile {profile} are missing from {results_dir}"
            + (f" ({stale} stored under another algorithm version)" if stale else "")
            + f", e.g. {first}; make them with: python sparse_dqn.py sweep --profile {profile} --out {results_dir}")


def plan_populations(runs: Sequence[tuple[Config, int]], max_agents: int) -> list[list[tuple[Config, int]]]:
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


@contextlib.contextmanager
def claimed(results_dir: str | Path, runs: Sequence[tuple[Config, int]]):
    """Hold the runs of one population for this process, so that sweeps sharing a store (several
    workers on one machine, or on hosts sharing a file system) train each run once. Yields None
    when every run is held here, else a line naming the worker holding one. The holds are flock()s
    on files under results_dir/.claims: the kernel drops them when their process ends, so a killed
    worker leaves nothing to clean up. A frozen L1 run also holds the learned run it needs."""
    import fcntl
    import socket

    folder = Path(results_dir) / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    names = {f"{c.key()}_{run_name(c, s)}" for c, s in runs}
    names |= {f"{dataclasses.replace(c, regime='learned').key()}_{run_name(c, s)}"
              for c, s in runs if c.arch == "l1" and c.regime == "frozen"}
    held, holder = [], None
    try:
        for name in sorted(names):
            f = open(folder / f"{name}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f"{name} is held by {f.read().strip() or 'another worker'}"
                f.close()
                break
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            held.append(f)
        yield holder
    finally:
        for f in held:
            f.close()  # closing drops the flock


class SweepJob:
    """One population of a sweep as a callable, for submitit: rerun after preemption or a time
    limit, it resumes from the population's checkpoint."""

    def __init__(self, runs, results_dir, masks=None):
        self.runs, self.results_dir = runs, str(results_dir)
        self.masks = masks if masks is not None else {c.arch: MASKS[c.arch] for c, _ in runs if c.arch in MASKS}

    def __call__(self) -> int:
        for name, fn in self.masks.items():  # a fresh Python on the cluster knows only the built-ins
            MASKS.setdefault(name, fn)
        with claimed(self.results_dir, self.runs) as holder:
            if holder:  # another sweep trains these runs
                print(f"skipped: {holder}", file=sys.stderr)
                return 0
            return len(train_runs(self.runs, self.results_dir, progress=False))

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SweepJob(self.runs, self.results_dir, self.masks))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} hours"


def measured_rate(population: Sequence[tuple[Config, int]], frames: int = 200) -> float:
    """Agent-steps/s of this population's learning frames, from a short run of its shape: its
    set-up (PAN and replay cut short) and its random play before learning are not timed."""
    short = [(dataclasses.replace(c, frames=2 * frames, learning_starts=frames, log_every=frames,
                                  replay_size=min(c.replay_size, 10_000), pan_frames=min(c.pan_frames, 5_000)), s)
             for c, s in population]
    marks = []  # the loop reports when it starts and after each block: learning is the last block
    train_runs(short, None, progress=lambda _: marks.append(time.perf_counter()))
    return len(short) * frames / (marks[-1] - marks[-2])


def sweep(profile: str, envs: Sequence[str], results_dir: str | Path, max_agents: int = 64,
          executor: str = "local", dry_run: bool = False, slurm: dict | None = None, progress: bool = True,
          device: str = "cpu", extra_archs: Sequence[str] = ()):
    """Train every run of a profile that results_dir lacks (resuming checkpointed populations),
    grouped into populations of at most max_agents; or, with dry_run, print the plan and its
    expected time from a short measured rate. Returns the populations it planned."""
    runs = profile_runs(profile, envs, extra_archs, device=device)
    todo = [r for r in runs if load_run(results_dir, *r) is None]
    populations = plan_populations(todo, max_agents)
    steps = sum(c.frames for c, _ in todo)
    if dry_run:
        print(f"{profile}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to train in "
              f"{len(populations)} populations ({steps:,} agent-steps)")
        rates, total = {}, 0.0
        for i, pop in enumerate(populations):
            members = tuple(sorted(f"{c.arch}/{c.regime}" for c, _ in pop))
            shape = (pop[0][0].env, members)
            if shape not in rates:  # populations differ many times over in speed: each shape is timed
                rates[shape] = measured_rate(pop)
            seconds = sum(c.frames for c, _ in pop) / rates[shape]
            total += seconds
            print(f"  population {i}: {pop[0][0].env}, {len(pop)} agents: {', '.join(sorted(set(members)))}; measured "
                  f"{rates[shape]:,.0f} agent-steps/s, about {_duration(seconds)}", flush=True)
        if populations:
            print(f"about {_duration(total)} on this machine for one sweep; sweeps sharing the results "
                  "directory split the populations between them")
        return populations
    check_results_dir(results_dir)
    if executor == "slurm":
        return _sweep_slurm(populations, results_dir, slurm or {})
    from tqdm import tqdm

    bar = tqdm(total=sum(c.frames for c, _ in runs), initial=sum(c.frames for c, _ in runs) - steps,
               unit="agent-frame", unit_scale=True, desc=f"sweep {profile}", file=sys.stderr,
               mininterval=5.0, disable=not progress)
    try:
        for pop in populations:
            with claimed(results_dir, pop) as holder:
                if holder:
                    tqdm.write(f"skipped a population of {len(pop)} that another worker trains ({holder})",
                               file=sys.stderr)
                    continue
                train_runs(pop, results_dir, progress=bar.update)
    finally:
        bar.close()
    return populations


# submitit requeues a preempted job by running `scontrol requeue` inside it. Slurm then sends
# SIGTERM to the job's processes, scontrol among them, and when that arrives before scontrol exits
# submitit takes the requeue for a failure and writes the job's result as an error (seen on a
# one-node test cluster). Jobs find this scontrol first on their PATH: it ignores SIGTERM.
SCONTROL_IGNORING_SIGTERM = """#!/bin/sh
trap '' TERM
PATH=${PATH#*:}
exec scontrol "$@"
"""


def scontrol_shim(folder: str | Path) -> Path:
    """Write the scontrol that ignores SIGTERM (SCONTROL_IGNORING_SIGTERM) into folder/bin."""
    shim = Path(folder) / "bin" / "scontrol"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(SCONTROL_IGNORING_SIGTERM)
    shim.chmod(0o755)
    return shim


def slurm_executor(results_dir: str | Path, **options):
    """submitit's Slurm executor for this module's jobs (SweepJob): logs and pickles under
    results_dir/.submitit, this module on the jobs' PYTHONPATH; options go to update_parameters."""
    import submitit

    folder = Path(results_dir) / ".submitit"
    shim = scontrol_shim(folder)
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    here = str(Path(__file__).resolve().parent)
    ex.update_parameters(slurm_setup=[f"export PYTHONPATH={here}${{PYTHONPATH:+:$PYTHONPATH}}",
                                      f"export PATH={shim.parent.resolve()}:$PATH"], **options)
    return ex


def _sweep_slurm(populations, results_dir, options: dict):
    """One Slurm job per population through submitit; a preempted or timed-out job is requeued
    and resumes from its checkpoint. Waits for every job."""
    ex = slurm_executor(results_dir, **{k: v for k, v in options.items() if v is not None})
    jobs = [ex.submit(SweepJob(pop, str(Path(results_dir).resolve()))) for pop in populations]
    for job in jobs:
        job.result()
    return populations


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
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
        spec.loader.exec_module(module)
        try:  # Slurm jobs unpickle the masks on nodes that cannot import this file by name
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)
        except ImportError:
            pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparse_dqn.py", description=__doc__.split("\n\n")[0])
    masks_help = "a Python file that registers masks with register_mask (repeatable)"
    parser.add_argument("--masks", action="append", default=[], metavar="FILE", help=masks_help)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    tr = sub.add_parser("train", help="train a population and write its results",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        kind = _bool if f.type in (bool, "bool") else type(f.default)
        extra = {"choices": {"env": list(CHANNELS), "arch": ARCHS + tuple(MASKS), "regime": REGIMES}[f.name]} \
            if f.name in ("env", "arch", "regime") else {}
        tr.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default,
                        help=f.metadata["doc"], **extra)
    tr.add_argument("--seeds", type=int, nargs="+", default=[0], help="agent seeds")
    tr.add_argument("--out", type=Path, default=Path("results"), help="results directory")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    sw = sub.add_parser("sweep", help="train every run a book profile needs, resumably",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sw.add_argument("--profile", required=True, choices=list(PROFILES), help="book profile")
    sw.add_argument("--envs", nargs="+", default=list(CHANNELS), choices=list(CHANNELS))
    sw.add_argument("--out", type=Path, help="results directory (default: results/<profile>)")
    sw.add_argument("--device", default="cpu", help="torch device of every population")
    sw.add_argument("--extra-archs", nargs="+", default=[], choices=list(MASKS), metavar="ARCH",
                    help="registered masks to train in both regimes beside the figures' archs")
    sw.add_argument("--max-agents", type=int, default=64, help="agents per population")
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


def _train_command(parser, args) -> int:
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    try:
        cfg = Config(**fields)
        check_device(cfg.device)
        check_results_dir(args.out)
    except ValueError as err:
        parser.error(str(err))
    runs = train(cfg, args.seeds, args.out, progress=not args.no_progress)
    for run in runs:
        print(f"{cfg.env} {cfg.arch} {cfg.regime} seed {run.seed}: {len(run.episode_returns)} episodes, "
              f"mean return of the last 100 = {run.final_return():.2f} -> "
              f"{result_path(args.out, cfg, run.seed)}")
    return 0


def _sweep_command(parser, args) -> int:
    out = args.out or Path("results") / args.profile
    try:
        if args.max_agents < 1:
            raise ValueError(f"--max-agents={args.max_agents} is not allowed; expected an integer >= 1")
        check_device(args.device)
        if not args.dry_run:
            check_results_dir(out)
    except ValueError as err:
        parser.error(str(err))
    slurm = {"slurm_partition": args.slurm_partition, "timeout_min": args.slurm_time_min,
             "gpus_per_node": args.slurm_gpus, "cpus_per_task": args.slurm_cpus, "mem_gb": args.slurm_mem_gb}
    sweep(args.profile, args.envs, out, args.max_agents, args.executor, args.dry_run, slurm,
          progress=not args.no_progress, device=args.device, extra_archs=args.extra_archs)
    return 0


if __name__ == "__main__":
    import sparse_dqn  # run as the importable module, so that mask files and Slurm jobs share its state

    sys.exit(sparse_dqn.main())
