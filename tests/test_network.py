import pytest
import torch

import sparse_dqn as sd
from engine import backends


def dense_masked(x, weight, index, inputs):
    n, u, k = weight.shape
    dense = torch.zeros(n, u, inputs, dtype=weight.dtype).scatter(2, index, weight)
    return torch.einsum("nbd,nud->nub", x, dense)


def random_masks(n, u, k, d):
    """(n, u, k): each unit of each agent sees k distinct inputs of d, drawn at random."""
    return torch.stack([torch.stack([torch.randperm(d)[:k] for _ in range(u)]) for _ in range(n)])


@pytest.mark.parametrize("masked_dense", [False, True], ids=["gather", "masked-dense (the GPU's)"])
def test_sparse_linear_equals_dense_masked_matmul_in_values_and_gradients(masked_dense):
    torch.manual_seed(0)
    n, b, d, u, k = 3, 5, 40, 12, 7
    x = torch.randn(n, b, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, u, k, dtype=torch.float64, requires_grad=True)
    index = random_masks(n, u, k, d)
    out = sd.sparse_linear(x, w, sd.sparse_plan(index, d, masked_dense=masked_dense))
    x2 = x.detach().clone().requires_grad_(True)
    w2 = w.detach().clone().requires_grad_(True)
    ref = dense_masked(x2, w2, index, d)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("alike", [False, True], ids=["masks of their own", "masks alike"])
def test_the_cpp_sparse_layer_equals_a_dense_masked_layer_in_values_and_gradients(cpp_kernels, alike):
    """Every path of the C++ kernels: inputs off in the whole batch, on in a few samples, in many,
    in every sample, in the same samples as others, and real-valued; a unit count that is not a multiple of the vector block;
    agents with masks of their own, and agents whose masks are alike (whose tables are shared)."""
    torch.manual_seed(1)
    n, b, d, u, k = 2, 32, 60, 70, 9
    x = (torch.rand(n, b, d) < 0.3).float()
    x[:, :, :5] = 1.0  # on in every sample
    x[:, :, 5:10] = 0.0  # off in every sample
    x[:, :, 10:15] = 0.0
    x[:, :3, 10:15] = 1.0  # on in a few samples
    x[:, :, 15:20] *= torch.randn(n, b, 5)  # real-valued
    x[:, :, 20:25] = x[:, :, 25:26]  # on in the same samples, as 1s: their sums are shared
    x[:, :, 26] = 2 * x[:, :, 25]  # in the same samples, but not as 1s: not shared
    index = random_masks(1, u, k, d).expand(n, u, k) if alike else random_masks(n, u, k, d)
    w = torch.randn(n, u, k, requires_grad=True)
    bias = torch.randn(n, u, requires_grad=True)
    xs = x.clone().requires_grad_(True)
    plan = sd.sparse_plan(index, d)
    assert plan.inverse is not None and len(plan.inverse[0]) == (1 if alike else n)
    w2, bias2, x2 = (t.detach().clone().requires_grad_(True) for t in (w, bias, x))
    ref = torch.relu(dense_masked(x2, w2, index, d) + bias2.unsqueeze(2))
    g = torch.randn_like(ref)
    ref.backward(g)
    for _ in range(2):  # the second pass's gradients may get the first's freed memory back, not zeros
        w.grad = bias.grad = xs.grad = None
        out = sd.sparse_relu_layer(xs, w, bias, plan)
        torch.testing.assert_close(out, ref)
        out.backward(g)
        for mine, theirs in ((w, w2), (bias, bias2), (xs, x2)):
            torch.testing.assert_close(mine.grad, theirs.grad)


