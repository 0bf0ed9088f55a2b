import dataclasses
import json

import numpy as np
import pytest
import torch

import sparse_dqn as sd
from study import store

TINY = dict(frames=1_200, learning_starts=300, replay_size=1_000, target_update=100,
            eps_decay_frames=500, hidden_units=400, pan_frames=1_000, log_every=400)


def tiny(**kw):
    return sd.Config(**{**TINY, **kw})


def test_frozen_keeps_hidden_weights_bit_identical_and_learned_changes_them():
    for regime in ["frozen", "learned"]:
        cfg = tiny(arch="spatial", regime=regime)
        run = sd.train(cfg, [0], progress=False)[0]
        initial = sd.init_params(cfg, 0, sd.spatial_mask(cfg))
        for name in ["hidden_w", "hidden_b"]:
            same = torch.equal(run.params[name], initial[name])
            assert same == (regime == "frozen"), (regime, name)
        assert not torch.equal(run.params["head_w"], initial["head_w"])  # the head always learns


def test_frozen_minatar_cnn_learns_only_its_head():
    cfg = tiny(arch="minatar_cnn", regime="frozen", frames=600)
    run = sd.train(cfg, [0], progress=False)[0]
    initial = sd.init_params(cfg, 0, None)
    assert all(torch.equal(run.params[n], initial[n]) for n in ["conv_w", "conv_b", "fc_w", "fc_b"])
    assert not torch.equal(run.params["head_w"], initial["head_w"])


def test_l1_shrinks_hidden_weights_and_reports_sparsity():
    runs = sd.train([tiny(arch="l1", l1_coef=0.0), tiny(arch="l1", l1_coef=1e-3)], [0], progress=False)
    plain, penalised = (r.params["hidden_w"].abs().mean() for r in runs)
    assert penalised < 0.5 * plain
    frames, fractions = zip(*runs[1].sparsity)
    assert frames == (400, 800, 1200)
    assert fractions[-1] > runs[0].sparsity[-1][1]
    assert np.array(runs[1].mask).shape == (400, 36)


def test_frozen_l1_uses_the_learned_l1_mask_with_fresh_weights(tmp_path):
    learned, frozen = sd.train([tiny(arch="l1", l1_coef=1e-3), tiny(arch="l1", regime="frozen", l1_coef=1e-3)],
                               [0], tmp_path, progress=False)
    assert torch.equal(frozen.params["index"], torch.tensor(learned.mask))
    k = frozen.config.k
    assert frozen.params["hidden_w"].shape == (400, k)
    assert frozen.params["hidden_w"].abs().max() <= 1 / np.sqrt(k)


def test_population_equals_separate_runs():
    pop = [(tiny(arch="spatial"), 0), (tiny(arch="spatial"), 1), (tiny(arch="random", regime="frozen"), 2),
           (tiny(arch="dense"), 3), (tiny(arch="dense"), 4)]
    together = sd.train_population(pop, progress=False)
    for (cfg, seed), run in zip(pop, together):
        alone = sd.train_population([(cfg, seed)], progress=False)[0]
        assert run.episode_returns == alone.episode_returns
        assert run.episode_frames == alone.episode_frames
        for name in run.params:
            assert torch.equal(run.params[name], alone.params[name]), name


def test_same_config_and_seed_give_identical_results():
    a, b = (sd.train(tiny(arch="predictive"), [5], progress=False)[0] for _ in range(2))
    assert a.episode_returns == b.episode_returns
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)


def test_result_store_round_trip_and_reuse(tmp_path):
    cfg = tiny(arch="dense", frames=500)
    first = sd.train(cfg, [0, 1], tmp_path, progress=False)
    files = sorted(tmp_path.glob("*/seed_*.json"))
    assert [f.name for f in files] == ["seed_0.json", "seed_1.json"]
    assert not list(tmp_path.glob("*/.tmp-*"))
    again = sd.train(cfg, [0, 1], tmp_path, progress=False)
    assert all(r.params is None for r in again)  # loaded, not recomputed
    assert [r.episode_returns for r in again] == [r.episode_returns for r in first]
    df = store.load_results(tmp_path)
    assert set(df.columns) >= {"env", "arch", "regime", "seed", "episode", "frame", "return"}
    assert len(df) == sum(len(r.episode_returns) for r in first)
    assert json.loads(files[0].read_text())["config"]["arch"] == "dense"
    other = dataclasses.replace(cfg, lr=1e-3)
    assert other.key() != cfg.key()
    assert dataclasses.replace(cfg, device="cuda").key() == cfg.key()


