"""Sparse DQN on MinAtar: the method of Davelouis, Martin & Bowling, "On the Interplay Between
Sparsity and Training in Deep Reinforcement Learning" (arXiv 2501.16729), in one module.

Read top to bottom: the configuration (every choice a documented field), the connectivity masks
(dense, random, spatial, predictive via Prediction Adapted Neighbourhoods, L1, and your own), the
sparse Q-network, the DQN agent and its update, and `train(config, seeds)`, which trains many
agents of one game at once as a population in batched tensors.

Beside it, `engine/` makes it fast (batched games, random streams, replay, C++ and Triton
kernels, each the same bits as the torch code here) and `study/` runs studies (the result store,
checkpoints, profiles, sweeps, Slurm and the command line, `python sparse_dqn.py --help`).

Observations are flattened channel-major: input index d = channel * 100 + row * 10 + col.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

import engine  # noqa: F401  before torch: it sets OpenMP's wait policy
import torch
import torch.nn.functional as F

from engine import backends
from engine.backends import SparsePlan, batched_linear, check_device, sparse_plan
from engine.games import GAMES, make_games
from engine.games.base import GRID
from engine.replay import Replay
from engine.streams import agent_keys, stream_seed, uniform

CHANNELS = {name: game.channels for name, game in GAMES.items()}
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
    env: str = _field("breakout", "MinAtar game: " + " or ".join(GAMES))
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

        for f in dataclasses.fields(self):  # the API takes what the command line takes
            value, kind = getattr(self, f.name), {"int": numbers.Integral, "float": numbers.Real,
                                                 "bool": bool, "str": str}[f.type]
            if not isinstance(value, kind) or (f.type in ("int", "float") and isinstance(value, bool)):
                bad(f.name, f"{'an' if f.type == 'int' else 'a'} {f.type}")

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
    g = torch.Generator().manual_seed(stream_seed(seed, "random-mask"))
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
    g = torch.Generator().manual_seed(stream_seed(seed, "tie-break"))
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
    env = make_env(cfg, stream_seed(seed, "pan-env"))
    rng = np.random.default_rng(stream_seed(seed, "pan-policy"))
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


def pan_predictors(cfg: Config, seed: int):
    """PAN's predictors for this config and seed (cached): weights, TD-error curve, on-rates."""
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
    on_rate = pan_predictors(cfg, seed)[2]
    varies = torch.nonzero((on_rate > 0) & (on_rate < 1)).flatten()
    return varies[torch.arange(cfg.hidden_units) % len(varies)] if len(varies) else centres


def mask_centres(cfg: Config, seed: int) -> torch.Tensor:
    """The input each hidden unit of this architecture is centred on."""
    return predictive_centres(cfg, seed) if cfg.arch == "predictive" else unit_centres(cfg)


def predictive_mask(cfg: Config, seed: int) -> tuple[torch.Tensor, list]:
    """PAN neighbourhoods: for each centre c, the k inputs with the largest |w| in c's predictor,
    trained on `pan_frames` frames of a uniformly random policy, then fixed. Inputs with equal |w|
    (most often zero: no evidence) are taken nearest the centre first, or at random with
    pan_idle='random'. Returns the mask and the predictors' TD-error curve."""
    w, log, _ = pan_predictors(cfg, seed)
    if cfg.pan_idle == "random":
        return top_k_by_magnitude(w, cfg.k, seed)[unit_centres(cfg)], log
    near = _nearest_first(cfg.env)
    return near.gather(1, _largest_first(w.abs().gather(1, near), cfg.k))[predictive_centres(cfg, seed)], log


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


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | SparsePlan) -> torch.Tensor:
    """Each unit sees only its k inputs: out[n, u, b] = sum_j weight[n, u, j] * x[n, b, mask[n, u, j]].
    x (N, B, inputs), weight and mask (N, units, k) -> (N, units, B). Equal to x @ dense-masked
    weight, in values and gradients; its cost grows with units x k, never units x inputs. In torch
    operations (engine.backends: a gather on the CPU, a masked-dense matmul on a GPU)."""
    plan = mask if isinstance(mask, SparsePlan) else sparse_plan(mask, x.shape[2])
    return backends.sparse_linear(x, weight, plan)


