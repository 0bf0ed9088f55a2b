"""Triton kernels for a GPU: the sparse hidden layer, the optimiser's step, and the games' frames.

The sparse layer: relu(gather-multiply-sum + bias) forward, and its weight and bias gradients in
one backward pass. A program takes one agent's block of
units and the whole batch as a (units, samples) tile; for each of the k connections it reads each
unit's index and weight once and gathers that input's values for every sample from the batch laid
out inputs-major (N, inputs, batch), where they lie side by side: one 128-byte read serves a warp.
It reads k / inputs of what the masked-dense matmul reads (9% in Breakout) and never builds the
(N, units, inputs) matrix, 2 GB for 1,024 agents.

Binary inputs (observations, given as bool) are packed first, 32 samples of one input to an int32
word (N, inputs, words): a gather then reads 4 bytes where a float batch of 32 reads 128, and the
kernels turn each bit back into the 0.0 or 1.0 the float path multiplies by (the same products).
Why: the float gathers of 1,024 Breakout agents read about 5.6 GB per forward, 7 TB/s in the
0.8 ms that forward took on an H200 (benchmarks/gpu_profile_h200_triton.txt), from its caches,
where the kernel's instructions take about a fifth of that to issue. benchmarks/triton_layer.py
times both paths; benchmarks/triton_asm.py counts what each compiles to.

The games: Breakout's and Space Invaders' step, observation and reset, the rules of
BatchedBreakout's and BatchedSpaceInvaders' torch ops and of the C++ kernels, with the C++
kernels' arguments. One launch each where the torch ops make many calls (66 for Breakout's step,
103 for Space Invaders', about 12 for an observation and 21 for a reset): on a GPU each call costs
host time, and the training loop resets and observes twice every frame.

sparse_dqn imports this module only for CUDA tensors where Triton is installed. Under
TRITON_INTERPRET=1 the same kernels run on the CPU, which is how the tests check them.

An agent's results do not depend on its population: the block sizes are fixed (no autotuning,
whose choice could change the order of a sum from one run to the next) and no program reads
another agent's data."""
import torch
import triton
import triton.language as tl

NUM_WARPS = 4


