"""The GPU's sparse hidden layer (sparse_triton): on a GPU where there is one, else on the CPU
under Triton's interpreter. Skipped where Triton is not installed (it comes with CUDA builds of
torch; requirements.txt does not pin it, since each torch build pins its own)."""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparse_dqn as sd
from engine import backends
import test_games
from test_network import dense_masked, random_masks

GPU = torch.cuda.is_available()
if not GPU:  # Triton defines its own library's kernels as interpreted only if this is set on import
    assert "triton" not in sys.modules, "imported before its interpreter could be asked for"
    os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton")
finally:
    if not GPU:
        del os.environ["TRITON_INTERPRET"]


@pytest.fixture
def device(monkeypatch):
    if GPU:
        return "cuda"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # sparse_dqn then runs the kernels on the CPU
    return "cpu"


@pytest.mark.parametrize("alike", [False, True], ids=["masks of their own", "masks alike"])
@pytest.mark.parametrize("batch", [1, 32, 40])
@pytest.mark.parametrize("bits", [False, True], ids=["floats", "bools"])
def test_the_triton_layer_equals_a_dense_masked_layer_in_values_and_gradients(device, alike, batch, bits):
    """A unit count that is not a multiple of the kernel's block and a k that is not a power of
    two; binary and real-valued inputs, or bool ones (packed 32 samples to a word: a batch of 40
    takes two); some units dead (ReLU off) in some samples."""
    torch.manual_seed(2)
    n, d, u, k = 3, 60, 70, 9
    x = (torch.rand(n, batch, d) < 0.3).float()
    if not bits:
        x[:, :, :10] *= torch.randn(n, batch, 10)
    index = random_masks(1, u, k, d).expand(n, u, k) if alike else random_masks(n, u, k, d)
    w = torch.randn(n, u, k)
    bias = torch.randn(n, u)
    w2, bias2 = (t.clone().requires_grad_(True) for t in (w, bias))
    ref = torch.relu(dense_masked(x, w2, index, d) + bias2.unsqueeze(2))
    g = torch.randn_like(ref)
    ref.backward(g)
    wt, biast = (t.to(device).requires_grad_(True) for t in (w, bias))
    plan = sd.sparse_plan(index.to(device), d, masked_dense=True)
    assert len(plan.gather_index) == (1 if alike else n)
    out = sd.sparse_relu_layer((x.bool() if bits else x).to(device), wt, biast, plan)
    assert out.grad_fn.name().startswith("_SparseReluTriton")
    torch.testing.assert_close(out.cpu(), ref.detach())
    assert (out == 0).any() and (out > 0).any()
    out.backward(g.to(device))
    torch.testing.assert_close(wt.grad.cpu(), w2.grad)
    torch.testing.assert_close(biast.grad.cpu(), bias2.grad)


@pytest.mark.parametrize("bits", [False, True], ids=["floats", "bools"])
def test_an_agent_gets_the_same_bits_from_the_triton_layer_alone_and_in_a_population(device, bits):
    """The masked-dense matmul's order of sums may depend on the population's size on a GPU; the
    Triton kernels' must not, in values and in gradients."""
    torch.manual_seed(3)
    n, b, d, u, k = 4, 32, 40, 50, 7
    x = (torch.rand(n, b, d) < 0.3).to(device)
    x = x if bits else x.float()
    index = random_masks(n, u, k, d).to(device)
    w, bias = torch.randn(n, u, k, device=device), torch.randn(n, u, device=device)
    g = torch.randn(n, u, b, device=device)

    def run(rows):
        wr, br = w[rows].clone().requires_grad_(True), bias[rows].clone().requires_grad_(True)
        out = sd.sparse_relu_layer(x[rows], wr, br, sd.sparse_plan(index[rows], d, masked_dense=True))
        out.backward(g[rows])
        return out.detach(), wr.grad, br.grad

    together = run(slice(None))
    for agent in range(n):
        alone = run(slice(agent, agent + 1))
        for a, t in zip(alone, together):
            assert torch.equal(a[0], t[agent])