def grouped_masks(n, u, k, d, alike):
    """(n, u, k) masks in which every neighbourhood is read by 12 units (as spatial masks give each
    3 x 3 patch to 12), each unit listing it in an order of its own; alike: the same for all agents."""
    patches = random_masks(1 if alike else n, (u + 11) // 12, k, d).repeat_interleave(12, dim=1)[:, :u]
    shuffled = torch.argsort(torch.rand(patches.shape), dim=2)
    return patches.gather(2, shuffled).expand(n, u, k)


def test_units_are_grouped_exactly_by_the_inputs_they_read():
    """The forward sums the units of a group together, so a group must hold units with the same
    inputs and nothing else: labels equal exactly where rows are, numbered by first appearance."""
    torch.manual_seed(0)
    rows = torch.randint(0, 3, (500, 4))
    labels = backends._equal_rows(rows)
    assert torch.equal(labels.unsqueeze(0) == labels.unsqueeze(1), (rows.unsqueeze(0) == rows.unsqueeze(1)).all(2))
    firsts = [int(labels[i]) for i in range(len(rows)) if int(labels[i]) not in labels[:i]]
    assert firsts == list(range(len(firsts)))


@pytest.mark.parametrize("masks", ["random", "grouped", "grouped alike"])
@pytest.mark.parametrize("density", [0.02, 0.1, 0.5, 1.0])
def test_the_cpp_forward_sums_alike_by_unit_and_by_input_bit_for_bit(cpp_kernels, density, masks):
    """The forward chooses, per agent and batch, to sum unit by unit or input by input, for speed
    alone: both must give the same bits, on 0/1 observations of any density, with masks whose
    units list their inputs in any order and may repeat one (a registered mask may), whether units
    share their neighbourhoods (summed together then) and agents their masks or not."""
    torch.manual_seed(4)
    n, b, d, u, k = 3, 32, 90, 110, 12
    x = (torch.rand(n, d, b) < density).float()
    index = random_masks(n, u, k, d) if masks == "random" else grouped_masks(n, u, k, d, masks.endswith("alike"))
    index = index.clone()
    index[:, :5, 1] = index[:, :5, 0]  # a repeated input
    plan = sd.sparse_plan(index, d)
    assert (plan.by_unit[4] * 6 <= u).all() == (masks != "random")  # grouped: summed in chunks of units
    assert len(plan.by_unit[4]) == (1 if masks == "grouped alike" else n)
    w, bias = torch.randn(n, u * k), torch.randn(n, u)
    by_unit, by_input = (backends._kernels().sparse_forward(x, w, bias, *plan.inverse, *plan.by_unit, by_unit=path)
                         for path in (1, 0))
    assert torch.equal(by_unit.view(torch.int32), by_input.view(torch.int32))
    assert torch.equal(by_unit, backends._kernels().sparse_forward(x, w, bias, *plan.inverse, *plan.by_unit))
    # Weights that do not learn are read from a copy grouped for the forward, at the update's
    # batch and at acting's batch of one; a learning weight is never copied.
    grouped = backends._grouped_weights(w, plan)
    assert backends._grouped_weights(w.clone().requires_grad_(), plan) is None
    for xs in (x, x[:, :, :1].contiguous()):
        reference = backends._kernels().sparse_forward(xs, w, bias, *plan.inverse, *plan.by_unit, by_unit=0)
        for path in (-1, 1):
            mine = backends._kernels().sparse_forward(xs, w, bias, *plan.inverse, *plan.by_unit, by_unit=path,
                                                grouped_w=grouped)
            assert torch.equal(mine.view(torch.int32), reference.view(torch.int32))


def test_the_cpp_relu_gradient_is_torchs_bit_for_bit_in_either_layout(cpp_kernels):
    """The backward pass gets the head's gradient transposed (the kernel reads it in tiles) or, from
    a caller of its own, contiguous; both must give torch.where(out > 0, grad_out, 0.0) exactly,
    for a unit count that is not a multiple of the tile and with zeros, negative zeros and NaN."""
    torch.manual_seed(2)
    out = torch.relu(torch.randn(3, 37, 32))
    out[0, :5] = 0.0
    for grad_out in (torch.randn(3, 32, 37).transpose(1, 2), torch.randn(3, 37, 32)):
        grad_out[1, 2, :4] = torch.tensor([-0.0, float("nan"), 0.0, -0.0])
        mine = backends._kernels().relu_grad(out, grad_out)
        assert mine.is_contiguous()
        assert torch.equal(mine.view(torch.int32), torch.where(out > 0, grad_out, 0.0).view(torch.int32))


@pytest.mark.parametrize("env", ["breakout", "space_invaders"])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_cpp_head_is_mkls_baddbmm_bit_for_bit_in_values_and_gradients(cpp_kernels, env, threads):
    """q_values of sparse agents for a batch (the update's) takes the C++ head, which must give the
    bits of the layer's output seen transposed through torch.baddbmm (how it ran before, and how
    acting and the GPU run it): values with and without gradients, and the gradients of all four
    parameters (learned) or of the head's alone (frozen), at the study's sizes, for one agent and
    several, spatial masks (grouped, alike) and random ones, batches around the DQN's 32, and unit
    counts whose weight gradient MKL sums in another order (odd) or that are not whole vectors."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for agents, batch, units, arch in ((1, 32, 1200, "random"), (5, 32, 1200, "random"), (4, 32, 1200, "spatial"),
                                           (3, 16, 1200, "random"), (2, 33, 1200, "spatial"), (2, 64, 1200, "random"),
                                           (2, 32, 1201, "random"), (2, 32, 250, "random")):
            cfg = sd.Config(env=env, hidden_units=units)
            torch.manual_seed(agents * batch)
            masks = torch.stack([sd.random_mask(cfg, seed) if arch == "random" else sd.spatial_mask(cfg)
                                 for seed in range(agents)])
            plan = sd.sparse_plan(masks, cfg.input_size)
            params = {"index": masks, "hidden_w": torch.randn(agents, cfg.hidden_units, cfg.k) * 0.2,
                      "hidden_b": torch.randn(agents, cfg.hidden_units) * 0.1,
                      "head_w": torch.randn(agents, sd.NUM_ACTIONS, cfg.hidden_units) * 0.03,
                      "head_b": torch.randn(agents, sd.NUM_ACTIONS) * 0.1}
            x = (torch.rand(agents, batch, cfg.input_size) < 0.1).float()
            upstream = torch.randn(agents, batch, sd.NUM_ACTIONS)
            for learned in (("hidden_w", "hidden_b", "head_w", "head_b"), ("head_w", "head_b")):
                results = []
                for through_mkl in (True, False):
                    p = {name: t.clone().requires_grad_(name in learned) for name, t in params.items()}
                    if through_mkl:
                        hidden = sd.sparse_relu_layer(x, p["hidden_w"], p["hidden_b"], plan).transpose(1, 2)
                        q = torch.baddbmm(p["head_b"].unsqueeze(1), hidden, p["head_w"].transpose(1, 2))
                    else:
                        q = sd.q_values(p, x, plan)
                    grads = torch.autograd.grad((q * upstream).sum(), [p[name] for name in learned])
                    results.append((q.detach(), *grads))
                for theirs, mine in zip(*results):
                    assert torch.equal(mine.contiguous().view(torch.int32), theirs.contiguous().view(torch.int32)), \
                        (agents, batch, units, arch, len(learned))
            with torch.no_grad():  # the target network's pass, whose activations are never kept
                assert torch.equal(sd.q_values(params, x, plan).view(torch.int32), results[0][0].view(torch.int32))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("layer", ["dense breakout", "dense space_invaders", "cnn fc"])
def test_batched_linear_is_autograds_baddbmm_bit_for_bit_with_the_weight_gradient_in_its_layout(layer):
    """The dense layers (dense and L1 agents' hidden layer on 0/1 observations, the CNN's fully
    connected layer on its batch-major features) at the study's shapes: values and every gradient
    as autograd's baddbmm gives them, and a weight gradient the optimiser can take without a copy."""
    torch.manual_seed(3)
    n = 5
    if layer == "cnn fc":
        out, x = 128, torch.relu(torch.randn(32, n, 1024)).transpose(0, 1)
    else:
        out, x = 1200, (torch.rand(n, 32, sd.Config(env=layer.split()[1]).input_size) < 0.1).float()
    w, b = torch.randn(n, out, x.shape[2]) * 0.05, torch.randn(n, out) * 0.05
    upstream = torch.randn(n, 32, out)
    results = []
    for layer_fn in (lambda x, w, b: torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)), sd.batched_linear):
        xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = torch.relu(layer_fn(xs, ws, bs))
        results.append((y.detach(), *torch.autograd.grad((y * upstream).sum(), (xs, ws, bs))))
    for theirs, mine in zip(*results):
        assert torch.equal(mine.contiguous().view(torch.int32), theirs.contiguous().view(torch.int32))
    assert not results[0][2].is_contiguous() and results[1][2].is_contiguous()


