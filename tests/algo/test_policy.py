"""CPU Policy (wsrl_dist.algo.policy): the numpy actor against the torch TanhGaussianActor it replaces
on the rollout side, for the net shapes of the task families, on the batch-1 and the batch paths."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from wsrl_dist.algo.nets import LOG_STD_MAX, LOG_STD_MIN, NetConfig, TanhGaussianActor
from wsrl_dist.algo.policy import Policy, pin_blas_threads

OBS, ACT = 11, 3
NETS = {
    # locomotion / adroit / antmaze shapes (smaller widths where the shape, not the size, matters)
    "layer-norm": NetConfig(actor_hidden=[256, 256], layer_norm=True, kernel_scale_final=1e-2),
    "no-layer-norm": NetConfig(actor_hidden=[64, 64], layer_norm=False, kernel_scale_final=None),
    "uniform-std": NetConfig(actor_hidden=[64, 64], std_parameterization="uniform"),
    "three-layers": NetConfig(actor_hidden=[32, 48, 40], kernel_scale_final=None),
}


def _actor(net: NetConfig, seed: int = 0) -> TanhGaussianActor:
    """A torch actor with every parameter moved off its init: LayerNorm scales of both signs and one
    exactly 0 (the paths of the folded weights), non-zero biases, log_std spread over [-2, 0.5]."""
    torch.manual_seed(seed)
    actor = TanhGaussianActor(OBS, ACT, net).requires_grad_(False)
    for m in actor.trunk.net:
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.copy_(torch.randn_like(m.weight))
            m.bias.copy_(torch.randn_like(m.bias) * 0.5)
        elif isinstance(m, torch.nn.Linear):
            m.bias.copy_(torch.randn_like(m.bias) * 0.1)
    actor.mean.bias.copy_(torch.randn(ACT) * 0.1)
    if net.std_parameterization == "exp":
        actor.log_std_head.weight.mul_(0.3)
        actor.log_std_head.bias.copy_(torch.rand(ACT) * 2.5 - 2.0)
    else:
        actor.log_std.copy_(torch.rand(ACT) * 2.5 - 2.0)
    if net.layer_norm:
        actor.trunk.net[1].weight[0] = 0.0
    return actor


def _weights(actor: TanhGaussianActor) -> dict[str, np.ndarray]:
    """What Agent.export_policy() hands out."""
    return {k: v.detach().cpu().numpy().copy() for k, v in actor.state_dict().items()}


def _policy(net: NetConfig, actor: TanhGaussianActor, seed: int = 0) -> Policy:
    policy = Policy(OBS, ACT, net, seed=seed)
    policy.load(_weights(actor), version=3)
    return policy


def _obs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, OBS)) * 3  # float64, as gymnasium's


def _torch_params(actor: TanhGaussianActor, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, log_std = actor.dist_params(torch.as_tensor(obs, dtype=torch.float32))
    return mean.numpy(), log_std.numpy()


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("name", list(NETS))
def test_numpy_forward_matches_the_torch_actor(name):
    net = NETS[name]
    actor = _actor(net)
    policy = _policy(net, actor)
    obs = _obs(37)
    want_mean, want_log_std = _torch_params(actor, obs)
    mean, log_std = policy.dist_params(obs)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_std, want_log_std, rtol=1e-5, atol=1e-5)
    mode = policy.act(obs, deterministic=True)
    assert mode.dtype == np.float32 and mode.shape == (37, ACT)
    np.testing.assert_allclose(mode, np.tanh(want_mean), atol=1e-5)
    # not vacuous: the means depend on the observation and the std is not at a bound
    assert np.ptp(want_mean, axis=0).min() > 0.1
    assert (want_log_std > LOG_STD_MIN + 1).all() and (want_log_std < LOG_STD_MAX - 1).all()


@pytest.mark.parametrize("name", list(NETS))
def test_batch_one_path_matches_torch_row_by_row(name):
    """Batch 1 takes its own path (bias in the matmul, LayerNorm 1/std as a python float)."""
    net = NETS[name]
    actor = _actor(net, seed=1)
    policy = _policy(net, actor)
    obs = _obs(5, seed=1)
    want_mean, want_log_std = _torch_params(actor, obs)
    for i in range(5):
        mean, log_std = policy.dist_params(obs[i : i + 1])
        np.testing.assert_allclose(mean[0], want_mean[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(log_std[0], want_log_std[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(policy.act(obs[i], deterministic=True), np.tanh(want_mean[i]),
                                   atol=1e-5)  # a single [O] observation -> [A]


@pytest.mark.parametrize("std_parameterization", ["exp", "uniform"])
def test_log_std_is_clamped_as_in_torch(std_parameterization):
    net = NetConfig(actor_hidden=[32, 32], std_parameterization=std_parameterization)
    actor = _actor(net)
    if std_parameterization == "exp":
        actor.log_std_head.bias.copy_(torch.tensor([40.0, -40.0, 0.0]))  # beyond both bounds
    else:
        actor.log_std.copy_(torch.tensor([40.0, -40.0, 0.0]))
    policy = _policy(net, actor, seed=4)
    obs = _obs(6)
    mean, want = _torch_params(actor, obs)
    _, log_std = policy.dist_params(obs)
    np.testing.assert_allclose(log_std, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_std[:, :2], [[LOG_STD_MAX, LOG_STD_MIN]] * 6, rtol=1e-6)
    # sampling clamps too: std 10, not e^40 (tanh would be +-1 for every sample)
    eps = np.random.default_rng(4).standard_normal((6, ACT), dtype=np.float32)
    np.testing.assert_allclose(policy.act(obs), np.tanh(mean + np.exp(want) * eps), atol=1e-5)


def test_constructor_weights_are_the_seeded_torch_init():
    """data/builder.py's "random" policy: torch.manual_seed(s) then Policy(...) acts as the actor
    that torch.manual_seed(s) then TanhGaussianActor(...) builds."""
    net = NETS["layer-norm"]
    torch.manual_seed(11)
    policy = Policy(OBS, ACT, net)
    torch.manual_seed(11)
    actor = TanhGaussianActor(OBS, ACT, net)
    obs = _obs(4)
    with torch.no_grad():
        want = actor.mode(torch.as_tensor(obs, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(policy.act(obs, deterministic=True), want, atol=1e-5)
    assert policy.version == -1


# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", ["layer-norm", "uniform-std"])
def test_samples_are_tanh_of_mean_plus_std_times_the_seeded_noise(name):
    net = NETS[name]
    actor = _actor(net)
    policy = _policy(net, actor, seed=5)
    obs = _obs(8)
    mean, log_std = _torch_params(actor, obs)
    eps = np.random.default_rng(5).standard_normal((8, ACT), dtype=np.float32)
    np.testing.assert_allclose(policy.act(obs), np.tanh(mean + np.exp(log_std) * eps), atol=1e-5)


def test_samples_are_in_range_and_reproducible_from_the_seed():
    net = NETS["layer-norm"]
    weights = _weights(_actor(net))
    runs = []
    for seed in (1, 1, 2):
        policy = Policy(OBS, ACT, net, seed=seed)
        policy.load(weights, version=0)
        runs.append([policy.act(_obs(n, seed=n)) for n in (1, 4, 1, 16)])
    for a in runs[0]:
        assert a.dtype == np.float32 and np.abs(a).max() <= 1.0
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)
    assert not any(np.array_equal(a, c) for a, c in zip(runs[0], runs[2]))


@pytest.mark.parametrize("name", ["layer-norm", "uniform-std"])
def test_sample_distribution_matches_torch(name):
    """Mean and std of tanh-Gaussian samples, per observation and action dim, against torch's
    reparameterised samples of the same actor: within 5 standard errors."""
    net = NETS[name]
    actor = _actor(net, seed=2)
    actor.mean.weight.mul_(0.1)  # means and stds where tanh is not saturated
    if net.std_parameterization == "exp":
        actor.log_std_head.bias.fill_(-1.0)
    else:
        actor.log_std.copy_(torch.tensor([-1.5, -1.0, -0.5]))
    policy = _policy(net, actor, seed=0)
    n = 20000
    obs = np.repeat(_obs(3, seed=2), n, axis=0)
    ours = policy.act(obs).reshape(3, n, ACT)
    torch.manual_seed(0)
    with torch.no_grad():
        theirs = actor(torch.as_tensor(obs, dtype=torch.float32))[0].numpy().reshape(3, n, ACT)
    se = np.sqrt((ours.var(1) + theirs.var(1)) / n)
    assert (np.abs(ours.mean(1) - theirs.mean(1)) < 5 * se).all()
    assert (np.abs(ours.std(1) - theirs.std(1)) < 5 * se).all()
    assert ours.std(1).min() > 0.05  # actually stochastic, and not saturated at +-1


# ---------------------------------------------------------------- load


def test_load_copies_read_only_arrays_and_is_strict():
    net = NETS["three-layers"]
    actor = _actor(net)
    weights = _weights(actor)
    for v in weights.values():
        v.flags.writeable = False  # as Ray hands them out
    policy = Policy(OBS, ACT, net)
    policy.load(weights, version=9)
    assert policy.version == 9
    before = policy.act(_obs(3), deterministic=True)
    mutable = _weights(actor)
    policy.load(mutable, version=10)
    for v in mutable.values():
        v += 1.0  # the policy holds its own copies
    np.testing.assert_array_equal(policy.act(_obs(3), deterministic=True), before)
    with pytest.raises(KeyError, match="missing"):
        policy.load({k: v for k, v in weights.items() if k != "mean.bias"}, version=11)
    with pytest.raises(KeyError, match="unexpected"):
        policy.load({**weights, "log_std": np.zeros(ACT, np.float32)}, version=11)
    with pytest.raises(ValueError, match="mean.bias has shape"):  # would broadcast silently
        policy.load({**weights, "mean.bias": np.zeros(1, np.float32)}, version=11)
    assert policy.version == 10


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_pin_blas_threads_finds_numpys_openblas():
    with open("/proc/self/maps") as f:
        has_openblas = any("openblas" in line.lower() for line in f)
    if not has_openblas:
        pytest.skip("numpy is not linked against OpenBLAS here")
    assert pin_blas_threads(1) is True
