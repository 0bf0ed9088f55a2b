"""The backends of the sparse layer, the head and the optimiser, and where each is chosen.

- C++ kernels (sparse_kernels.cpp beside this file), compiled with g++ on first use, on the CPU;
- Triton kernels (triton_kernels.py) on a GPU, where Triton is installed;
- torch operations everywhere else, and wherever SPARSE_DQN_KERNELS=torch asks for them.

Each gives the same bits as the torch operations it replaces (tests/test_network.py,
tests/test_triton.py); the pinned trajectory digests (tests/test_pinned.py) fail if any drifts."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


def native_kernels(device: torch.device, native: bool | None):
    """The C++ kernels for a game or replay on `device`: used where native is True, or None (the
    default) on a CPU where they are built; None where native is False."""
    kernels = _kernels() if device.type == "cpu" else None
    if native and kernels is None:
        raise ValueError("native=True needs the C++ kernels and a CPU device")
    return kernels if native or native is None else None


def game_kernels(device: torch.device, native: bool | None):
    """The kernels that step and observe a game on `device`, by default (native None) the C++ ones
    on a CPU where they are built and the Triton ones (sparse_triton, which also reset it) where
    Triton runs: one call where torch ops make about a hundred (Space Invaders' step). native True:
    the C++ ones or an error; False: None, torch ops."""
    if native is False:
        return None
    kernels = native_kernels(device, native)
    return kernels if kernels is not None else _triton_for(torch.empty(0, device=device))


# ----------------------------------------------------------------------------------------------
# The sparse Q-network, batched over a population: leading dimension N is the agent.
# ----------------------------------------------------------------------------------------------
# How sparse_kernels.cpp is compiled. -fopenmp: ATen's parallel_for splits work over threads only
# where OpenMP is on. -fno-math-errno: lets the compiler vectorise sqrt. -march=native: the widest
# vectors this processor has.
KERNEL_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-march=native"]


@functools.lru_cache(maxsize=None)
def _kernels():
    """The C++ CPU kernels (sparse_kernels.cpp), compiled on first use and cached by torch; None,
    with one warning, where they cannot be built. SPARSE_DQN_KERNELS=torch skips them."""
    if os.environ.get("SPARSE_DQN_KERNELS", "cpp") == "torch":
        return None
    try:
        import ninja  # the build tool, from requirements.txt; torch looks for it on PATH
        from torch.utils.cpp_extension import load

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        source = Path(__file__).with_name("sparse_kernels.cpp")
        # The build is named after the processor's features, the source and where it lies, so
        # machines that share a home directory (a cluster's nodes) each build their own, two
        # checkouts of different versions never load each other's kernels, and two copies of one
        # version (benchmarks/compare.py loads one from a temporary folder) do not rebuild each
        # other's: torch rebuilds a named extension whose source path changed.
        digest = hashlib.sha256(source.read_bytes() + str(source.resolve()).encode()).hexdigest()[:10]
        return load(f"sparse_dqn_kernels_{_cpu_id()}_{digest}", [str(source)], extra_cflags=KERNEL_FLAGS,
                    extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # no compiler, no headers, a failed build: the torch path still works
        warnings.warn(f"C++ kernels unavailable, using the pure-torch path ({type(err).__name__}: "
                      f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''})", stacklevel=2)
        return None


def _cpu_id() -> str:
    """A short hash of this processor's model and instruction-set flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        info = platform.processor() + platform.machine()
    lines = sorted({line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))})
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:10]


