"""MinAtar Breakout as batched torch state."""
from __future__ import annotations

import functools

import torch

from engine.games.base import GRID, BatchedGame, _set_cells


# Ball directions 0..3: up-left, up-right, down-right, down-left; and how each bounce maps them.
_BALL_DX, _BALL_DY = (-1, 1, 1, -1), (-1, -1, 1, 1)
_FLIP_X, _FLIP_Y, _FLIP_XY = (1, 0, 3, 2), (3, 2, 1, 0), (2, 3, 0, 1)


class BatchedBreakout(BatchedGame):
    channels = 4
    name = "breakout"

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