def sparse_relu_layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      mask: torch.Tensor | SparsePlan) -> torch.Tensor:
    """The sparse hidden layer: relu(sparse_linear(x, weight, mask) + bias), (N, units, B). x may be
    bool (binary inputs, as observations are). engine.backends runs it in the C++ or Triton
    kernels where they are built, else as written here."""
    plan = mask if isinstance(mask, SparsePlan) else sparse_plan(mask, x.shape[2])
    fast = backends.sparse_relu_layer(x, weight, bias, plan)
    if fast is not None:
        return fast
    x = x.to(weight.dtype) if x.dtype == torch.bool else x
    return F.relu(sparse_linear(x, weight, plan) + bias.unsqueeze(2))


def init_params(cfg: Config, seed: int, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One agent's initial parameters, PyTorch's default Linear/Conv init (uniform +-1/sqrt(fan_in)),
    drawn from the agent's own stream so that populations are reproducible member by member."""
    g = torch.Generator().manual_seed(stream_seed(seed, "init"))

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
        q = backends.sparse_q_values(x, params, plan)  # the layer and the head in one C++ pass
        if q is not None:
            return q
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
        fused, acts = backends.fused_rmsprop(self.params)
        acting = act[0] if act is not None and acts else None
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
                     checkpoint=None) -> list[RunResult]:
    """Train agents (config, seed) of one game in lockstep: one env step each per frame, one update
    each per frame after learning starts. Each agent has its own game, replay ring, weights,
    optimiser state and random streams, so its results do not depend on who shares the population.

    With `checkpoint` (a study.checkpoints.Checkpoint), the population resumes from it where it
    holds one, saves itself there every `checkpoint_every` frames, and stops there when asked."""
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
    game = make_games(cfg0.env, n, cfg0.sticky_action_prob, cfg0.difficulty_ramping, device)
    game.reset(torch.ones(n, dtype=torch.bool, device=device),
               uniform(keys, "reset", torch.zeros(1, dtype=torch.long, device=device)))
    replay = Replay(n, cfg0.replay_size, cfg0.input_size, device)
    episode_return = torch.zeros(n, device=device)
    episodes = [([], []) for _ in range(n)]
    sparsity = [[] for _ in range(n)]
    first_frame, updates, resumed_at = 0, 0, []
    state = checkpoint.load(device) if checkpoint is not None else None
    if state is not None:
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

    if checkpoint is not None:  # before the bar shows: who sees the loop start may stop it
        checkpoint.arm()
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
        stopping = checkpoint is not None and checkpoint.stop_requested() and frame < cfg0.frames
        if checkpoint is not None and (frame % cfg0.checkpoint_every == 0 or stopping) and frame < cfg0.frames:
            checkpoint.save({
                "frame": frame, "updates": updates, "episodes": episodes, "sparsity": sparsity,
                "resumed_at": resumed_at, "wall": time.perf_counter() - start,
                "episode_return": episode_return, "game": game.state_dict(),
                "replay": replay.state_dict(), "groups": [g.state_dict() for g in groups]})
        if stopping:
            if bar is not None:
                bar.close()
            checkpoint.stop(frame, cfg0.frames)
        if report is not None:
            report(n * block)
        if bar is not None:
            recent = [np.mean(e[1][-100:]) for e in episodes if e[1]]
            bar.update(frame - bar.n)
            bar.set_postfix(ret=f"{np.mean(recent):.2f}" if recent else "-", refresh=False)
    if checkpoint is not None:
        checkpoint.disarm()
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
                                 provenance=backends.provenance(cfg0.device, n), params=final))
    return results