@functools.lru_cache(maxsize=None)
def _cpu_name() -> str:
    """This processor's model, family and model number and _cpu_id (its flags): MKL's larger
    matmuls (dense, L1 and CNN layers) round differently from one processor type to another."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return f"unknown ({_cpu_id()})"
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return (f"{fields.get('model name', 'unknown')}, family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')} ({_cpu_id()})")


def kernel_backend() -> str:
    """'cpp' where the CPU kernels are built and used, else 'torch'."""
    return "cpp" if _kernels() is not None else "torch"


@dataclass(frozen=True)
class SparsePlan:
    """A population's masks laid out for the kernels: built once, reused by every forward."""
    flat: torch.Tensor | None  # (N * units, k): rows of the (N * inputs, batch) input table
    pattern: torch.Tensor | None  # sparse CSR (N * units, N * inputs): where the weight gradient lives
    inputs: int
    inverse: tuple | None = None  # for the C++ kernels: the masks read by input (one set if alike)
    by_unit: tuple | None = None  # for the C++ forward: each unit's inputs sorted, their weights, its group
    grouped_order: torch.Tensor | None = None  # for the C++ forward: see _grouped_weights
    index: torch.Tensor | None = None  # (N, units, k), for the masked-dense layout alone
    gather_index: torch.Tensor | None = None  # index as int32, (1, units, k) if all alike: for Triton
    cache: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)  # see _per_weight


def _alike(index: torch.Tensor) -> torch.Tensor:
    """index (N, units, k), or its first agent's alone (1, units, k) where all agents' masks are
    alike (spatial masks are the same for every seed): the kernels then read one copy of the
    tables made from it, which stays in cache, instead of one per agent."""
    return index[:1] if len(index) > 1 and bool((index == index[:1]).all()) else index


def _inverse(index: torch.Tensor, inputs: int) -> tuple:
    """(ptr (N, inputs + 1), flat (N, units * k)) as int32: the entries of input i of agent n are
    flat[n, ptr[n, i]:ptr[n, i + 1]], places in its (units * k) weights (the unit: place // k)."""
    n, u, k = index.shape
    by_input = torch.argsort(index.reshape(n, u * k), dim=1, stable=True)
    counts = torch.zeros(n, inputs, dtype=torch.long).scatter_add_(1, index.reshape(n, u * k),
                                                                   torch.ones(n, u * k, dtype=torch.long))
    ptr = F.pad(counts.cumsum(1), (1, 0))
    return tuple(t.to(torch.int32).contiguous() for t in (ptr, by_input))


# sparse_kernels.cpp's kChunk: units of a group summed together, each input column loaded once.
_UNIT_CHUNK = 6