def test_q_values_shapes_for_every_architecture():
    for env in sd.CHANNELS:
        for arch in ["dense", "spatial", "minatar_cnn"]:
            cfg = sd.Config(env=env, arch=arch)
            mask, _ = sd.build_mask(cfg, 0)
            params = {k: v.unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in sd.init_params(cfg, 0, mask).items()}
            q = sd.q_values(params, torch.rand(2, 7, cfg.input_size))
            assert q.shape == (2, 7, 6)


@pytest.mark.parametrize("arch", ["dense", "spatial", "minatar_cnn", "l1"])
def test_observations_as_bool_give_the_q_values_and_gradients_of_floats(arch):
    """The replay hands the GPU's sparse layer its observations as bool (it gathers bits); every
    other layer, here on the CPU, takes them as 0.0 and 1.0."""
    torch.manual_seed(6)
    cfg = sd.Config(env="space_invaders", arch=arch)
    mask, _ = sd.build_mask(cfg, 0)
    x = torch.rand(2, 32, cfg.input_size) < 0.1
    results = []
    for obs in (x.float(), x):
        params = {k: v.unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in sd.init_params(cfg, 0, mask).items()}
        learned = [t.requires_grad_(True) for t in params.values() if t.is_floating_point()]
        q = sd.q_values(params, obs)
        results.append((q.detach(), *torch.autograd.grad(q.square().sum(), learned)))
    for floats, bools in zip(*results):
        assert torch.equal(floats, bools)


