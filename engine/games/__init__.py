"""MinAtar as batched torch state: N games of one kind step together on one device.

Every rule of minatar 1.0.15 (the reference; tests/test_games.py compares frame by frame),
including sticky actions (one draw per act) and the last action kept across episodes. Draws come
in as tensors, so a test can feed the very numbers that minatar's own RandomState produces.

A game is a module here and one entry in GAMES: a BatchedGame subclass with `channels` and the
rules as torch ops (`step`, `observe`, `reset`). Its C++ and Triton rules are optional: a game
whose kernels lack them runs the torch ops. Everything that lists games reads GAMES."""
import functools

from engine.games.base import BatchedGame
from engine.games.breakout import BatchedBreakout
from engine.games.space_invaders import BatchedSpaceInvaders

GAMES = {"breakout": BatchedBreakout, "space_invaders": BatchedSpaceInvaders}


def make_games(env: str, n: int, sticky_action_prob: float, ramping: bool, device) -> BatchedGame:
    return GAMES[env](n, sticky_action_prob, ramping, device)


@functools.lru_cache(maxsize=None)
def channel_names(env: str) -> tuple[str, ...]:
    """MinAtar's names of a game's channels, in channel order."""
    from minatar import Environment

    names = Environment(env).env.channels
    return tuple(sorted(names, key=names.get))