@pytest.mark.parametrize("batch", [1, 5, 32, 40])
def test_bool_inputs_give_the_products_of_floats(device, batch):
    """What the training loop relies on when it hands the layer its observations as bool: the
    layer's values and its Q-values are the float path's bit for bit (each sum runs over the
    connections in one order), its gradients too under the interpreter; on a GPU the compiler
    lays out the gradients' sums over samples as it likes, so there they only agree to rounding."""
    torch.manual_seed(7)
    cfg = sd.Config(env="breakout", arch="random", hidden_units=70)
    n = 3
    params = [sd.init_params(cfg, seed, sd.build_mask(cfg, seed)[0]) for seed in range(n)]
    x = torch.rand(n, batch, cfg.input_size, device=device) < 0.1
    plan = sd.sparse_plan(torch.stack([p["index"] for p in params]).to(device), cfg.input_size, masked_dense=True)
    results = []
    for obs in (x.float(), x):
        stacked = {name: torch.stack([p[name] for p in params]).to(device) for name in params[0]}
        learned = [stacked[name].requires_grad_(True) for name in ("hidden_w", "hidden_b", "head_w", "head_b")]
        q = sd.q_values(stacked, obs, plan)
        results.append((q.detach(), *torch.autograd.grad(q.square().sum(), learned)))
    (floats, *float_grads), (bools, *bool_grads) = results
    assert torch.equal(bools, floats)
    for mine, theirs in zip(bool_grads, float_grads):
        if GPU:
            torch.testing.assert_close(mine, theirs)
        else:
            assert torch.equal(mine, theirs)


@pytest.mark.skipif(GPU, reason="bit for bit only under the interpreter (see the test above)")
def test_training_hands_the_gpus_layer_bools_and_gets_the_runs_of_floats(device, monkeypatch):
    """The GPU's training loop, on the CPU: the C++ kernels off, so that the games, the layer (on
    masked-dense plans) and the optimiser run Triton's kernels and the replay torch ops; with the
    replay's bool observations, against the same loop given floats."""
    cfg = sd.Config(env="space_invaders", frames=240, learning_starts=200, replay_size=300, target_update=20,
                    eps_decay_frames=20, hidden_units=48, pan_frames=1_000, log_every=100)
    monkeypatch.setattr(backends, "_kernels", lambda: None)
    monkeypatch.setattr(sd, "sparse_plan", functools.partial(sd.sparse_plan, masked_dense=True))
    layer_inputs = []
    monkeypatch.setattr(backends._SparseReluTriton, "forward", lambda ctx, x, *a, f=backends._SparseReluTriton.forward:
                        layer_inputs.append(x.dtype) or f(ctx, x, *a))
    bools = sd.train(cfg, [0, 1], progress=False)
    assert torch.bool in layer_inputs
    sample = sd.Replay.sample
    monkeypatch.setattr(sd.Replay, "sample", lambda self, agents, idx, inputs_major=False, binary=False:
                        sample(self, agents, idx, inputs_major))
    layer_inputs.clear()
    floats = sd.train(cfg, [0, 1], progress=False)
    assert torch.bool not in layer_inputs
    for mine, theirs in zip(bools, floats):
        assert mine.episode_returns == theirs.episode_returns and mine.episode_frames == theirs.episode_frames
        for name, tensor in mine.params.items():
            assert torch.equal(tensor, theirs.params[name])