def test_centred_rmsprop_matches_torch_and_survives_constant_gradients():
    torch.manual_seed(1)
    p1 = torch.randn(50, requires_grad=True)
    p2 = p1.detach().clone().requires_grad_(True)
    ours = sd.CentredRMSprop([p1], lr=2.5e-4, alpha=0.95, eps=0.01)
    theirs = torch.optim.RMSprop([p2], lr=2.5e-4, alpha=0.95, eps=0.01, centered=True)
    for _ in range(20):
        g = torch.randn(50)
        p1.grad, p2.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(p1, p2)
    constant = torch.zeros(1000, requires_grad=True)
    opt = sd.CentredRMSprop([constant], lr=2.5e-4, alpha=0.95, eps=0.01)
    for _ in range(200):
        constant.grad = torch.full((1000,), 1e-3)
        opt.step()
    assert torch.isfinite(constant).all()


@pytest.mark.parametrize("kernels", ["cpp", "torch"])
def test_the_optimisers_l1_term_is_autograds_penalty_gradient_bit_for_bit(kernels, monkeypatch, request):
    if kernels == "torch":
        monkeypatch.setattr(backends, "_kernels", lambda: None)
    else:
        request.getfixturevalue("cpp_kernels")
    torch.manual_seed(2)
    w = torch.randn(3, 40, 50) * 1e-2
    w[0, :5] = 0.0
    w[1, :5] = -0.0
    coef = torch.tensor([1e-3, 0.0, 1e-5])
    fused = w.clone().requires_grad_(True)
    autograd = w.clone().requires_grad_(True)
    ours = sd.CentredRMSprop([fused], lr=2.5e-4, alpha=0.95, eps=0.01, l1={0: coef})
    reference = sd.CentredRMSprop([autograd], lr=2.5e-4, alpha=0.95, eps=0.01)
    for _ in range(30):
        g = torch.randn(3, 40, 50) * 1e-3
        fused.grad = g.clone()
        autograd.grad = g.clone()
        (coef * autograd.abs().sum((1, 2))).sum().backward()  # accumulates onto g
        ours.step()
        reference.step()
    assert torch.equal(fused, autograd)
    assert all(torch.equal(a, b) for a, b in zip(ours.square_avg + ours.grad_avg,
                                                reference.square_avg + reference.grad_avg))


