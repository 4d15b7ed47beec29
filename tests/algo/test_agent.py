"""Agent state (wsrl_dist.algo.agent) and the exported CPU policy (wsrl_dist.algo.policy)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tests.algo._helpers import (
    ACT,
    OBS,
    adam_steps,
    params,
    random_batch,
    same,
    tiny_agent,
    tiny_net,
    tiny_sac,
)
from wsrl_dist.algo import cql as cql_lib
from wsrl_dist.algo import iql as iql_lib
from wsrl_dist.algo import update
from wsrl_dist.algo.policy import Policy

SAC = tiny_sac()
BATCH = SAC.utd * SAC.batch_size


def _trained(seed: int = 0, bundles: int = 2, **kw):
    agent = tiny_agent(seed=seed, **kw)
    for i in range(bundles):
        update.sac_bundle(agent, random_batch(BATCH, seed=10 + i), SAC)
    return agent


def _through_bytes(state: dict) -> dict:
    """torch.save / torch.load(weights_only=True), as checkpoints are written and read."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _outputs(agent, obs, act):
    return [*agent.actor.dist_params(obs), agent.critic(obs, act), agent.target_critic(obs, act),
            agent.temperature()]


def _opt_tensors(opt) -> list[torch.Tensor]:
    return [v for st in opt.state_dict()["state"].values() for v in st.values()]


# ---------------------------------------------------------------- round trip


def test_state_dict_round_trip_restores_outputs_and_adam_states():
    src = _trained(seed=0)
    dst = tiny_agent(seed=1)  # different init, empty Adam states
    obs, act = torch.randn(9, OBS), torch.rand(9, ACT) * 2 - 1
    assert not all(torch.equal(a, b) for a, b in zip(_outputs(src, obs, act), _outputs(dst, obs, act), strict=True))
    dst.load_state_dict(_through_bytes(src.state_dict()))
    for a, b in zip(_outputs(src, obs, act), _outputs(dst, obs, act), strict=True):
        assert torch.equal(a, b)
    for name in ("actor_opt", "critic_opt", "temperature_opt"):
        a, b = _opt_tensors(getattr(src, name)), _opt_tensors(getattr(dst, name))
        assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_restored_agent_continues_training_identically_and_needs_the_adam_states():
    src = _trained(seed=0)
    state = _through_bytes(src.state_dict())
    full = tiny_agent(seed=1)
    full.load_state_dict(state)
    nets_only = tiny_agent(seed=1)  # networks restored, Adam moments and counts fresh
    nets_only.load_state_dict({k: v for k, v in state.items() if not k.endswith("_opt")}, skip_missing=True)
    batch = random_batch(BATCH, seed=99)
    for agent in (src, full, nets_only):
        torch.manual_seed(5)
        update.sac_bundle(agent, batch, SAC)
    for name in ("actor", "critic", "target_critic", "temperature"):
        assert same(params(getattr(full, name)), params(getattr(src, name))), name
    assert not same(params(nets_only.critic), params(src.critic))


def test_missing_part_is_an_error_unless_skip_missing():
    agent = tiny_agent(lagrange_init=1.0)
    sac_state = tiny_agent(seed=3).state_dict()
    with pytest.raises(KeyError, match="lagrange"):
        agent.load_state_dict(sac_state)
    lagrange = agent.lagrange().item()
    agent.load_state_dict(sac_state, skip_missing=True)
    assert agent.lagrange().item() == lagrange
    assert same(params(agent.critic), params(tiny_agent(seed=3).critic))


# ---------------------------------------------------------------- pre-trained checkpoints into SAC


def test_sac_agent_loads_a_cql_lagrange_checkpoint_with_skip_missing():
    cql = tiny_agent(seed=0, lagrange_init=1.0, lagrange_lr=1e-2)
    cfg = cql_lib.CQLConfig(use_calql=False, cql_autotune_alpha=True)
    for i in range(3):
        update.cql_step(cql, random_batch(16, seed=i), SAC, cfg)
    state = _through_bytes(cql.state_dict())
    assert {"lagrange", "lagrange_opt"} <= set(state)
    sac = tiny_agent(seed=1)
    sac.load_state_dict(state, skip_missing=True)
    assert sac.lagrange is None  # the multiplier is not carried into fine-tuning (reference 1.2)
    for name in ("actor", "critic", "target_critic", "temperature"):
        assert same(params(getattr(sac, name)), params(getattr(cql, name))), name
    assert adam_steps(sac.critic_opt) == adam_steps(cql.critic_opt) == [3] * len(adam_steps(cql.critic_opt))
    assert adam_steps(sac.temperature_opt) == [3]
    update.sac_bundle(sac, random_batch(BATCH), SAC)  # the transferred Adam states are usable as they are
    assert set(adam_steps(sac.critic_opt)) == {3 + SAC.utd + 1}


