"""What every batched game shares: sticky actions, state as tensors, the kernels that run it."""
from __future__ import annotations

import torch

from engine.backends import game_kernels

GRID = 10


class BatchedGame:
    """native: step and observe in compiled kernels (see game_kernels), or (False) in torch ops.
    All run the same rules on the same state tensors. A subclass names its game (`name`, the
    prefix of its kernels' functions: <name>_step, <name>_observe, <name>_reset) and its
    `channels`."""

    name: str
    channels: int

    def __init__(self, n: int, sticky_action_prob: float, device, native: bool | None = None):
        self.n, self.sticky, self.device = n, sticky_action_prob, torch.device(device)
        self.rows = torch.arange(n, device=self.device)
        self.last_action = torch.zeros(n, dtype=torch.long, device=self.device)
        kernels = game_kernels(self.device, native)
        # A game's compiled rules are optional: where the kernels lack its step, torch ops run it.
        self._kernels = kernels if hasattr(kernels, f"{self.name}_step") else None
        self._reset_kernel = getattr(self._kernels, f"{self.name}_reset", None)  # Triton's have one
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


def _set_cells(obs: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """obs (N, inputs) with obs[n, cells[n, j]] = 1. A scatter of a number, not obs[rows, ...] = 1:
    on a GPU that assignment copies its 1 from host memory, and the copy waits for all the work
    queued before it (torch.profiler, 1,024 Breakout agents on an H200: 0.26 ms of host time per
    assignment, six a frame)."""
    return obs.scatter_(1, cells, 1)