@pytest.mark.parametrize("l1", [False, True], ids=["", "with L1"])
@pytest.mark.parametrize("agents", [1, 4], ids=["fewer agents than threads", "agent by agent"])
def test_acting_in_the_step_gives_the_bits_of_a_step_then_the_layer(cpp_kernels, agents, l1):
    """The update's step acts for the next frame on the weights it has just stepped
    (CentredRMSprop.step's act): the parameters and optimiser state of a plain step, and the
    activations sparse_relu_layer gives on them, bit for bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = sd.Config(env="space_invaders", hidden_units=120)
        torch.manual_seed(agents)
        masks = torch.stack([sd.random_mask(cfg, seed) for seed in range(agents)])
        plan = sd.sparse_plan(masks, cfg.input_size)
        x = (torch.rand(agents, 1, cfg.input_size) < 0.15).float()
        start = [torch.randn(agents, 120, cfg.k) * 0.2, torch.randn(agents, 120) * 0.1]
        grads = [torch.randn_like(t) for t in start]
        runs = []
        for act in (False, True):
            params = [t.clone().requires_grad_() for t in start]
            opt = sd.CentredRMSprop(params, lr=0.05, alpha=0.95, eps=0.01,
                                    l1={0: torch.full((agents,), 1e-2)} if l1 else None)
            for _ in range(2):
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                acted = opt.step((0, x.transpose(1, 2).contiguous(), params[1], plan) if act else None)
            if not act:
                acted = sd.sparse_relu_layer(x, params[0].detach(), params[1].detach(), plan)
            runs.append([acted, *params, *opt.square_avg, *opt.grad_avg])
        for plain, fused in zip(*runs):
            assert torch.equal(fused.detach().view(torch.int32), plain.detach().view(torch.int32))
    finally:
        torch.set_num_threads(previous)


def test_dense_layers_take_the_matmul_path_and_agree_with_the_gather_path():
    cfg = sd.Config(arch="dense")
    mask, _ = sd.build_mask(cfg, 0)
    params = {k: v.unsqueeze(0) for k, v in sd.init_params(cfg, 0, mask).items()}
    x = (torch.rand(1, 9, cfg.input_size) < 0.1).float()
    gathered = sd.q_values(params, x)
    group = sd._Group([0], [cfg], [sd.init_params(cfg, 0, mask)], torch.device("cpu"), 1)
    assert "index" not in group.params
    torch.testing.assert_close(sd.q_values(group.params, x), gathered)


def test_the_masked_dense_layer_follows_in_place_changes_of_its_weights():
    """The masked-dense layer keeps each weight tensor's dense copy until the tensor changes: an
    update by torch's ops or by the C++ optimiser, or a copy into it (a target sync), must show
    in the next forward pass."""
    torch.manual_seed(3)
    n, b, d, u, k = 2, 4, 30, 10, 5
    x = torch.randn(n, b, d)
    index = random_masks(n, u, k, d)
    plan = sd.sparse_plan(index, d, masked_dense=True)
    w = torch.randn(n, u, k, requires_grad=True)

    def check():
        torch.testing.assert_close(sd.sparse_linear(x, w, plan), dense_masked(x, w.detach(), index, d))

    check()
    with torch.no_grad():
        w.mul_(2.0)
    check()
    with torch.no_grad():
        w.copy_(torch.randn(n, u, k))
    check()
    optimiser = sd.CentredRMSprop([w], lr=0.1, alpha=0.9, eps=1e-2)  # C++ on the CPU where built
    sd.sparse_linear(x, w, plan).sum().backward()
    optimiser.step()
    check()
    other = torch.randn(n, u, k)  # a new tensor, whatever address it reuses, is not the old one
    del w
    w = other
    check()