def _by_unit(index: torch.Tensor) -> tuple:
    """(inputs (N, units * k), flat (N, units * k), members (N, units), group_start (N, units + 1),
    groups (N,)) as int32. The units grouped by the inputs they read: group g of agent n is
    members[n, group_start[n, g]:group_start[n, g + 1]], for g below groups[n]. Row i of inputs
    and flat (k entries) are unit members[n, i]'s inputs in ascending order (ties in mask order)
    and the positions of their weights in the agent's (units * k) row."""
    n, u, k = index.shape
    inputs, order = torch.sort(index, dim=2, stable=True)
    flat = order + torch.arange(u).view(1, u, 1) * k
    agent = torch.arange(n).view(n, 1, 1).expand(n, u, 1)
    group = _equal_rows(torch.cat([agent, inputs], 2).reshape(n * u, k + 1)).view(n, u)
    if len(torch.unique(group)) * _UNIT_CHUNK > n * u:
        # Groups shorter than a chunk on average gain little from sharing loads, and visiting them
        # group by group scatters the reads of their rows: they are left one unit each, in order.
        group = torch.arange(u).expand(n, u)
    members = torch.argsort(group, dim=1, stable=True)
    grouped = group.gather(1, members)
    first = torch.ones(n, u, dtype=torch.bool)
    first[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    starts = torch.where(first, torch.arange(u), u).sort(dim=1).values
    group_start = torch.cat([starts, torch.full((n, 1), u)], 1)
    rows = members.unsqueeze(2).expand(n, u, k)
    return tuple(t.to(torch.int32).contiguous() for t in (inputs.gather(1, rows).reshape(n, u * k),
                                                          flat.gather(1, rows).reshape(n, u * k),
                                                          members, group_start, first.sum(1)))


def _equal_rows(rows: torch.Tensor) -> torch.Tensor:
    """A label per row of rows (R, C) int64, equal for equal rows, numbered in the order of their
    first rows. Rows are compared by a hash first, which takes a fifth of torch.unique(dim=0)'s
    time for 64 predictive masks, then checked against their first row of that hash."""
    r, c = rows.shape
    mix = torch.randint(1, 2**62, (c,), generator=torch.Generator().manual_seed(0)) | 1
    labels, which = torch.unique((rows * mix).sum(1), return_inverse=True)  # int64 products wrap around
    first = torch.full((len(labels),), r).scatter_reduce_(0, which, torch.arange(r), "amin")
    if not torch.equal(rows[first[which]], rows):  # two different rows share a hash
        which = torch.unique(rows, dim=0, return_inverse=True)[1]
        first = torch.full((int(which.max()) + 1,), r).scatter_reduce_(0, which, torch.arange(r), "amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(len(first))
    return rank[which]


def sparse_plan(index: torch.Tensor, inputs: int, masked_dense: bool | None = None) -> SparsePlan:
    """Plan for masks index (N, units, k) over `inputs` inputs per agent. masked_dense (the
    default off the CPU) runs the layer as a batched matmul with the weights scattered into a
    dense matrix (see _MaskedDenseLinear); otherwise it gathers only the k inputs of each unit."""
    n, u, k = index.shape
    if masked_dense is None:
        masked_dense = index.device.type != "cpu"
    if masked_dense:
        return SparsePlan(None, None, inputs, index=index, gather_index=_alike(index).to(torch.int32).contiguous())
    native = index.device.type == "cpu" and _kernels() is not None
    inverse = by_unit = grouped_order = None
    if native:  # the kernels' tables, one set for masks all alike
        shared = _alike(index)
        inverse, by_unit = _inverse(shared, inputs), _by_unit(shared)
        grouped_order = _grouped_order(by_unit)
    flat = (index + torch.arange(n, device=index.device).view(n, 1, 1) * inputs).view(n * u, k)
    crow = torch.arange(0, n * u * k + 1, k, device=index.device)
    with warnings.catch_warnings():  # sparse CSR is "beta" in torch; we rely only on sampled_addmm
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, flat.reshape(-1), torch.zeros(n * u * k, device=index.device),
                                          (n * u, n * inputs), check_invariants=False)
    return SparsePlan(flat, pattern, inputs, inverse, by_unit, grouped_order=grouped_order)


class _SparseLinear(torch.autograd.Function):
    """out[n, u, b] = sum_j weight[n, u, j] * x[n, b, index[n, u, j]].

    Forward gathers the k inputs of each unit (embedding_bag, one fused kernel); the weight
    gradient is a sampled dense-dense product at the mask's nonzeros (sampled_addmm). Both cost
    O(units * k * batch), never O(units * inputs * batch)."""

    @staticmethod
    def forward(ctx, x, weight, plan):
        n, b, d = x.shape
        u, k = weight.shape[1:]
        table = x.transpose(1, 2).reshape(n * d, b).contiguous()  # embedding_bag wants rows
        out = F.embedding_bag(plan.flat, table, mode="sum", per_sample_weights=weight.reshape(n * u, k))
        ctx.save_for_backward(table, weight)
        ctx.plan = plan
        return out.view(n, u, b)

    @staticmethod
    def backward(ctx, grad_out):
        table, weight = ctx.saved_tensors
        plan = ctx.plan
        n, u, k = weight.shape
        b = table.shape[1]
        grad_out = grad_out.reshape(n * u, b).contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            rows = table.T.contiguous()  # (batch, N * inputs)
            grad_w = torch.sparse.sampled_addmm(plan.pattern.to(grad_out.dtype), grad_out, rows, beta=0.0)
            grad_w = grad_w.values().view(n, u, k)
        if ctx.needs_input_grad[0]:
            contrib = weight.reshape(n * u, k, 1) * grad_out.view(n * u, 1, b)
            grad_table = torch.zeros_like(table).index_add_(0, plan.flat.reshape(-1), contrib.view(-1, b))
            grad_x = grad_table.view(n, plan.inputs, b).transpose(1, 2)
        return grad_x, grad_w, None


class _MaskedDenseLinear(torch.autograd.Function):
    """sparse_linear as a batched matmul with each agent's weights scattered into a dense
    (units, inputs) matrix of zeros. Only k / inputs of its multiply-adds count (9% in Breakout),
    yet on a GPU a matmul's regular memory access beats the gather and the sampled product of
    _SparseLinear many times over (see the README's GPU figures). The zeros add exact zeros, so
    only the order of the sums differs from the gather."""

    @staticmethod
    def forward(ctx, x, weight, plan):
        ctx.save_for_backward(x, weight)
        ctx.plan = plan
        return torch.bmm(_scatter_dense(weight, plan), x.transpose(1, 2))  # (N, units, B)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grad_out, x).gather(2, ctx.plan.index)
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad_out.transpose(1, 2), _scatter_dense(weight, ctx.plan))
        return grad_x, grad_w, None


