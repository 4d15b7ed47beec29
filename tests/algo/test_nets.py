"""Networks (wsrl_dist.algo.nets): stacked Q ensemble, tanh-Gaussian actor, softplus scalars."""

from __future__ import annotations

import math

import pytest
import torch

from tests.algo._helpers import ACT, OBS, tiny_net
from wsrl_dist.algo.nets import EnsembleCritic, Scalar, TanhGaussianActor


def _obs(n: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, OBS, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------- ensemble critic


@pytest.mark.parametrize("layer_norm", [True, False])
def test_stacked_ensemble_forward_equals_each_member_computed_alone(layer_norm):
    torch.manual_seed(0)
    critic = EnsembleCritic(OBS, ACT, [16, 16, 16], ensemble=5, layer_norm=layer_norm)
    with torch.no_grad():  # non-trivial LayerNorm affine params, so they must be indexed per member
        for p in [*critic.ln_scales, *critic.ln_biases, *critic.biases]:
            p.normal_()
    obs, act = _obs(7), torch.rand(7, ACT) * 2 - 1
    q = critic(obs, act)
    assert q.shape == (5, 7)
    for e in range(5):
        torch.testing.assert_close(q[e], critic.member(e, obs, act), rtol=1e-5, atol=1e-5)
    # the members are different networks (per-member init), so the comparison above is not vacuous
    assert (q[0] - q[1]).abs().max() > 1e-2


def test_ensemble_members_get_independent_gradients():
    torch.manual_seed(0)
    critic = EnsembleCritic(OBS, ACT, [8], ensemble=3, layer_norm=True)
    obs, act = _obs(4), torch.zeros(4, ACT)
    critic(obs, act)[1].sum().backward()  # only member 1 in the loss
    for w in critic.weights:
        assert w.grad[1].abs().sum() > 0
        assert w.grad[0].abs().sum() == 0 and w.grad[2].abs().sum() == 0


@pytest.mark.parametrize("layer_norm", [True, False])
def test_member_subset_forward_is_the_full_forward_indexed_values_and_gradients(layer_norm):
    """critic(obs, act, members): the chosen members only, repeats allowed (the target and CQL
    subsets are drawn with replacement); a repeated member's gradient counts once per draw."""
    torch.manual_seed(0)
    critic = EnsembleCritic(OBS, ACT, [16, 16], ensemble=5, layer_norm=layer_norm)
    with torch.no_grad():
        for p in [*critic.ln_scales, *critic.ln_biases, *critic.biases]:
            p.normal_()
    obs, act = _obs(6), torch.rand(6, ACT) * 2 - 1
    members = torch.tensor([3, 0, 3])
    weights = torch.randn(3, 6)

    sub = critic(obs, act, members)
    assert sub.shape == (3, 6)
    (sub * weights).sum().backward()
    grads_sub = [p.grad.clone() for p in critic.parameters()]
    critic.zero_grad()
    full = critic(obs, act)
    (full.index_select(0, members) * weights).sum().backward()
    torch.testing.assert_close(sub, full.index_select(0, members).detach(), rtol=1e-6, atol=1e-6)
    for g_sub, p in zip(grads_sub, critic.parameters()):
        torch.testing.assert_close(g_sub, p.grad, rtol=1e-5, atol=1e-6)
    assert critic.weights[0].grad[3].abs().sum() > 0 and critic.weights[0].grad[1].abs().sum() == 0


# ---------------------------------------------------------------- tanh-Gaussian actor


def _reference_log_prob(mean: torch.Tensor, log_std: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """float64: Normal(mean, std).log_prob(u) - log(1 - tanh(u)^2), summed over action dims."""
    mean, std, pre = mean.double(), log_std.double().exp(), pre.double()
    normal = torch.distributions.Normal(mean, std).log_prob(pre)
    return (normal - torch.log(1 - torch.tanh(pre) ** 2)).sum(-1)


@pytest.mark.parametrize("std_parameterization", ["exp", "uniform"])
def test_sampled_log_prob_equals_float64_reference(std_parameterization):
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, tiny_net(std_parameterization=std_parameterization))
    if std_parameterization == "uniform":
        with torch.no_grad():
            actor.log_std.copy_(torch.tensor([-0.5, 0.0, 0.4]))
    obs = _obs(64)
    mean, log_std = actor.dist_params(obs)
    torch.manual_seed(123)
    action, logp = actor(obs)
    torch.manual_seed(123)  # same noise: recover the pre-tanh sample u exactly
    pre = mean + log_std.exp() * torch.randn_like(mean)
    assert pre.abs().max() < 4.0  # moderate values: the float32 path is accurate there
    torch.testing.assert_close(action, torch.tanh(pre))
    torch.testing.assert_close(logp.double(), _reference_log_prob(mean, log_std, pre), rtol=1e-4, atol=1e-4)


def test_multi_sample_log_prob_equals_reference_per_sample():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, tiny_net())
    obs = _obs(6)
    mean, log_std = actor.dist_params(obs)
    torch.manual_seed(7)
    actions, logp = actor(obs, 4)
    assert actions.shape == (6, 4, ACT) and logp.shape == (6, 4)
    torch.manual_seed(7)
    pre = mean[:, None] + log_std.exp()[:, None] * torch.randn(6, 4, ACT)
    torch.testing.assert_close(actions, torch.tanh(pre))
    ref = _reference_log_prob(mean[:, None].expand(-1, 4, -1), log_std[:, None].expand(-1, 4, -1), pre)
    torch.testing.assert_close(logp.double(), ref, rtol=1e-4, atol=1e-4)
    assert (actions[:, 0] - actions[:, 1]).abs().max() > 1e-3  # independent draws per sample


