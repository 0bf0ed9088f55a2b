"""The batched games against minatar itself, frame by frame, with the same draws: a twin numpy
RandomState per agent makes the calls minatar's own makes, in the same order. Each test runs two
implementations of the rules: torch ops and the C++ kernels (the CPU's default); tests/test_triton.py
runs these tests on the third, the Triton kernels (the GPU's default)."""
import copy

import numpy as np
import pytest
import torch
from minatar import Environment

import sparse_dqn as sd


class Twins:
    """N minatar environments and the batched game, driven by the same actions and draws."""

    def __init__(self, env: str, seeds, native: bool | None, sticky=0.1, ramping=True, device="cpu"):
        self.env, self.device = env, device
        self.ref = []
        for s in seeds:
            e = Environment(env, sticky_action_prob=sticky, difficulty_ramping=ramping)
            e.seed(s)
            self.ref.append(e)
        self.twin = [np.random.RandomState(s) for s in seeds]
        self.game = sd.GAMES[env](len(seeds), sticky, ramping, device=device, native=native)
        self.episodes = 0
        everyone = torch.ones(len(seeds), dtype=torch.bool, device=device)
        for e in self.ref:
            e.reset()
        self.game.reset(everyone, torch.tensor([self._reset_draw(t) for t in self.twin], device=device))

    def _reset_draw(self, twin) -> float:
        if self.env != "breakout":
            return 0.0  # Space Invaders draws nothing at reset
        return 0.75 if twin.randint(2) else 0.25

    def observations(self):
        return np.stack([sd.observe(e) for e in self.ref]), self.game.observe().cpu().numpy().astype(bool)

    def step(self, actions):
        rewards, terminals = zip(*(e.act(int(a)) for e, a in zip(self.ref, actions)))
        sticky = torch.tensor([t.rand() for t in self.twin], dtype=torch.float64, device=self.device)
        r, d = self.game.act(torch.as_tensor(actions, dtype=torch.long, device=self.device), sticky)
        assert r.tolist() == [float(x) for x in rewards]
        assert d.bool().tolist() == list(terminals)
        ref_obs, obs = self.observations()
        np.testing.assert_array_equal(obs, ref_obs)  # the terminal frame's observation too
        done = torch.tensor(terminals)
        draws = torch.zeros(len(self.ref), dtype=torch.float64)
        for i in np.flatnonzero(terminals):
            self.ref[i].reset()
            draws[i] = self._reset_draw(self.twin[i])
        self.game.reset(done.to(self.device), draws.to(self.device))
        self.episodes += int(done.sum())
        ref_obs, obs = self.observations()
        np.testing.assert_array_equal(obs, ref_obs)
        return np.array(rewards), np.array(terminals)


@pytest.fixture(params=[False, True], ids=["torch", "native"])
def native(request):
    if request.param:
        request.getfixturevalue("cpp_kernels")
    return request.param


def random_play(env: str, native: bool | None, device="cpu", agents=32, episodes=200):
    twins = Twins(env, seeds=range(100, 100 + agents), native=native, device=device)
    actions = np.random.default_rng(7)
    twins.step(np.full(agents, 5))  # every agent's last action is now 5: sticky draws repeat it
    while twins.episodes < episodes:
        twins.step(actions.integers(0, 6, agents))
    assert twins.episodes >= episodes
    return twins


@pytest.mark.parametrize("env", ["breakout", "space_invaders"])
def test_random_play_matches_minatar_frame_by_frame(env, native):
    random_play(env, native)


def breakout_policy(env, rng):
    """Follow the ball; as it is about to land, catch it at random with the paddle's middle
    (straight bounce) or its edge (the ball turns), so that its path sweeps the whole wall."""
    g = env.env
    dx = (-1, 1, 1, -1)[g.ball_dir]
    down = g.ball_dir in (2, 3)
    if down and g.ball_y == 8:
        options = [c for c in (g.ball_x, g.ball_x + dx) if 0 <= c <= 9 and abs(c - g.pos) <= 1]
        target = options[rng.integers(len(options))] if options else g.ball_x
    else:
        target = g.ball_x + dx if down else g.ball_x
    return 3 if g.pos < target else 1 if g.pos > target else 0


def test_scripted_breakout_clears_every_brick_and_the_wall_refills(native, device="cpu"):
    twins = Twins("breakout", seeds=range(4), native=native, sticky=0.0, device=device)
    rng = np.random.default_rng(0)
    refilled = np.zeros(4, bool)
    for _ in range(2_000):
        before = [e.env.brick_map.sum() for e in twins.ref]
        twins.step([breakout_policy(e, rng) for e in twins.ref])
        refilled |= [b == 0 and e.env.brick_map.sum() == 30 for b, e in zip(before, twins.ref)]
        if refilled.all():
            break
    assert refilled.all(), "an agent never cleared the wall"


def _hits(game, first: int, wait: int) -> bool:
    """Does `first`, then `wait` no-ops, kill an alien? Simulated on a copy of minatar's game."""
    sim = copy.deepcopy(game)
    sim.act(first)
    for _ in range(wait):
        reward, terminal = sim.act(0)
        if terminal:
            return False
        if reward:
            return True
    return False


def invaders_policy(env):
    """Step out of a falling enemy bullet's column; fire when the shot will hit; else walk under
    the alien column nearest where the aliens will be in four frames."""
    g = env.env
    danger = set(np.flatnonzero(g.e_bullet_map[5:].any(0)))
    if g.pos in danger:
        for step, action in ((-1, 1), (1, 3)):
            if 0 <= g.pos + step <= 9 and g.pos + step not in danger:
                return action
    if g.shot_timer == 0 and _hits(g, 5, 9):
        return 5
    ahead = copy.deepcopy(g)
    for _ in range(4):
        ahead.act(0)
    cols = np.flatnonzero((ahead.alien_map if ahead.alien_map.any() else g.alien_map).any(0))
    target = cols[np.argmin(abs(cols - g.pos))]
    if g.pos + np.sign(target - g.pos) in danger:
        return 0
    return 3 if g.pos < target else 1 if g.pos > target else 0


def test_scripted_space_invaders_clears_three_waves_with_ramping(native, device="cpu"):
    twins = Twins("space_invaders", seeds=range(4), native=native, sticky=0.0, device=device)
    for _ in range(3_000):
        twins.step([invaders_policy(e) for e in twins.ref])
        assert twins.game.ramp_index.tolist() == [e.env.ramp_index for e in twins.ref]
        assert twins.game.move_interval.tolist() == [e.env.enemy_move_interval for e in twins.ref]
        if min(e.env.ramp_index for e in twins.ref) >= 3:
            break
    assert min(e.env.ramp_index for e in twins.ref) >= 3