def _scatter_dense(weight: torch.Tensor, plan: SparsePlan) -> torch.Tensor:
    """weight (N, units, k) as (N, units, inputs) with zeros off the mask, kept for each weight
    tensor until it changes in place (_per_weight): in one frame, acting and the update read the
    same online weights, and the target's change only when it is synced. Made anew for each of a
    frame's three forward passes, the scatters alone took 2.9 of about 11 ms per learning frame of
    1,024 agents on an H200 (benchmarks/gpu_profile_h200_after.txt)."""
    def scatter():
        n, u, _ = weight.shape
        return weight.new_zeros(n, u, plan.inputs).scatter_(2, plan.index, weight.detach())
    return _per_weight(plan, weight, "dense", scatter)


@functools.lru_cache(maxsize=None)
def _triton():
    """sparse_triton, the GPU kernels of the sparse hidden layer; None where Triton is not
    installed or SPARSE_DQN_KERNELS=torch asks for the pure-torch path."""
    if os.environ.get("SPARSE_DQN_KERNELS", "cpp") == "torch":
        return None
    try:
        from engine import triton_kernels as sparse_triton
    except ImportError:
        return None
    return sparse_triton


def _triton_for(x: torch.Tensor):
    """sparse_triton where it runs x: on a GPU, or on the CPU under Triton's interpreter
    (TRITON_INTERPRET=1, which the tests use)."""
    return _triton() if x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1" else None


class _SparseReluTriton(torch.autograd.Function):
    """sparse_relu_layer by the Triton kernels (sparse_triton): a gather-multiply-sum that reads
    k / inputs of what _MaskedDenseLinear's matmul reads, with bias and ReLU in the same pass, and
    the weight and bias gradients in one backward pass. x takes no gradient (observations); as
    bool, it is gathered as bits."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan):
        out, xt = _triton().sparse_relu_forward(x, weight, bias, plan.gather_index)
        ctx.save_for_backward(xt, out)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xt, out = ctx.saved_tensors
        grad_w, grad_b = _triton().sparse_relu_backward(xt, ctx.plan.gather_index, out, grad_out)
        return None, grad_w, grad_b, None


def _per_weight(plan: SparsePlan, weight: torch.Tensor, kind: str, make):
    """make(), a layout of weight's, kept in the plan until weight changes in place (its version
    counter moves) or is freed."""
    key = (kind, id(weight))
    hit = plan.cache.get(key)
    if hit is not None and hit[0]() is weight and hit[1] == weight._version:
        return hit[2]
    made = make()
    cache = plan.cache  # not the plan itself: the callback must not keep it alive
    plan.cache[key] = (weakref.ref(weight, lambda _: cache.pop(key, None)), weight._version, made)
    return made


def _grouped_weights(weight: torch.Tensor, plan: SparsePlan) -> torch.Tensor | None:
    """For weights that do not learn (frozen hidden weights, the target network's), a copy (N,
    units * k) laid out for the C++ forward: group by group (plan.by_unit), input by input, the
    group's members side by side. A batch's inputs that are on then read a few short runs of
    weights instead of one weight per unit row, and acting sums a group's members at once. None
    for weights that learn: they change with every update, and a copy would cost a pass of its own."""
    if weight.requires_grad:
        return None
    n = weight.shape[0]
    order = plan.grouped_order.expand(n, -1)
    return _per_weight(plan, weight, "grouped", lambda: weight.detach().reshape(n, -1).gather(1, order))


def _grouped_order(by_unit: tuple) -> torch.Tensor:
    """(N or 1, units * k): for each place of _grouped_weights' layout, the weight it holds."""
    _, flat, members, group_start, _ = by_unit
    m, u = members.shape
    k = flat.shape[1] // u
    row = torch.arange(u).repeat(m, 1)
    group = torch.searchsorted(group_start.long(), row, right=True) - 1
    first = group_start.long().gather(1, group)
    size = group_start.long().gather(1, group + 1) - first
    at = (first * k + (row - first)).unsqueeze(2) + torch.arange(k).view(1, 1, k) * size.unsqueeze(2)
    return torch.empty(m, u * k, dtype=torch.long).scatter_(1, at.view(m, u * k), flat.long())


