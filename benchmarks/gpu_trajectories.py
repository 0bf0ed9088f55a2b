"""CPU and GPU play the same games: one population of batched MinAtar games, stepped on both
devices with the same counter-based draws (random actions, sticky draws, reset draws), must give
identical observations, rewards and terminals at every frame. Exits 1 on the first difference."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparse_dqn as sd  # noqa: E402


def play(env: str, device: str, agents: int, frames: int):
    cfg = sd.Config(env=env, device=device)
    keys = sd.agent_keys(range(agents), device)
    game = sd.make_games(cfg, agents)
    game.reset(torch.ones(agents, dtype=torch.bool, device=device),
               sd.uniform(keys, "reset", torch.zeros(1, dtype=torch.long, device=device)))
    steps = torch.arange(frames, device=device).view(1, -1)
    actions = (sd.uniform(keys, "action", steps) * sd.NUM_ACTIONS).long()
    sticky, reset = sd.uniform(keys, "sticky", steps), sd.uniform(keys, "reset", steps + 1)
    for t in range(frames):
        reward, done = game.act(actions[:, t], sticky[:, t])
        yield game.observe().cpu(), reward.cpu(), done.cpu()
        game.reset(done.bool(), reset[:, t])


def main(agents: int = 256, frames: int = 5_000) -> int:
    for env in sd.CHANNELS:
        for t, (a, b) in enumerate(zip(play(env, "cpu", agents, frames), play(env, "cuda", agents, frames))):
            if not all(torch.equal(x, y) for x, y in zip(a, b)):
                print(f"{env}: CPU and GPU differ at frame {t}")
                return 1
        print(f"{env}: {agents} agents x {frames} frames identical on CPU and GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