def test_log_prob_of_given_actions_agrees_with_the_sampling_path():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, tiny_net())
    obs = _obs(256)
    actions, logp = actor(obs)
    keep = actions.abs().max(-1).values < 0.95  # non-saturated: atanh is well conditioned
    assert keep.sum() > 100
    torch.testing.assert_close(actor.log_prob(obs, actions)[keep], logp[keep], rtol=1e-3, atol=1e-3)


def test_log_prob_clips_dataset_actions_away_from_plus_minus_one():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, tiny_net())
    obs = _obs(3)
    at_edge = torch.ones(3, ACT)
    lp = actor.log_prob(obs, at_edge)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, actor.log_prob(obs, at_edge * 0.99999))


@pytest.mark.parametrize("std_parameterization", ["exp", "uniform"])
@pytest.mark.parametrize("raw, expected_std", [(100.0, 10.0), (-100.0, 1e-5)])
def test_std_is_clamped_to_reference_range(std_parameterization, raw, expected_std):
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, tiny_net(std_parameterization=std_parameterization))
    with torch.no_grad():
        if std_parameterization == "exp":
            actor.log_std_head.weight.zero_()
            actor.log_std_head.bias.fill_(raw)
        else:
            actor.log_std.fill_(raw)
    _, log_std = actor.dist_params(_obs(4))
    torch.testing.assert_close(log_std.exp(), torch.full((4, ACT), expected_std), rtol=1e-5, atol=0)
    assert torch.isfinite(actor(_obs(4))[1]).all()


def test_uniform_std_ignores_the_state_while_exp_std_depends_on_it():
    torch.manual_seed(0)
    uniform = TanhGaussianActor(OBS, ACT, tiny_net(std_parameterization="uniform"))
    exp = TanhGaussianActor(OBS, ACT, tiny_net(std_parameterization="exp"))
    obs = torch.cat([_obs(4, seed=1), _obs(4, seed=2, scale=10.0)])
    _, log_std_u = uniform.dist_params(obs)
    torch.testing.assert_close(log_std_u, torch.zeros_like(log_std_u))  # "uniform" starts at log std 0
    with torch.no_grad():
        uniform.log_std.copy_(torch.tensor([0.3, -1.0, 0.7]))
    _, log_std_u = uniform.dist_params(obs)
    assert torch.equal(log_std_u, log_std_u[:1].expand_as(log_std_u))
    assert not any(n.startswith("log_std_head") for n, _ in uniform.named_parameters())
    _, log_std_e = exp.dist_params(obs)
    assert (log_std_e - log_std_e[:1]).abs().max() > 1e-3


def test_mode_is_tanh_of_the_mean():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, tiny_net())
    obs = _obs(5, scale=3.0)
    torch.testing.assert_close(actor.mode(obs), torch.tanh(actor.dist_params(obs)[0]))


# ---------------------------------------------------------------- positive scalars


@pytest.mark.parametrize("init", [1.0, 0.1, 5.0, 1e-3])
def test_scalar_starts_at_its_init_value(init):
    s = Scalar(init)
    assert s().item() == pytest.approx(init, rel=1e-5)
    # softplus parameterisation: d alpha / d raw = sigmoid(raw) > 0 and alpha stays positive
    s().backward()
    assert s.raw.grad.item() == pytest.approx(1 - math.exp(-init), rel=1e-4)
    with torch.no_grad():
        s.raw.fill_(-50.0)
    assert s().item() > 0