def test_sac_agent_loads_an_iql_checkpoint_with_a_value_net():
    iql = tiny_agent(seed=0, with_value=True)
    for i in range(3):
        update.iql_step(iql, random_batch(16, seed=i), SAC, iql_lib.IQLConfig())
    state = _through_bytes(iql.state_dict())
    assert {"value", "value_opt"} <= set(state)
    sac = tiny_agent(seed=1)
    sac.load_state_dict(state, skip_missing=True)
    assert sac.value is None
    assert same(params(sac.actor), params(iql.actor)) and same(params(sac.critic), params(iql.critic))
    assert adam_steps(sac.temperature_opt) == [0]  # IQL never stepped alpha
    info = update.sac_bundle(sac, random_batch(BATCH), SAC)
    assert torch.isfinite(info["critic_loss"])


def test_loading_keeps_the_current_learning_rates():
    src = _trained(seed=0, sac=tiny_sac(critic_lr=1e-2, actor_lr=2e-2, temperature_lr=3e-2))
    dst = tiny_agent(seed=1)  # tiny_sac: critic 3e-4, actor 1e-4, temperature 1e-4
    dst.load_state_dict(_through_bytes(src.state_dict()))
    assert [g["lr"] for g in dst.critic_opt.param_groups] == [3e-4]
    assert [g["lr"] for g in dst.actor_opt.param_groups] == [1e-4]
    assert [g["lr"] for g in dst.temperature_opt.param_groups] == [1e-4]
    assert adam_steps(dst.critic_opt) == adam_steps(src.critic_opt)
    # and the next Adam step really uses it: a zero-gradient step moves alpha's raw by lr * m^ / sqrt(v^)
    raw = dst.temperature.raw
    st = dst.temperature_opt.state[raw]
    t = int(st["step"]) + 1
    m_hat = 0.9 * st["exp_avg"].item() / (1 - 0.9**t)
    v_hat = 0.999 * st["exp_avg_sq"].item() / (1 - 0.999**t)
    before = raw.item()
    update._ghost_step(dst.temperature_opt)
    assert before - raw.item() == pytest.approx(1e-4 * m_hat / (v_hat**0.5 + 1e-8), rel=1e-3)


# ---------------------------------------------------------------- exported policy


@pytest.mark.parametrize("std_parameterization", ["exp", "uniform"])
def test_exported_policy_acts_with_tanh_of_the_agent_mean(std_parameterization):
    net = tiny_net(std_parameterization=std_parameterization)
    agent = _trained(seed=0, net=net)
    weights = agent.export_policy()
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    torch.manual_seed(123)  # a different init in the policy: the loaded weights must replace it
    policy = Policy(OBS, ACT, net, seed=0)
    policy.load(weights, version=7)
    assert policy.version == 7
    obs = np.random.default_rng(0).normal(size=(11, OBS)).astype(np.float32) * 3
    with torch.no_grad():
        want = torch.tanh(agent.actor.dist_params(torch.as_tensor(obs))[0]).numpy()
    np.testing.assert_allclose(policy.act(obs, deterministic=True), want, atol=1e-5)  # numpy vs torch
    stochastic = policy.act(obs)
    assert stochastic.shape == (11, ACT) and np.abs(stochastic).max() <= 1.0
    assert np.abs(stochastic - want).max() > 1e-3


def test_exported_weights_are_a_snapshot():
    agent = _trained(seed=0)
    weights = agent.export_policy()
    frozen = {k: v.copy() for k, v in weights.items()}
    update.sac_bundle(agent, random_batch(BATCH, seed=50), SAC)
    assert all(np.array_equal(weights[k], frozen[k]) for k in weights)
    assert not all(np.array_equal(agent.export_policy()[k], frozen[k]) for k in weights)


def test_policy_sampling_is_reproducible_from_its_seed():
    weights = _trained(seed=0).export_policy()
    obs = np.zeros((4, OBS), np.float32)
    acts = []
    for seed in (1, 1, 2):
        p = Policy(OBS, ACT, tiny_net(), seed=seed)
        p.load(weights, version=0)
        acts.append(p.act(obs))
    np.testing.assert_array_equal(acts[0], acts[1])
    assert not np.array_equal(acts[0], acts[2])
