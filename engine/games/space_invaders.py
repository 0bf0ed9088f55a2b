"""MinAtar Space Invaders as batched torch state."""
from __future__ import annotations

import torch

from engine.games.base import GRID, BatchedGame, _set_cells


SHOT_COOL_DOWN, ENEMY_MOVE_INTERVAL, ENEMY_SHOT_INTERVAL = 5, 12, 10


class BatchedSpaceInvaders(BatchedGame):
    channels = 6
    name = "space_invaders"

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