def test_population_rejects_agents_that_cannot_share_a_loop():
    with pytest.raises(ValueError, match="frames=600 differs"):
        sd.train([tiny(), tiny(frames=600)], [0], progress=False)


def test_config_rejects_bad_values_with_the_field_name():
    for kwargs, fragment in [({"env": "pong"}, "env='pong'"), ({"arch": "conv"}, "arch='conv'"),
                             ({"frames": 0}, "frames=0"), ({"fan_in": 401}, "fan_in=401"),
                             ({"regime": "both"}, "regime='both'"), ({"lr": -1.0}, "lr=-1.0")]:
        with pytest.raises(ValueError, match=fragment):
            sd.Config(**kwargs)


def random_policy_return(episodes=200):
    env = sd.make_env(sd.Config(), seed=123)
    rng = np.random.default_rng(0)
    returns, total = [], 0.0
    while len(returns) < episodes:
        reward, terminal = env.act(int(rng.integers(6)))
        total += reward
        if terminal:
            returns.append(total)
            total = 0.0
            env.reset()
    return float(np.mean(returns))


def test_short_breakout_run_beats_the_random_policy():
    cfg = sd.Config(arch="spatial", regime="learned", frames=15_000, learning_starts=1_000,
                    eps_decay_frames=8_000, target_update=250, replay_size=20_000)
    # 4 seeds: at 15,000 frames one seed in four can still be near random play
    runs = sd.train(cfg, [0, 1, 2, 3], progress=False)
    trained = np.mean([r.final_return(last=20) for r in runs])
    baseline = random_policy_return()
    assert 0.3 < baseline < 0.8
    assert trained > 2 * baseline, (trained, baseline)


def test_the_replays_cpp_pack_and_sample_equal_its_torch_ops_and_numpys_packbits_in_either_layout(cpp_kernels):
    rng = torch.Generator().manual_seed(3)
    native, plain = (sd.Replay(3, 50, 603, "cpu", native=flag) for flag in (True, False))
    for _ in range(50):
        obs, next_obs = ((torch.rand(3, 603, generator=rng) < 0.2).to(torch.uint8) for _ in range(2))
        action, reward, done = torch.randint(0, 6, (3,), generator=rng), torch.rand(3, generator=rng), torch.rand(3, generator=rng).round()
        packed = native.pack(obs)
        assert torch.equal(packed, plain.pack(obs))
        assert np.array_equal(packed.numpy(), np.packbits(obs.numpy(), axis=1))
        for replay in (native, plain):
            replay.add(replay.pack(obs), action, reward, replay.pack(next_obs), done)
    agents, idx = torch.tensor([2, 0]), torch.randint(0, 50, (2, 32), generator=rng)
    for mine, theirs in zip(native.sample(agents, idx), plain.sample(agents, idx)):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)
    # the sparse layer's layout: the same values, laid out (agents, inputs, batch) in memory
    for mine, theirs in zip(native.sample(agents, idx, inputs_major=True), plain.sample(agents, idx)):
        assert torch.equal(mine, theirs)
    x = native.sample(agents, idx, inputs_major=True)[0]
    assert x.shape == (2, 32, 603) and x.transpose(1, 2).is_contiguous()
    # the GPU's sparse layer takes them as bool
    for replay in (native, plain):
        binary, floats = replay.sample(agents, idx, binary=True), plain.sample(agents, idx)
        for i in (0, 3):
            assert binary[i].dtype == torch.bool and torch.equal(binary[i], floats[i].bool())
        for i in (1, 2, 4):
            assert torch.equal(binary[i], floats[i])


@pytest.mark.parametrize("arch", ["spatial", "l1"])
def test_a_full_size_population_equals_its_members_alone_on_one_thread(arch):
    """The study's sweeps train populations of 8 agents of 1,200 units on one thread each: their
    runs must be the runs a user gets for one seed alone. (On two threads the head's matmul made
    them differ in the last bits.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = sd.Config(env="breakout", arch=arch, regime="learned", frames=400, learning_starts=100,
                        target_update=100, replay_size=1_000)
        together = sd.train(cfg, [0, 1, 2, 3], progress=False)[0]
        alone = sd.train(cfg, [0], progress=False)[0]
    finally:
        torch.set_num_threads(threads)
    assert together.episode_returns == alone.episode_returns
    for name in alone.params:
        assert torch.equal(together.params[name], alone.params[name]), name