def _by_member(values: list[tuple[_Group, torch.Tensor]]) -> torch.Tensor:
    """The population's (N,) tensor from each group's values for its members."""
    if len(values) == 1 and values[0][0].everyone:
        return values[0][1]
    out = values[0][1].new_empty(sum(len(g.members) for g, _ in values))
    for g, v in values:
        out[g.members] = v
    return out


# Frames per block of the training loop: draws are made, and episode ends collected, per block.
FRAME_BLOCK = 500


def _next_stop(cfg: Config, frame: int) -> int:
    """The next frame after `frame` at which the loop must look up: a sparsity record or a
    checkpoint is due."""
    return min((frame // every + 1) * every for every in (cfg.log_every, cfg.checkpoint_every))


def _progress(frames: int, agents: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm import tqdm  # plain-text bar: works in terminals, logs and papermill alike

    return tqdm(total=frames, initial=initial, unit="frame", desc=f"{agents} agent{'s' * (agents > 1)}",
                mininterval=2.0, file=sys.stderr)


def train(configs: Config | Sequence[Config], seeds: Sequence[int], results_dir: str | Path | None = None,
          progress: bool | Callable[[int], None] = True) -> list[RunResult]:
    """Train every (config, seed) pair of one game as one population and return their results.

    With results_dir (a study.store.Store, or the folder of one), completed runs are loaded
    instead of recomputed, new ones are saved there, and the population checkpoints itself there.
    Frozen L1 agents first need the learned L1 run of the same game and seed: it is loaded, or
    trained in the same call."""
    configs = [configs] if isinstance(configs, Config) else list(configs)
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds={seeds!r} is not allowed; expected a non-empty list of integers >= 0")
    wanted = [(cfg, int(s)) for cfg in configs for s in seeds]
    return train_runs(wanted, results_dir, progress)


def train_runs(wanted: Sequence[tuple[Config, int]], results_dir=None,
               progress: bool | Callable[[int], None] = True, wait: bool = True) -> list[RunResult | None]:
    """train() for any list of (config, seed) pairs of one game. progress may be a function, called
    with the agent-frames done as they are done (a sweep's one progress bar). With a store, a run
    that another process is training is waited for and loaded (or, if its holder dies first,
    trained here); with wait=False it is left to its holder and returned as None."""
    wanted = list(wanted)
    _check_population(wanted)
    check_device(wanted[0][0].device)
    store = results_dir
    if isinstance(results_dir, (str, os.PathLike)):
        from study.store import Store  # the store reads RunResult and Config: it imports this module

        store = Store(results_dir)
    done = {}

    def needs_l1_source(cfg):
        return cfg.arch == "l1" and cfg.regime == "frozen"

    def source(pair):
        return dataclasses.replace(pair[0], regime="learned"), pair[1]

    sources = sorted({source(a) for a in wanted if needs_l1_source(a[0])}, key=str)
    for pair in dict.fromkeys(wanted + sources) if store is not None else ():
        run = store.load(*pair)
        if run is not None:
            done[pair] = run
    first = [a for a in dict.fromkeys(wanted + sources) if a not in done and not needs_l1_source(a[0])]
    second = [a for a in wanted if needs_l1_source(a[0]) and a not in done]
    for agents in (first, second):  # frozen L1 agents after the learned runs whose masks they take
        agents = [a for a in agents if not needs_l1_source(a[0]) or source(a) in done]
        masks = {a: torch.tensor(done[source(a)].mask) for a in agents if needs_l1_source(a[0])}
        if store is None and agents:
            done.update(zip(agents, train_population(agents, progress, masks)))
        elif agents:  # each run once across the processes sharing the store
            store.train_missing(agents, lambda mine, checkpoint: train_population(
                mine, progress, {a: masks[a] for a in mine if a in masks}, checkpoint), wait, done)
    return [done.get(a) for a in wanted]





if __name__ == "__main__":
    from study.cli import main  # which imports this file as the module sparse_dqn, as mask files and Slurm jobs do

    sys.exit(main())
