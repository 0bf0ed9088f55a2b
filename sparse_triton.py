"""Triton kernels for the sparse hidden layer on a GPU: relu(gather-multiply-sum + bias) forward,
and its weight and bias gradients in one backward pass. A program takes one agent's block of
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