def test_every_kernel_training_launches_compiles_for_an_h100_without_one(tmp_path):
    """The interpreter runs code that Triton's compiler rejects (a jit function whose branches
    return different types ran there and failed to compile): each launch of the layer, acting, the
    optimiser and the games, compiled ahead of time for sm_90 as a real launch would be, by
    benchmarks/triton_asm.py in a process of its own (Triton compiles nothing in one that imported
    it for the interpreter, as this one did)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "triton_asm.py"
    subprocess.run([sys.executable, str(script), "--arch", "90", "--json", str(tmp_path / "asm.json")], env=env,
                   check=True, capture_output=True)
    results = json.loads((tmp_path / "asm.json").read_text())["results"]
    assert {kernel for kernels in results.values() for kernel in kernels} == {
        "_pack", "_forward", "_forward_one", "_backward", "_centred_rmsprop", "_breakout_step",
        "_breakout_observe", "_breakout_reset", "_space_invaders_step", "_space_invaders_observe",
        "_space_invaders_reset"}
    for kernels in results.values():
        for counts in kernels.values():
            assert counts["instructions"] > 0 and counts["LDG"] > 0 and counts["STG"] > 0


@pytest.fixture
def triton_games(device, monkeypatch):
    """The device on which new games step and observe in the Triton kernels."""
    monkeypatch.setattr(backends, "_kernels", lambda: None)  # the C++ kernels would take CPU games first
    assert backends.game_kernels(torch.device(device), None) is backends._triton()
    return device


@pytest.mark.parametrize("env", ["breakout", "space_invaders"])
def test_the_triton_games_match_minatar_frame_by_frame(triton_games, env):
    """test_games' random play, fewer episodes under the interpreter; with ended episodes reset
    among running ones, and the same stream of draws for both."""
    twins = test_games.random_play(env, None, triton_games, agents=16, episodes=200 if GPU else 100)
    assert twins.game._kernels is backends._triton()


def test_the_triton_breakout_clears_every_brick_and_the_wall_refills(triton_games):
    test_games.test_scripted_breakout_clears_every_brick_and_the_wall_refills(None, triton_games)


def test_the_triton_space_invaders_clears_three_waves_with_ramping(triton_games):
    test_games.test_scripted_space_invaders_clears_three_waves_with_ramping(None, triton_games)


def test_observations_that_take_a_gradient_go_to_the_torch_layer(device):
    """The Triton kernels make no input gradient; a caller that asks for one still gets it."""
    torch.manual_seed(4)
    n, b, d, u, k = 2, 5, 30, 20, 6
    x = torch.randn(n, b, d, device=device, requires_grad=True)
    index = random_masks(n, u, k, d)
    w, bias = torch.randn(n, u, k, device=device), torch.randn(n, u, device=device)
    out = sd.sparse_relu_layer(x, w, bias, sd.sparse_plan(index.to(device), d, masked_dense=True))
    out.sum().backward()
    ref_x = x.detach().cpu().requires_grad_(True)
    torch.relu(dense_masked(ref_x, w.cpu(), index, d) + bias.cpu().unsqueeze(2)).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), ref_x.grad)


def test_the_triton_optimiser_step_is_centred_rmsprops_with_its_l1_term(device, monkeypatch):
    """Against the pure-torch step on the CPU, to rounding: where torch's CPU kernels fuse a
    multiply and an add, the interpreter (numpy) does not, and a GPU's compiler may. Zero weights
    of both signs (the L1 term's sign), an agent without L1, and a gradient held constant, whose
    variance can round below zero where a multiply and an add are fused (not in numpy)."""
    torch.manual_seed(5)
    w = torch.randn(3, 40, 50) * 1e-2
    w[0, :5] = 0.0
    w[1, :5] = -0.0
    coef = torch.tensor([1e-3, 0.0, 1e-5])
    ours = w.to(device).requires_grad_(True)
    reference = w.clone().requires_grad_(True)
    opt = sd.CentredRMSprop([ours], lr=2.5e-4, alpha=0.95, eps=0.01, l1={0: coef.to(device)})
    ref_opt = sd.CentredRMSprop([reference], lr=2.5e-4, alpha=0.95, eps=0.01, l1={0: coef})
    with monkeypatch.context() as torch_path:
        torch_path.setattr(backends, "_kernels", lambda: None)
        torch_path.delenv("TRITON_INTERPRET", raising=False)
        assert backends._triton_for(reference) is None
    monkeypatch.setattr(backends, "_kernels", lambda: None)  # the C++ step would take CPU tensors first
    calls = []
    monkeypatch.setattr(backends._triton(), "centred_rmsprop_step",
                        lambda *a, f=backends._triton().centred_rmsprop_step: calls.append(1) or f(*a))
    for step in range(40):
        g = torch.randn(3, 40, 50) * 1e-3
        ours.grad = g.to(device)
        reference.grad = g.clone()
        version = ours._version
        opt.step()
        assert ours._version > version  # what caches of the weights' layouts go by
        with monkeypatch.context() as torch_path:
            torch_path.delenv("TRITON_INTERPRET", raising=False)
            ref_opt.step()
    assert len(calls) == 40
    for a, b in zip([ours] + opt.square_avg + opt.grad_avg, [reference] + ref_opt.square_avg + ref_opt.grad_avg):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-5, atol=1e-9)
    constant = torch.zeros(1000, device=device, requires_grad=True)
    constant_opt = sd.CentredRMSprop([constant], lr=2.5e-4, alpha=0.95, eps=0.01)
    for _ in range(200):
        constant.grad = torch.full((1000,), 1e-3, device=device)
        constant_opt.step()
    assert len(calls) == 240 and torch.isfinite(constant).all()