class _SparseReluCpp(torch.autograd.Function):
    """relu(sparse_linear(x, weight, mask) + bias) in one C++ kernel that visits only the inputs
    that are on somewhere in the batch, with bias and ReLU applied in the same pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan):
        n, u, k = weight.shape
        xt = x.transpose(1, 2).contiguous()  # (N, inputs, B)
        flat_w = weight.reshape(n, u * k).contiguous()
        out = _kernels().sparse_forward(xt, flat_w, bias.contiguous(), *plan.inverse, *plan.by_unit,
                                        grouped_w=_grouped_weights(weight, plan))
        ctx.save_for_backward(xt, flat_w, out)
        ctx.plan, ctx.shape = plan, weight.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xt, flat_w, out = ctx.saved_tensors
        grad = _kernels().relu_grad(out, grad_out)  # (N, units, B), through the ReLU
        return *_sparse_grads(ctx, grad, xt, flat_w, ctx.needs_input_grad[:3]), None


class _SparseQCpp(torch.autograd.Function):
    """The sparse network's Q-values, _SparseReluCpp's layer then the head, for the update's batch.
    The head is what torch.baddbmm computes on the layer's units-major output seen transposed, as
    q_values hands it over elsewhere, and in MKL's order of sums for that layout, so the same bits:
    MKL runs that layout at a tenth of the speed of its others. Each agent's head is taken while its
    activations are in cache (sparse_q), and the target network's are never written out. Backward
    takes the head's input gradient through the ReLU in one pass (head_relu_grad, again MKL's
    order) and its weight gradient as the product autograd would make gives it (head_grad_weight,
    MKL's order for the DQN's batch of 32, 6 actions and an even number of units; torch.bmm itself
    otherwise)."""

    @staticmethod
    def forward(ctx, x, weight, bias, head_w, head_b, plan):
        n, u, k = weight.shape
        xt = x.transpose(1, 2).contiguous()
        flat_w = weight.reshape(n, u * k).contiguous()
        keep = any(ctx.needs_input_grad)  # the activations, for backward; the target's pass has none
        out, q = _kernels().sparse_q(xt, flat_w, bias.contiguous(), *plan.inverse, *plan.by_unit,
                                     head_w.contiguous(), head_b.contiguous(), keep, _grouped_weights(weight, plan))
        if keep:
            ctx.save_for_backward(xt, flat_w, out, head_w)
        ctx.plan, ctx.shape = plan, weight.shape
        return q

    @staticmethod
    def backward(ctx, grad_q):
        xt, flat_w, out, head_w = ctx.saved_tensors
        needs = ctx.needs_input_grad
        n, units, batch = out.shape
        mkls_order_known = batch == 32 and grad_q.shape[2] == 6 and units % 2 == 0 and units >= 16
        grad_head_b = grad_q.sum(1) if needs[4] else None
        if mkls_order_known and grad_q.is_contiguous() and needs[1] and needs[3] and not needs[0]:
            # training's update with learned hidden weights: its three products in one pass
            grad_head_w, grad, grad_w = _kernels().sparse_q_backward(out, grad_q, head_w, xt, *ctx.plan.inverse)
            return None, grad_w.view(ctx.shape), grad.sum(2) if needs[2] else None, grad_head_w, grad_head_b, None
        grad_head_w = None
        if needs[3]:
            if mkls_order_known and grad_q.is_contiguous():
                grad_head_w = _kernels().head_grad_weight(out, grad_q)
            else:
                grad_head_w = torch.bmm(out, grad_q).transpose(1, 2)
        grads = (None, None, None)
        if any(needs[:3]):
            grads = _sparse_grads(ctx, _kernels().head_relu_grad(out, grad_q, head_w), xt, flat_w, needs[:3])
        return *grads, grad_head_w, grad_head_b, None


def _sparse_grads(ctx, grad, xt, flat_w, needs):
    """Gradients of the C++ sparse layer's input, weights and bias from grad (N, units, B) taken
    through its ReLU."""
    grad_x = grad_w = grad_b = None
    if needs[1]:
        grad_w = _kernels().sparse_grad_weight(grad, xt, *ctx.plan.inverse, flat_w.shape[1]).view(ctx.shape)
    if needs[2]:
        grad_b = grad.sum(2)
    if needs[0]:
        grad_x = _kernels().sparse_grad_input(grad, flat_w, *ctx.plan.inverse, xt.shape[1]).transpose(1, 2)
    return grad_x, grad_w, grad_b


class _BatchedLinear(torch.autograd.Function):
    """torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2)), with the weight gradient made
    in the weight's own (N, out, in) layout. Autograd makes it as (N, in, out) and transposes it,
    and AccumulateGrad then copies the transpose into the weight's layout: for the dense layers of
    10 L1 agents that copy took 16 of about 55 ms per learning frame (torch.profiler, Breakout,
    one thread). For x laid out (N, B, in), as the dense layers get it, the two products round
    alike (tests/test_network.py); for the head, whose input comes units-major from the sparse
    layer, they do not, so the head keeps autograd's."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(1) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Each agent's x (N, B, in) @ weight (N, out, in).T + bias (N, out) -> (N, B, out)."""
    return _BatchedLinear.apply(x, weight, bias)


# The smallest batch that takes the C++ head: from 16 samples on, MKL's baddbmm adds the head's
# sums in the order the kernels take (tests/test_network.py); acting's batch of one goes to MKL.
HEAD_CPP_BATCH = 16


def check_device(device: str):
    """Refuse, before any work, a device that cannot train here: not a CPU or a CUDA device (a
    meta tensor holds no numbers), or one this machine cannot allocate on."""
    try:
        if torch.device(device).type not in ("cpu", "cuda"):
            raise RuntimeError(f"a {torch.device(device).type} device holds no trainable tensors here")
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"device={device!r} is not available here ({first}); expected cpu"
                         + ", cuda" * torch.cuda.is_available()) from None


def provenance(device: str, agents: int) -> dict:
    """Where and how a population was computed: command, machine, torch, kernels, device."""
    import platform

    return {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "machine": platform.node(),
            "processor": platform.processor() or platform.machine(), "cpu": _cpu_name(),
            "torch": torch.__version__,
            "kernels": kernel_backend() if device == "cpu" else "torch", "device": device,
            "population": agents,
            # work split over threads may add up in another order: the same run on another thread
            # count can differ in the last bits
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------
# Where each fast path is chosen: sparse_dqn asks here, and runs its own torch code where the
# answer is None.
# ----------------------------------------------------------------------------------------------
def sparse_linear(x: torch.Tensor, weight: torch.Tensor, plan: SparsePlan) -> torch.Tensor:
    """sparse_dqn.sparse_linear in torch operations: the gather, or the masked-dense matmul where
    the plan is laid out for it (off the CPU)."""
    return (_SparseLinear if plan.index is None else _MaskedDenseLinear).apply(x, weight, plan)


def sparse_relu_layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, plan: SparsePlan):
    """sparse_dqn.sparse_relu_layer in float32 by the Triton kernels on a GPU where Triton is
    installed (bool x is then gathered as bits, 32 samples in a word: see triton_kernels) or by the
    C++ kernels on the CPU where they are built; None where neither runs it."""
    float32 = weight.dtype == bias.dtype == torch.float32
    if (plan.gather_index is not None and float32 and x.dtype in (torch.float32, torch.bool) and not x.requires_grad
            and _triton_for(x) is not None):
        return _SparseReluTriton.apply(x, weight, bias, plan)
    if plan.inverse is not None and float32 and x.dtype in (torch.float32, torch.bool):
        return _SparseReluCpp.apply(x.to(weight.dtype), weight, bias, plan)
    return None


def sparse_q_values(x: torch.Tensor, params: dict, plan: SparsePlan):
    """A sparse network's Q-values by the C++ kernels, the layer and the head in one pass, for
    batches of HEAD_CPP_BATCH samples or more where the C++ head gives MKL's bits here
    (cpp_head_is_mkls); None elsewhere."""
    if (plan.inverse is not None and x.dtype == params["hidden_w"].dtype == torch.float32
            and x.shape[1] >= HEAD_CPP_BATCH and cpp_head_is_mkls(torch.get_num_threads())):
        return _SparseQCpp.apply(x, params["hidden_w"], params["hidden_b"], params["head_w"], params["head_b"], plan)
    return None


@functools.lru_cache(maxsize=None)
def cpp_head_is_mkls(threads: int) -> bool:
    """Whether the C++ head adds up the head's sums, values and gradients, in the order MKL's
    torch.baddbmm takes on this processor at this thread count. MKL picks its kernels by processor:
    on an Intel Xeon of family 6 model 207 (AVX-512) it sums the update's head in another order
    than on the processors the C++ head was written against. Checked once per process on one agent
    of the update's shape (a batch of 32, 1,200 units, Breakout's 36 of 400 inputs, a random mask);
    where the orders differ the head runs in MKL, so the C++ path keeps torch's bits everywhere."""
    if _kernels() is None:
        return False
    g = torch.Generator().manual_seed(0)
    units, k, inputs, batch = 1200, 36, 400, 32
    index = torch.argsort(torch.rand(units, inputs, generator=g), dim=1)[:, :k].unsqueeze(0)
    plan = sparse_plan(index, inputs)
    params = {"hidden_w": torch.randn(1, units, k, generator=g) * 0.2, "hidden_b": torch.randn(1, units, generator=g) * 0.1,
              "head_w": torch.randn(1, 6, units, generator=g) * 0.03, "head_b": torch.randn(1, 6, generator=g) * 0.1}
    x = (torch.rand(1, batch, inputs, generator=g) < 0.1).float()
    upstream = torch.randn(1, batch, 6, generator=g)
    for learned in (("hidden_w", "hidden_b", "head_w", "head_b"), ("head_w", "head_b")):
        results = []
        for cpp in (True, False):
            p = {name: t.clone().requires_grad_(name in learned) for name, t in params.items()}
            if cpp:
                q = _SparseQCpp.apply(x, p["hidden_w"], p["hidden_b"], p["head_w"], p["head_b"], plan)
            else:
                hidden = _SparseReluCpp.apply(x, p["hidden_w"], p["hidden_b"], plan).transpose(1, 2)
                q = torch.baddbmm(p["head_b"].unsqueeze(1), hidden, p["head_w"].transpose(1, 2))
            grads = torch.autograd.grad((q * upstream).sum(), [p[name] for name in learned])
            results.append((q.detach(), *grads))
        if not all(torch.equal(a, b) for a, b in zip(*results)):
            return False
    return True


def fused_rmsprop(params: list[torch.Tensor]):
    """(kernels, acts): the kernels whose centred_rmsprop_step steps these parameters in one pass
    (the C++ ones on the CPU, Triton's on a GPU), or None for sparse_dqn.CentredRMSprop's torch
    operations; acts, whether they can also act after the step (centred_rmsprop_step_then_act:
    the C++ ones alone)."""
    if not all(p.dtype == torch.float32 for p in params):
        return None, False
    native = _kernels() if all(p.device.type == "cpu" for p in params) else None
    return native or _triton_for(params[0]), native is not None
