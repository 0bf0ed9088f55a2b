"""The replay buffer of a population: one ring per agent, written in lockstep."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.backends import native_kernels


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
