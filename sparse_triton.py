"""Triton kernels for the sparse hidden layer on a GPU: relu(gather-multiply-sum + bias) forward,
and its weight and bias gradients in one backward pass. A program takes one agent's block of
units and the whole batch as a (units, samples) tile; for each of the k connections it reads each
unit's index and weight once and gathers that input's values for every sample from the batch laid
out inputs-major (N, inputs, batch), where they lie side by side: one 128-byte read serves a warp.
It reads k / inputs of what the masked-dense matmul reads (9% in Breakout) and never builds the
(N, units, inputs) matrix, 2 GB for 1,024 agents.

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
def _forward(xt_ptr, w_ptr, bias_ptr, idx_ptr, out_ptr, units, inputs, idx_sn, k: tl.constexpr,
             batch: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_B: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    b = tl.arange(0, BLOCK_B)
    unit_live = u < units
    live = unit_live[:, None] & (b[None, :] < batch)
    w_at = w_ptr + n * units * k + u * k
    idx_at = idx_ptr + n * idx_sn + u * k
    x_at = xt_ptr + n * inputs * batch + b[None, :]  # xt (N, inputs, batch): a row is one input's batch
    acc = tl.zeros((BLOCK_U, BLOCK_B), dtype=tl.float32)
    for j in tl.static_range(k):  # unrolled: the k gathers can be in flight at once
        i = tl.load(idx_at + j, mask=unit_live, other=0)
        w = tl.load(w_at + j, mask=unit_live, other=0.0)
        acc += w[:, None] * tl.load(x_at + i[:, None] * batch, mask=live, other=0.0)
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
def _backward(xt_ptr, idx_ptr, out_ptr, grad_ptr, grad_w_ptr, grad_b_ptr, units, inputs, idx_sn, g_sn,
              g_su, g_sb, k: tl.constexpr, batch: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_B: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    b = tl.arange(0, BLOCK_B)
    unit_live = u < units
    live = unit_live[:, None] & (b[None, :] < batch)
    h = tl.load(out_ptr + n * units * batch + u[:, None] * batch + b[None, :], mask=live, other=0.0)
    g = tl.load(grad_ptr + n * g_sn + u[:, None] * g_su + b[None, :] * g_sb, mask=live, other=0.0)
    g = tl.where(h > 0.0, g, 0.0)  # through the ReLU
    tl.store(grad_b_ptr + n * units + u, tl.sum(g, axis=1), mask=unit_live)
    idx_at = idx_ptr + n * idx_sn + u * k
    gw_at = grad_w_ptr + n * units * k + u * k
    x_at = xt_ptr + n * inputs * batch + b[None, :]
    for j in tl.static_range(k):  # unrolled: the k gathers can be in flight at once
        i = tl.load(idx_at + j, mask=unit_live, other=0)
        xv = tl.load(x_at + i[:, None] * batch, mask=live, other=0.0)
        tl.store(gw_at + j, tl.sum(g * xv, axis=1), mask=unit_live)


def _launch(kernel, n: int, units: int, batch: int, *args, **constexprs):
    block_b = triton.next_power_of_2(batch)
    block_u = _block_units(block_b)
    kernel[(n, triton.cdiv(units, block_u))](*args, batch=batch, BLOCK_U=block_u, BLOCK_B=block_b,
                                             num_warps=NUM_WARPS, **constexprs)


def sparse_relu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """relu(sparse_linear(x, weight, index) + bias), (N, units, batch), and x laid out (N, inputs,
    batch), which the backward pass reads. x (N, batch, inputs), weight (N, units, k), bias (N,
    units) float32; index (N or 1, units, k) int32, one table for every agent when its first
    dimension is 1."""
    n, batch, inputs = x.shape
    units, k = weight.shape[1:]
    xt = x.transpose(1, 2).contiguous()  # a sample's value of one input beside the next sample's
    out = torch.empty(n, units, batch, device=x.device, dtype=x.dtype)
    args = (xt, weight.contiguous(), bias.contiguous(), index, out, units, inputs,
            0 if index.shape[0] == 1 else units * k)
    if batch == 1:
        _forward_one[(n, triton.cdiv(units, 32))](*args, k=k, BLOCK_U=32, BLOCK_K=triton.next_power_of_2(k),
                                                  num_warps=NUM_WARPS)
    else:
        _launch(_forward, n, units, batch, *args, k=k)
    return out, xt


def sparse_relu_backward(xt: torch.Tensor, index: torch.Tensor, out: torch.Tensor,
                         grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the weight (N, units, k) and bias (N, units) from the forward's xt and out
    (N, units, batch) and grad_out, the gradient of out (any strides)."""
    n, units, batch = out.shape
    k = index.shape[2]
    grad_w = torch.empty(n, units, k, device=out.device, dtype=out.dtype)
    grad_b = torch.empty(n, units, device=out.device, dtype=out.dtype)
    _launch(_backward, n, units, batch, xt, index, out, grad_out, grad_w, grad_b, units, xt.shape[1],
            0 if index.shape[0] == 1 else units * k, *grad_out.stride(), k=k)
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