def _block_units(block_batch: int) -> int:
    """Units per program: a tile of about 2,048 (unit, sample) pairs, 16 per thread."""
    return max(16, min(128, 2048 // block_batch))


@triton.jit
def _pack(x_ptr, out_ptr, inputs, batch: tl.constexpr, BLOCK_I: tl.constexpr):
    """x (N, batch, inputs) 0/1 bytes -> out (N, inputs, words) int32: sample b of input i in bit
    b % 32 of word b // 32, bits past the batch 0."""
    n = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    live = i < inputs
    words: tl.constexpr = (batch + 31) // 32
    for word in tl.static_range(words):
        bits = tl.zeros((BLOCK_I,), dtype=tl.int32)
        for s in tl.static_range(32):
            b = word * 32 + s
            on = tl.load(x_ptr + n * batch * inputs + b * inputs + i, mask=live & (b < batch), other=0)
            bits |= (on != 0).to(tl.int32) << s
        tl.store(out_ptr + n * inputs * words + i * words + word, bits, mask=live)


@triton.jit
def _column(x_at, i, b, unit_live, live, batch: tl.constexpr, BITS: tl.constexpr, BLOCK_B: tl.constexpr):
    """Each unit's input i, for every sample b: a (units, samples) float tile. x_at points at one
    agent's xt: (inputs, batch) floats, or with BITS (inputs, words) int32 of packed samples."""
    if BITS:
        words: tl.constexpr = (batch + 31) // 32
        if BLOCK_B <= 32:  # one word a unit, read once and shifted for each sample
            word = tl.load(x_at + i * words, mask=unit_live, other=0)[:, None]
        else:
            word = tl.load(x_at + i[:, None] * words + b[None, :] // 32, mask=live, other=0)
        column = ((word >> (b[None, :] % 32)) & 1).to(tl.float32)
    else:
        column = tl.load(x_at + i[:, None] * batch + b[None, :], mask=live, other=0.0)
    return column


@triton.jit
def _forward(xt_ptr, w_ptr, bias_ptr, idx_ptr, out_ptr, units, idx_sn, x_sn, k: tl.constexpr,
             batch: tl.constexpr, BITS: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_B: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    b = tl.arange(0, BLOCK_B)
    unit_live = u < units
    live = unit_live[:, None] & (b[None, :] < batch)
    w_at = w_ptr + n * units * k + u * k
    idx_at = idx_ptr + n * idx_sn + u * k
    x_at = xt_ptr + n * x_sn  # xt (N, inputs, batch or words): a row is one input's batch
    acc = tl.zeros((BLOCK_U, BLOCK_B), dtype=tl.float32)
    for j in tl.static_range(k):  # unrolled: the k gathers can be in flight at once
        i = tl.load(idx_at + j, mask=unit_live, other=0)
        w = tl.load(w_at + j, mask=unit_live, other=0.0)
        acc += w[:, None] * _column(x_at, i, b, unit_live, live, batch, BITS, BLOCK_B)
    h = acc + tl.load(bias_ptr + n * units + u, mask=unit_live, other=0.0)[:, None]
    h = tl.maximum(h, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + n * units * batch + u[:, None] * batch + b[None, :], h, mask=live)  # out (N, units, batch)


@triton.jit
def _forward_one(x_ptr, w_ptr, bias_ptr, idx_ptr, out_ptr, units, inputs, idx_sn, k: tl.constexpr,
                 BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """_forward for a batch of one (acting): a (units, connections) tile, whose indices and weights
    are read row by row as they lie, rather than a (units, samples) tile of one sample."""
    n = tl.program_id(0).to(tl.int64)
    u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    j = tl.arange(0, BLOCK_K)
    unit_live = u < units
    live = unit_live[:, None] & (j[None, :] < k)
    at = u[:, None] * k + j[None, :]
    idx = tl.load(idx_ptr + n * idx_sn + at, mask=live, other=0)
    w = tl.load(w_ptr + n * units * k + at, mask=live, other=0.0)
    xv = tl.load(x_ptr + n * inputs + idx, mask=live, other=0.0)
    h = tl.sum(w * xv, axis=1) + tl.load(bias_ptr + n * units + u, mask=unit_live, other=0.0)
    tl.store(out_ptr + n * units + u, tl.maximum(h, 0.0, propagate_nan=tl.PropagateNan.ALL), mask=unit_live)


@triton.jit
def _backward(xt_ptr, idx_ptr, out_ptr, grad_ptr, grad_w_ptr, grad_b_ptr, units, idx_sn, x_sn, k: tl.constexpr,
              batch: tl.constexpr, BITS: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_B: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    b = tl.arange(0, BLOCK_B)
    unit_live = u < units
    live = unit_live[:, None] & (b[None, :] < batch)
    at = n * units * batch + u[:, None] * batch + b[None, :]  # out and its gradient (N, units, batch)
    h = tl.load(out_ptr + at, mask=live, other=0.0)
    g = tl.load(grad_ptr + at, mask=live, other=0.0)
    g = tl.where(h > 0.0, g, 0.0)  # through the ReLU
    tl.store(grad_b_ptr + n * units + u, tl.sum(g, axis=1), mask=unit_live)
    idx_at = idx_ptr + n * idx_sn + u * k
    gw_at = grad_w_ptr + n * units * k + u * k
    x_at = xt_ptr + n * x_sn
    for j in tl.static_range(k):  # unrolled: the k gathers can be in flight at once
        i = tl.load(idx_at + j, mask=unit_live, other=0)
        xv = _column(x_at, i, b, unit_live, live, batch, BITS, BLOCK_B)
        tl.store(gw_at + j, tl.sum(g * xv, axis=1), mask=unit_live)


def _launch(kernel, n: int, units: int, batch: int, *args, **constexprs):
    block_b = triton.next_power_of_2(batch)
    block_u = _block_units(block_b)
    kernel[(n, triton.cdiv(units, block_u))](*args, batch=batch, BLOCK_U=block_u, BLOCK_B=block_b,
                                             num_warps=NUM_WARPS, **constexprs)


def pack_samples(x: torch.Tensor) -> torch.Tensor:
    """x (N, batch, inputs) bool -> (N, inputs, words) int32, the layout the kernels gather with
    BITS: sample b of input i in bit b % 32 of word b // 32."""
    n, batch, inputs = x.shape
    words = triton.cdiv(batch, 32)
    out = torch.empty(n, inputs, words, device=x.device, dtype=torch.int32)
    _pack[(n, triton.cdiv(inputs, 256))](x.contiguous().view(torch.uint8), out, inputs, batch=batch, BLOCK_I=256,
                                         num_warps=NUM_WARPS)
    return out


def sparse_relu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """relu(sparse_linear(x, weight, index) + bias), (N, units, batch), and x laid out as the
    kernels read it, which the backward pass takes: (N, inputs, batch) floats, or for bool x
    pack_samples(x). x (N, batch, inputs) float32 or bool, weight (N, units, k), bias (N, units)
    float32; index (N or 1, units, k) int32, one table for every agent when its first dimension
    is 1."""
    n, batch, inputs = x.shape
    units, k = weight.shape[1:]
    if x.dtype == torch.bool and batch == 1:  # acting's kernel, the float path's numbers
        x = x.to(weight.dtype)
    bits = x.dtype == torch.bool
    xt = pack_samples(x) if bits else x.transpose(1, 2).contiguous()  # an input's samples side by side
    out = torch.empty(n, units, batch, device=x.device, dtype=weight.dtype)
    weight, bias = weight.contiguous(), bias.contiguous()
    idx_sn = 0 if index.shape[0] == 1 else units * k
    if batch == 1:
        _forward_one[(n, triton.cdiv(units, 32))](xt, weight, bias, index, out, units, inputs, idx_sn, k=k,
                                                  BLOCK_U=32, BLOCK_K=triton.next_power_of_2(k),
                                                  num_warps=NUM_WARPS)
    else:
        _launch(_forward, n, units, batch, xt, weight, bias, index, out, units, idx_sn, xt.stride(0), k=k,
                BITS=bits)
    return out, xt


def sparse_relu_backward(xt: torch.Tensor, index: torch.Tensor, out: torch.Tensor,
                         grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the weight (N, units, k) and bias (N, units) from the forward's xt and out
    (N, units, batch) and grad_out, the gradient of out (any strides)."""
    n, units, batch = out.shape
    k = index.shape[2]
    # The head hands grad_out over units-contiguous. Laid out as out is, the compiler gives it
    # out's layout, and a connection's sum over samples stays in its warp: in the bools' kernel,
    # 73 instead of 186 barriers for Breakout (benchmarks/triton_asm.py, sm_90), for one copy.
    grad_out = grad_out.contiguous()
    grad_w = torch.empty(n, units, k, device=out.device, dtype=out.dtype)
    grad_b = torch.empty(n, units, device=out.device, dtype=out.dtype)
    _launch(_backward, n, units, batch, xt, index, out, grad_out, grad_w, grad_b, units,
            0 if index.shape[0] == 1 else units * k, xt.stride(0), k=k, BITS=xt.dtype == torch.int32)
    return grad_w, grad_b


@triton.jit
def _centred_rmsprop(p_ptr, g_ptr, sq_ptr, mean_ptr, l1_ptr, size, per_agent, lr, alpha, keep, eps,
                     L1: tl.constexpr, BLOCK: tl.constexpr):
    at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = at < size
    p = tl.load(p_ptr + at, mask=live, other=0.0)
    g = tl.load(g_ptr + at, mask=live, other=0.0)
    if L1:
        sign = (p > 0.0).to(tl.float32) - (p < 0.0).to(tl.float32)
        g += tl.load(l1_ptr + at // per_agent, mask=live, other=0.0) * sign
    s = tl.load(sq_ptr + at, mask=live, other=0.0) * alpha + keep * g * g
    mean = tl.load(mean_ptr + at, mask=live, other=0.0)
    m = mean + keep * (g - mean)
    d = s - m * m
    avg = tl.sqrt_rn(tl.where(d > 0.0, d, 0.0)) + eps
    tl.store(p_ptr + at, p - tl.div_rn(lr * g, avg), mask=live)
    tl.store(sq_ptr + at, s, mask=live)
    tl.store(mean_ptr + at, m, mask=live)


def centred_rmsprop_step(param: torch.Tensor, grad: torch.Tensor, square_avg: torch.Tensor,
                         grad_avg: torch.Tensor, lr: float, alpha: float, eps: float,
                         l1: torch.Tensor | None = None):
    """sparse_dqn.CentredRMSprop's step for one contiguous float32 parameter, in place, in one pass
    (the C++ kernels' centred_rmsprop_step, statement for statement): torch's seven element-wise
    passes over 1,024 agents' hidden weights took about 1 ms a learning frame on an H200. l1: the
    per-agent coefficients (N,) of the parameter's leading dimension."""
    size = param.numel()
    block = 1024
    _centred_rmsprop[(triton.cdiv(size, block),)](
        param, grad, square_avg, grad_avg, grad if l1 is None else l1, size, size // len(param), lr, alpha,
        1.0 - alpha, eps, L1=l1 is not None, BLOCK=block, num_warps=NUM_WARPS)
    torch.autograd.graph.increment_version(param)  # an in-place change, as torch's own ops record it


# The games: a program takes BLOCK_N agents, each 10 x 10 grid a (agents, cells) tile, 100 cells
# of 128; a grid rolled by a row or a column is read from memory rolled.
_CELLS = tl.constexpr(128)


@triton.jit
def _agents_and_cells(agents, BLOCK_N: tl.constexpr):
    """This program's agents n (live: n < agents) and a grid's cells, with their row and column
    (valid: the 100 of 128 that are cells)."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cell = tl.arange(0, _CELLS)
    return n, n < agents, cell, cell // 10, cell % 10, cell < 100


@triton.jit
def _each(ptr, n, live):
    """Every agent's value of a per-agent state (N,)."""
    return tl.load(ptr + n, mask=live, other=0)


@triton.jit
def _set(ptr, n, which, value, BLOCK_N: tl.constexpr):
    """A per-agent int64 state (N,) set to value where `which`."""
    tl.store(ptr + n, tl.full((BLOCK_N,), value, tl.int64), mask=which)


@triton.jit
def _grid(ptr, n, live, row, col, valid):
    """Agents' 10 x 10 bool grids (N, 100), read at (row, col) for each cell: a (agents, cells) tile."""
    return tl.load(ptr + n[:, None] * 100 + (row * 10 + col)[None, :], mask=live[:, None] & valid[None, :],
                   other=0) != 0


@triton.jit
def _put_grid(ptr, n, which, cell, valid, values):
    """Agents' 10 x 10 grids (N, 100) written where `which`: values (agents, cells) or one row of
    cells for all."""
    tl.store(ptr + n[:, None] * 100 + cell[None, :], values.to(tl.int8), mask=which[:, None] & valid[None, :])


@triton.jit
def _breakout_step(ball_x_ptr, ball_y_ptr, dir_ptr, pos_ptr, last_x_ptr, last_y_ptr, strike_ptr, bricks_ptr,
                   action_ptr, reward_ptr, terminal_ptr, agents, BLOCK_N: tl.constexpr):
    """Ball directions 0..3: up-left, up-right, down-right, down-left (sparse_dqn's _BALL_DX and
    _BALL_DY); bounces flip them as its _FLIP_X (d ^ 1), _FLIP_Y (3 - d) and _FLIP_XY (d ^ 2)."""
    n, live, cell, row, col, valid = _agents_and_cells(agents, BLOCK_N)
    ball_x = _each(ball_x_ptr, n, live)
    ball_y = _each(ball_y_ptr, n, live)
    d = _each(dir_ptr, n, live)
    pos = _each(pos_ptr, n, live)
    strike = _each(strike_ptr, n, live) != 0
    action = _each(action_ptr, n, live)
    bricks = _grid(bricks_ptr, n, live, row, col, valid)

    pos = tl.where(action == 1, tl.maximum(pos - 1, 0), tl.where(action == 3, tl.minimum(pos + 1, 9), pos))
    new_x = ball_x + tl.where((d == 0) | (d == 3), -1, 1)
    new_y = ball_y + tl.where(d < 2, -1, 1)
    side = (new_x < 0) | (new_x > 9)
    new_x = tl.minimum(tl.maximum(new_x, 0), 9)
    d = tl.where(side, d ^ 1, d)
    top = new_y < 0
    new_y = tl.maximum(new_y, 0)
    d = tl.where(top, 3 - d, d)
    hit = cell[None, :] == (tl.minimum(new_y, 9) * 10 + new_x)[:, None]
    brick = ~top & (tl.max((bricks & hit).to(tl.int32), axis=1) != 0)
    score = brick & ~strike
    bricks &= ~(hit & score[:, None])
    new_y = tl.where(score, ball_y, new_y)
    d = tl.where(score, 3 - d, d)
    bottom = ~top & ~brick & (new_y == 9)
    refill = bottom & (tl.max(bricks.to(tl.int32), axis=1) == 0)
    bricks |= refill[:, None] & ((row >= 1) & (row < 4))[None, :]
    under = bottom & (ball_x == pos)
    corner = bottom & ~under & (new_x == pos)
    d = tl.where(under, 3 - d, tl.where(corner, d ^ 2, d))
    new_y = tl.where(under | corner, ball_y, new_y)
    strike = (strike | score) & brick

    tl.debug_barrier()  # the compiler may lay the stores out otherwise than the loads: reads first
    _put_grid(bricks_ptr, n, live, cell, valid, bricks)
    tl.store(last_x_ptr + n, ball_x, mask=live)
    tl.store(last_y_ptr + n, ball_y, mask=live)
    tl.store(ball_x_ptr + n, new_x, mask=live)
    tl.store(ball_y_ptr + n, new_y, mask=live)
    tl.store(dir_ptr + n, d, mask=live)
    tl.store(pos_ptr + n, pos, mask=live)
    tl.store(strike_ptr + n, strike.to(tl.int8), mask=live)
    tl.store(reward_ptr + n, score.to(tl.float32), mask=live)
    tl.store(terminal_ptr + n, (bottom & ~under & ~corner).to(tl.float32), mask=live)


@triton.jit
def _breakout_observe(ball_x_ptr, ball_y_ptr, pos_ptr, last_x_ptr, last_y_ptr, bricks_ptr, obs_ptr, agents,
                      BLOCK_N: tl.constexpr):
    n, live, cell, row, col, valid = _agents_and_cells(agents, BLOCK_N)
    ball = _each(ball_y_ptr, n, live) * 10 + _each(ball_x_ptr, n, live)
    trail = _each(last_y_ptr, n, live) * 10 + _each(last_x_ptr, n, live)
    paddle = 90 + _each(pos_ptr, n, live)
    at = obs_ptr + n[:, None] * 400 + cell[None, :]
    in_grid = live[:, None] & valid[None, :]
    tl.store(at, (cell[None, :] == paddle[:, None]).to(tl.int8), mask=in_grid)
    tl.store(at + 100, (cell[None, :] == ball[:, None]).to(tl.int8), mask=in_grid)
    tl.store(at + 200, (cell[None, :] == trail[:, None]).to(tl.int8), mask=in_grid)
    tl.store(at + 300, _grid(bricks_ptr, n, live, row, col, valid).to(tl.int8), mask=in_grid)


@triton.jit
def _breakout_reset(ball_x_ptr, ball_y_ptr, dir_ptr, pos_ptr, last_x_ptr, last_y_ptr, strike_ptr, bricks_ptr,
                    which_ptr, draw_ptr, agents, BLOCK_N: tl.constexpr):
    """The agents where `which` start anew: the ball at the right (a draw of 0.5 or more) or the left."""
    n, live, cell, row, col, valid = _agents_and_cells(agents, BLOCK_N)
    which = live & (_each(which_ptr, n, live) != 0)
    right = _each(draw_ptr, n, live) >= 0.5
    ball_x = tl.where(right, 9, 0).to(tl.int64)
    tl.store(ball_x_ptr + n, ball_x, mask=which)
    tl.store(last_x_ptr + n, ball_x, mask=which)
    _set(ball_y_ptr, n, which, 3, BLOCK_N)
    _set(last_y_ptr, n, which, 3, BLOCK_N)
    tl.store(dir_ptr + n, tl.where(right, 3, 2).to(tl.int64), mask=which)
    _set(pos_ptr, n, which, 4, BLOCK_N)
    tl.store(strike_ptr + n, tl.zeros((BLOCK_N,), tl.int8), mask=which)
    _put_grid(bricks_ptr, n, which, cell, valid, ((row >= 1) & (row < 4))[None, :])


@triton.jit
def _space_invaders_step(pos_ptr, dir_ptr, interval_ptr, move_timer_ptr, alien_shot_ptr, shot_timer_ptr,
                         ramp_ptr, aliens_ptr, friendly_ptr, enemy_ptr, action_ptr, reward_ptr, terminal_ptr,
                         agents, RAMPING: tl.constexpr, BLOCK_N: tl.constexpr):
    n, live, cell, row, col, valid = _agents_and_cells(agents, BLOCK_N)
    pos = _each(pos_ptr, n, live)
    dir = _each(dir_ptr, n, live)
    interval = _each(interval_ptr, n, live)
    move_timer = _each(move_timer_ptr, n, live)
    shot_timer = _each(shot_timer_ptr, n, live)
    alien_shot = _each(alien_shot_ptr, n, live)
    ramp_index = _each(ramp_ptr, n, live)
    action = _each(action_ptr, n, live)

    fire = (action == 5) & (shot_timer == 0)
    shot_timer = tl.where(fire, 5, shot_timer)
    # friendly bullets rise a row (a shot enters at the cannon's column before it moves); enemy
    # bullets fall one
    friendly = _grid(friendly_ptr, n, live, row + 1, col, valid & (row < 9))
    friendly |= fire[:, None] & (cell == 80 + pos[:, None])
    enemy = _grid(enemy_ptr, n, live, row - 1, col, valid & (row > 0))
    pos = tl.where(~fire & (action == 1), tl.maximum(pos - 1, 0),
                   tl.where(~fire & (action == 3), tl.minimum(pos + 1, 9), pos))
    cannon = cell == 90 + pos[:, None]
    aliens = _grid(aliens_ptr, n, live, row, col, valid)
    terminal = tl.max((cannon & (enemy | aliens)).to(tl.int32), axis=1) != 0

    move = move_timer == 0
    count = tl.sum(aliens.to(tl.int64), axis=1)
    move_timer = tl.where(move, tl.minimum(count, interval), move_timer)
    left_edge = tl.max((aliens & (col == 0)[None, :]).to(tl.int32), axis=1) != 0
    right_edge = tl.max((aliens & (col == 9)[None, :]).to(tl.int32), axis=1) != 0
    bottom_row = tl.max((aliens & (row == 9)[None, :]).to(tl.int32), axis=1) != 0
    turn = move & ((left_edge & (dir < 0)) | (right_edge & (dir > 0)))
    terminal |= turn & bottom_row
    dir = tl.where(turn, -dir, dir)
    down = _grid(aliens_ptr, n, live, (row + 9) % 10, col, valid)  # torch.roll's wrap, as minatar's
    right = _grid(aliens_ptr, n, live, row, (col + 9) % 10, valid)
    left = _grid(aliens_ptr, n, live, row, (col + 1) % 10, valid)
    sideways = tl.where((dir > 0)[:, None], right, left)
    aliens = tl.where(turn[:, None], down, tl.where(move[:, None], sideways, aliens))
    terminal |= move & (tl.max((cannon & aliens).to(tl.int32), axis=1) != 0)

    shoot = alien_shot == 0
    alien_shot = tl.where(shoot, 10, alien_shot)
    # the nearest column holding an alien (ties to the left; none: column 0), and its lowest alien
    # (none: row 9, as torch's index -1 reads)
    rank = tl.min(tl.where(aliens, tl.abs(col[None, :] - pos[:, None]) * 10 + col[None, :], 1000), axis=1)
    target = tl.where(rank < 1000, rank % 10, 0)
    lowest = tl.max(tl.where(aliens & (col[None, :] == target[:, None]), row[None, :], -1), axis=1)
    lowest = (lowest + 10) % 10
    enemy |= shoot[:, None] & (cell[None, :] == (lowest * 10 + target)[:, None])

    kills = aliens & friendly
    reward = tl.sum(kills.to(tl.float32), axis=1)
    aliens &= ~kills
    friendly &= ~kills
    shot_timer = tl.where(shot_timer > 0, shot_timer - 1, shot_timer)
    move_timer -= 1
    alien_shot -= 1
    cleared = tl.max(aliens.to(tl.int32), axis=1) == 0
    ramp = cleared & (interval > 6) & (RAMPING != 0)
    interval -= ramp.to(interval.dtype)
    ramp_index += ramp.to(ramp_index.dtype)
    fresh = (row < 4) & (col >= 2) & (col < 8)
    aliens = tl.where(cleared[:, None], fresh[None, :], aliens)

    # Another thread may have read a cell rolled into its own: every read must be done before a
    # write (bar.sync orders the memory accesses of a program's threads).
    tl.debug_barrier()
    _put_grid(aliens_ptr, n, live, cell, valid, aliens)
    _put_grid(friendly_ptr, n, live, cell, valid, friendly)
    _put_grid(enemy_ptr, n, live, cell, valid, enemy)
    tl.store(pos_ptr + n, pos, mask=live)
    tl.store(dir_ptr + n, dir, mask=live)
    tl.store(interval_ptr + n, interval, mask=live)
    tl.store(move_timer_ptr + n, move_timer, mask=live)
    tl.store(shot_timer_ptr + n, shot_timer, mask=live)
    tl.store(alien_shot_ptr + n, alien_shot, mask=live)
    tl.store(ramp_ptr + n, ramp_index, mask=live)
    tl.store(reward_ptr + n, reward, mask=live)
    tl.store(terminal_ptr + n, terminal.to(tl.float32), mask=live)


@triton.jit
def _space_invaders_observe(pos_ptr, dir_ptr, aliens_ptr, friendly_ptr, enemy_ptr, obs_ptr, agents,
                            BLOCK_N: tl.constexpr):
    n, live, cell, row, col, valid = _agents_and_cells(agents, BLOCK_N)
    pos = _each(pos_ptr, n, live)
    left = (_each(dir_ptr, n, live) < 0)[:, None]
    aliens = _grid(aliens_ptr, n, live, row, col, valid)
    at = obs_ptr + n[:, None] * 600 + cell[None, :]
    in_grid = live[:, None] & valid[None, :]
    tl.store(at, (cell[None, :] == 90 + pos[:, None]).to(tl.int8), mask=in_grid)
    tl.store(at + 100, aliens.to(tl.int8), mask=in_grid)
    tl.store(at + 200, (aliens & left).to(tl.int8), mask=in_grid)
    tl.store(at + 300, (aliens & ~left).to(tl.int8), mask=in_grid)
    tl.store(at + 400, _grid(friendly_ptr, n, live, row, col, valid).to(tl.int8), mask=in_grid)
    tl.store(at + 500, _grid(enemy_ptr, n, live, row, col, valid).to(tl.int8), mask=in_grid)


@triton.jit
def _space_invaders_reset(pos_ptr, dir_ptr, interval_ptr, move_timer_ptr, alien_shot_ptr, shot_timer_ptr,
                          ramp_ptr, aliens_ptr, friendly_ptr, enemy_ptr, which_ptr, agents, BLOCK_N: tl.constexpr):
    """The agents where `which` start anew (sparse_dqn's ENEMY_MOVE_INTERVAL 12, ENEMY_SHOT_INTERVAL 10)."""
    n, live, cell, row, col, valid = _agents_and_cells(agents, BLOCK_N)
    which = live & (_each(which_ptr, n, live) != 0)
    _set(pos_ptr, n, which, 5, BLOCK_N)
    _set(dir_ptr, n, which, -1, BLOCK_N)
    _set(interval_ptr, n, which, 12, BLOCK_N)
    _set(move_timer_ptr, n, which, 12, BLOCK_N)
    _set(alien_shot_ptr, n, which, 10, BLOCK_N)
    _set(shot_timer_ptr, n, which, 0, BLOCK_N)
    _set(ramp_ptr, n, which, 0, BLOCK_N)
    _put_grid(aliens_ptr, n, which, cell, valid, ((row < 4) & (col >= 2) & (col < 8))[None, :])
    _put_grid(friendly_ptr, n, which, cell, valid, tl.zeros((1, _CELLS), tl.int8))
    _put_grid(enemy_ptr, n, which, cell, valid, tl.zeros((1, _CELLS), tl.int8))

GAME_BLOCK = 8  # agents per program of a game's kernels: 8 x 128 cells, 8 a thread


def breakout_step(ball_x, ball_y, ball_dir, pos, last_x, last_y, strike, bricks, actions):
    """One frame of every agent, in place, as the C++ kernels' breakout_step (same arguments);
    returns (rewards, terminals) as float32 (N,)."""
    n = len(pos)
    reward = torch.empty(n, device=pos.device)
    terminal = torch.empty(n, device=pos.device)
    _breakout_step[(triton.cdiv(n, GAME_BLOCK),)](
        ball_x, ball_y, ball_dir, pos, last_x, last_y, strike.view(torch.uint8), bricks.view(torch.uint8), actions,
        reward, terminal, n, BLOCK_N=GAME_BLOCK, num_warps=NUM_WARPS)
    return reward, terminal


def breakout_observe(ball_x, ball_y, pos, last_x, last_y, bricks) -> torch.Tensor:
    """(N, 400) 0/1 uint8, channel-major, as the C++ kernels' breakout_observe."""
    n = len(pos)
    obs = torch.empty(n, 400, dtype=torch.uint8, device=pos.device)
    _breakout_observe[(triton.cdiv(n, GAME_BLOCK),)](ball_x, ball_y, pos, last_x, last_y, bricks.view(torch.uint8),
                                                    obs, n, BLOCK_N=GAME_BLOCK, num_warps=NUM_WARPS)
    return obs


def space_invaders_step(pos, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer, ramp_index,
                        aliens, f_bullets, e_bullets, actions, ramping: bool):
    """One frame of every agent, in place, as the C++ kernels' space_invaders_step (same arguments);
    returns (rewards, terminals) as float32 (N,)."""
    n = len(pos)
    reward = torch.empty(n, device=pos.device)
    terminal = torch.empty(n, device=pos.device)
    _space_invaders_step[(triton.cdiv(n, GAME_BLOCK),)](
        pos, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer, ramp_index,
        aliens.view(torch.uint8), f_bullets.view(torch.uint8), e_bullets.view(torch.uint8), actions, reward,
        terminal, n, RAMPING=ramping, BLOCK_N=GAME_BLOCK, num_warps=NUM_WARPS)
    return reward, terminal


def space_invaders_observe(pos, alien_dir, aliens, f_bullets, e_bullets) -> torch.Tensor:
    """(N, 600) 0/1 uint8, channel-major, as the C++ kernels' space_invaders_observe."""
    n = len(pos)
    obs = torch.empty(n, 600, dtype=torch.uint8, device=pos.device)
    _space_invaders_observe[(triton.cdiv(n, GAME_BLOCK),)](
        pos, alien_dir, aliens.view(torch.uint8), f_bullets.view(torch.uint8), e_bullets.view(torch.uint8), obs,
        n, BLOCK_N=GAME_BLOCK, num_warps=NUM_WARPS)
    return obs


def breakout_reset(ball_x, ball_y, ball_dir, pos, last_x, last_y, strike, bricks, which, draw):
    """BatchedBreakout.reset, in place: the agents where `which` start anew."""
    n = len(pos)
    _breakout_reset[(triton.cdiv(n, GAME_BLOCK),)](
        ball_x, ball_y, ball_dir, pos, last_x, last_y, strike.view(torch.uint8), bricks.view(torch.uint8),
        which.contiguous().view(torch.uint8), draw.contiguous(), n, BLOCK_N=GAME_BLOCK, num_warps=NUM_WARPS)


def space_invaders_reset(pos, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer, ramp_index,
                         aliens, f_bullets, e_bullets, which):
    """BatchedSpaceInvaders.reset, in place: the agents where `which` start anew."""
    n = len(pos)
    _space_invaders_reset[(triton.cdiv(n, GAME_BLOCK),)](
        pos, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer, ramp_index,
        aliens.view(torch.uint8), f_bullets.view(torch.uint8), e_bullets.view(torch.uint8),
        which.contiguous().view(torch.uint8), n, BLOCK_N=GAME_BLOCK, num_warps=NUM_WARPS)
