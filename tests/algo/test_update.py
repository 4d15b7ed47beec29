"""Update steps (wsrl_dist.algo.update): the online SAC bundle and the offline CQL / Cal-QL / IQL steps."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tests.algo._helpers import ACT, adam_steps, params, random_batch, same, tiny_agent, tiny_sac
from wsrl_dist.algo import cql as cql_lib
from wsrl_dist.algo import iql as iql_lib
from wsrl_dist.algo import update

UTD, MB = 3, 8  # tiny_sac: 3 critic minibatches of 8 rows per bundle
E = 4


def _warm(agent, cfg, bundles: int = 1, seed: int = 100):
    """Run a few bundles so that every Adam has moments (ghost steps then really move things)."""
    for i in range(bundles):
        update.sac_bundle(agent, random_batch(UTD * MB, seed=seed + i), cfg)


# ---------------------------------------------------------------- online bundle: structure


@pytest.mark.parametrize("ghost", [True, False])
def test_bundle_adam_step_counts(ghost):
    cfg = tiny_sac(ghost_adam_steps=ghost)
    agent = tiny_agent(sac=cfg)
    for bundles in (1, 2):
        update.sac_bundle(agent, random_batch(UTD * MB, seed=bundles), cfg)
        per_bundle = (UTD + 1, UTD + 1, UTD + 1) if ghost else (UTD, 1, 1)
        for opt, n in zip((agent.critic_opt, agent.actor_opt, agent.temperature_opt), per_bundle, strict=True):
            assert set(adam_steps(opt)) == {n * bundles}


@pytest.mark.parametrize("ghost", [True, False])
def test_exactly_utd_critic_steps_and_one_actor_and_alpha_step_have_real_gradients(ghost):
    cfg = tiny_sac(ghost_adam_steps=ghost)
    agent = tiny_agent(sac=cfg)
    seen: dict[str, list[bool]] = {"critic": [], "actor": [], "temperature": []}
    for name in seen:
        opt = getattr(agent, f"{name}_opt")
        opt.register_step_pre_hook(lambda o, args, kw, name=name: seen[name].append(
            any(bool(p.grad.abs().sum() > 0) for g in o.param_groups for p in g["params"])))
    update.sac_bundle(agent, random_batch(UTD * MB), cfg)
    if ghost:  # the reference steps every Adam on every sub-update; idle ones get zero gradients
        assert seen == {"critic": [True] * UTD + [False], "actor": [False] * UTD + [True],
                        "temperature": [False] * UTD + [True]}
    else:
        assert seen == {"critic": [True] * UTD, "actor": [True], "temperature": [True]}


def test_critic_steps_take_the_in_order_minibatches_and_actor_and_alpha_the_whole_batch():
    cfg = tiny_sac()
    agent = tiny_agent(sac=cfg)
    batch = random_batch(UTD * MB)
    calls: dict[str, list[torch.Tensor]] = {"critic": [], "target_critic": [], "actor": []}
    for name in calls:
        getattr(agent, name).register_forward_pre_hook(lambda m, args, name=name: calls[name].append(args[0]))
    update.sac_bundle(agent, batch, cfg)
    obs, nxt = batch.observations, batch.next_observations
    mbs = [slice(i * MB, (i + 1) * MB) for i in range(UTD)]

    def check(got, want):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)

    check(calls["critic"], [obs[s] for s in mbs] + [obs])  # Q(s, a) per minibatch, then the actor's Q
    check(calls["target_critic"], [nxt[s] for s in mbs])
    # a' ~ pi(s') per minibatch target, then the actor loss at s and alpha's entropy at s' (full batch)
    check(calls["actor"], [nxt[s] for s in mbs] + [obs, nxt])


def test_polyak_moves_the_target_by_tau_after_each_critic_step():
    cfg = tiny_sac(soft_target_update_rate=0.3, ghost_adam_steps=True)
    agent = tiny_agent(sac=cfg)
    _warm(agent, cfg)
    snaps = []  # (critic, target) right after each critic Adam step, before that step's Polyak
    agent.critic_opt.register_step_post_hook(
        lambda o, a, k: snaps.append((params(agent.critic), params(agent.target_critic))))
    target = params(agent.target_critic)
    update.sac_bundle(agent, random_batch(UTD * MB, seed=9), cfg)
    assert len(snaps) == UTD + 1  # the last one is the ghost step: no Polyak follows it
    assert same(snaps[0][1], target)  # the first critic step has not moved the target yet
    for (critic_k, target_k), (_, target_next) in zip(snaps[:UTD], snaps[1:], strict=True):
        assert not same(target_next, target_k)
        for got, t, c in zip(target_next, target_k, critic_k, strict=True):
            torch.testing.assert_close(got, t + 0.3 * (c - t), rtol=1e-6, atol=1e-7)
    assert same(snaps[-1][1], params(agent.target_critic))


# ---------------------------------------------------------------- each loss moves only its own parameters


def test_critic_step_moves_critic_and_target_only():
    cfg = tiny_sac()
    agent = tiny_agent(sac=cfg)
    _warm(agent, cfg)
    actor, temp, critic, target = (params(m) for m in (agent.actor, agent.temperature, agent.critic,
                                                        agent.target_critic))
    update.sac_critic_step(agent, random_batch(MB, seed=5), cfg)
    assert same(params(agent.actor), actor) and same(params(agent.temperature), temp)
    assert not same(params(agent.critic), critic) and not same(params(agent.target_critic), target)


def test_actor_and_temperature_step_leaves_critic_and_target_unchanged():
    cfg = tiny_sac()
    agent = tiny_agent(sac=cfg)
    _warm(agent, cfg)
    actor, temp, critic, target = (params(m) for m in (agent.actor, agent.temperature, agent.critic,
                                                        agent.target_critic))
    update.sac_actor_temperature_step(agent, random_batch(UTD * MB, seed=5))
    assert same(params(agent.critic), critic) and same(params(agent.target_critic), target)
    assert not same(params(agent.actor), actor) and not same(params(agent.temperature), temp)


@pytest.mark.parametrize("ghost", [True, False])
def test_idle_networks_move_within_a_bundle_only_with_ghost_adam_steps(ghost):
    cfg = tiny_sac(ghost_adam_steps=ghost)
    agent = tiny_agent(sac=cfg)
    _warm(agent, cfg)
    actor_at_critic_steps, critic_at_actor_step = [], []
    agent.critic_opt.register_step_post_hook(lambda o, a, k: actor_at_critic_steps.append(params(agent.actor)))
    agent.actor_opt.register_step_pre_hook(lambda o, a, k: critic_at_actor_step.append(params(agent.critic)))
    update.sac_bundle(agent, random_batch(UTD * MB, seed=7), cfg)
    critic_after = params(agent.critic)
    during_critic_phase = [same(actor_at_critic_steps[0], a) for a in actor_at_critic_steps[1:UTD]]
    if ghost:  # momentum-only Adam steps: the actor drifts between critic steps, the critic after the actor
        assert not any(during_critic_phase)
        assert not same(critic_at_actor_step[-1], critic_after)
    else:
        assert all(during_critic_phase)
        assert same(critic_at_actor_step[-1], critic_after)


def test_ghost_step_is_an_adam_step_with_zero_gradient():
    cfg = tiny_sac()
    agent = tiny_agent(sac=cfg)
    _warm(agent, cfg, bundles=2)
    raw = agent.temperature.raw
    st = agent.temperature_opt.state[raw]
    m, v, t, x = st["exp_avg"].item(), st["exp_avg_sq"].item(), int(st["step"]), raw.item()
    update._ghost_step(agent.temperature_opt)
    b1, b2, lr, eps = 0.9, 0.999, cfg.temperature_lr, 1e-8
    m, v, t = b1 * m, b2 * v, t + 1
    expected = x - lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    assert raw.item() == pytest.approx(expected, rel=1e-6)
    assert raw.item() != x


# ---------------------------------------------------------------- CQL / Cal-QL


def _loop_gap(agent, batch, cfg, seed):
    """Reference Delta [E, B], one member and one row at a time (cql_gap's random draws replayed)."""
    s, s2, n = batch.observations, batch.next_observations, cfg.cql_n_actions
    nb = s.shape[0]
    torch.manual_seed(seed)
    with torch.no_grad():
        a_rand = torch.empty(nb, n, ACT).uniform_(-1.0, 1.0)
        a_cur, lp_cur = agent.actor(s, n)
        a_nxt, lp_nxt = agent.actor(s2, n)
        out = torch.empty(E, nb)
        for e in range(E):
            for b in range(nb):
                sb = s[b:b + 1].expand(n, -1)
                q_data = agent.critic.member(e, s[b:b + 1], batch.actions[b:b + 1])
                q_r, q_c, q_n = (agent.critic.member(e, sb, a[b]) for a in (a_rand, a_cur, a_nxt))
                if cfg.use_calql:
                    q_c, q_n = q_c.clamp(min=batch.mc_returns[b]), q_n.clamp(min=batch.mc_returns[b])
                if cfg.cql_importance_sample:
                    vals = torch.cat([q_r - ACT * math.log(0.5), q_c - lp_cur[b], q_n - lp_nxt[b]])
                    lse = cfg.cql_temp * torch.logsumexp(vals / cfg.cql_temp, 0)
                else:
                    vals = torch.cat([q_r, q_c, q_n, q_data])
                    # official cql.py: temp * (lse(vals / temp) - log N), not temp * lse - log N
                    lse = cfg.cql_temp * (torch.logsumexp(vals / cfg.cql_temp, 0) - math.log(3 * n + 1))
                out[e, b] = lse - q_data[0]
    return out


@pytest.mark.parametrize("use_calql", [False, True])
@pytest.mark.parametrize("importance_sample", [True, False])
def test_cql_gap_equals_python_loop_reference(use_calql, importance_sample):
    cfg = cql_lib.CQLConfig(use_calql=use_calql, cql_importance_sample=importance_sample, cql_n_actions=4,
                            cql_temp=0.7)
    agent = tiny_agent()
    batch = random_batch(6, mc_returns=True)
    q_data = agent.critic(batch.observations, batch.actions)
    torch.manual_seed(3)
    gap = cql_lib.cql_gap(batch, agent.actor, agent.critic, q_data, cfg)
    ref = _loop_gap(agent, batch, cfg, 3)
    torch.testing.assert_close(gap, ref, rtol=1e-5, atol=1e-5)
    members = torch.tensor([2, 0, 2])  # drawn with replacement: a member may repeat
    torch.manual_seed(3)
    sub = cql_lib.cql_gap(batch, agent.actor, agent.critic, q_data, cfg, members)
    torch.testing.assert_close(sub, ref[members], rtol=1e-5, atol=1e-5)


def test_cql_gap_on_a_member_subset_has_the_gradient_of_the_full_gap_indexed():
    """Only the drawn members are evaluated on the sampled actions; the critic's gradient must be
    the one of computing every member and keeping the drawn rows (what the reference computes)."""
    cfg = cql_lib.CQLConfig(use_calql=True, cql_n_actions=4)
    agent = tiny_agent()
    batch = random_batch(6, mc_returns=True)
    members = torch.tensor([1, 1, 3])

    def grads(subset: bool) -> list[torch.Tensor]:
        agent.critic.zero_grad()
        q_data = agent.critic(batch.observations, batch.actions)
        torch.manual_seed(7)
        if subset:
            gap = cql_lib.cql_gap(batch, agent.actor, agent.critic, q_data, cfg, members)
        else:
            gap = cql_lib.cql_gap(batch, agent.actor, agent.critic, q_data, cfg).index_select(0, members)
        gap.mean().backward()
        return [p.grad.clone() for p in agent.critic.parameters()]

    for a, b in zip(grads(True), grads(False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads(True))


def _eval_gap(agent, batch, cfg) -> float:
    torch.manual_seed(1234)  # same sampled actions for every evaluation
    with torch.no_grad():
        q = agent.critic(batch.observations, batch.actions)
        return cql_lib.cql_gap(batch, agent.actor, agent.critic, q, cfg).mean().item()


def test_cql_penalty_pushes_sampled_action_q_down_relative_to_data_actions():
    sac = tiny_sac(critic_lr=1e-2)
    batch = random_batch(32, seed=4)
    after = {}
    for alpha in (0.0, 10.0):
        cfg = cql_lib.CQLConfig(use_calql=False, cql_alpha=alpha)
        agent = tiny_agent(sac=sac)
        before = _eval_gap(agent, batch, cfg)
        torch.manual_seed(0)
        for _ in range(60):
            update.cql_step(agent, batch, sac, cfg)
        after[alpha] = _eval_gap(agent, batch, cfg)
    assert after[10.0] < before - 0.5  # TD alone leaves the gap where it was or widens it
    assert after[10.0] < after[0.0] - 0.5


def test_calql_replaces_policy_action_q_by_the_mc_lower_bound():
    agent = tiny_agent()
    batch = random_batch(8, mc_returns=True)
    batch = batch._replace(mc_returns=torch.full((8,), 50.0))  # far above every Q (|Q| ~ 1 at init)
    cfg = cql_lib.CQLConfig(use_calql=True, cql_n_actions=5)
    q_data = agent.critic(batch.observations, batch.actions)
    torch.manual_seed(8)
    gap = cql_lib.cql_gap(batch, agent.actor, agent.critic, q_data, cfg)
    # by hand: the same draws, Q of policy actions clamped to 50, random actions left alone
    torch.manual_seed(8)
    with torch.no_grad():
        a_rand = torch.empty(8, 5, ACT).uniform_(-1.0, 1.0)
        _, lp_cur = agent.actor(batch.observations, 5)
        _, lp_nxt = agent.actor(batch.next_observations, 5)
    s_rep = batch.observations.repeat_interleave(5, 0)
    q_rand = agent.critic(s_rep, a_rand.reshape(-1, ACT)).view(E, 8, 5)
    assert q_rand.max() < 50.0
    lse = torch.logsumexp(torch.cat([q_rand - ACT * math.log(0.5), 50.0 - lp_cur.expand(E, -1, -1),
                                     50.0 - lp_nxt.expand(E, -1, -1)], -1), -1)
    torch.testing.assert_close(gap, lse - q_data, rtol=1e-5, atol=1e-5)
    # plain CQL on the same draws is far below: the bound is what lifted the logsumexp
    torch.manual_seed(8)
    plain = cql_lib.cql_gap(batch, agent.actor, agent.critic, q_data, dataclasses.replace(cfg, use_calql=False))
    assert (gap - plain).min() > 40.0
    # the bound is a constant: the penalty's gradient only raises Q(s, a_data)
    grads = torch.autograd.grad(gap.mean(), list(agent.critic.parameters()), retain_graph=True)
    want = torch.autograd.grad(-q_data.mean(), list(agent.critic.parameters()))
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_calql_bound_below_q_changes_nothing():
    agent = tiny_agent()
    batch = random_batch(8, mc_returns=True)._replace(mc_returns=torch.full((8,), -1e4))
    cfg = cql_lib.CQLConfig(use_calql=True)
    q_data = agent.critic(batch.observations, batch.actions)
    torch.manual_seed(8)
    gap = cql_lib.cql_gap(batch, agent.actor, agent.critic, q_data, cfg)
    torch.manual_seed(8)
    plain = cql_lib.cql_gap(batch, agent.actor, agent.critic, q_data, dataclasses.replace(cfg, use_calql=False))
    torch.testing.assert_close(gap, plain)


@pytest.mark.parametrize("target_gap, direction", [(-1e3, "up"), (1e3, "down")])
def test_lagrange_alpha_rises_when_the_gap_is_above_target(target_gap, direction):
    sac = tiny_sac()
    cfg = cql_lib.CQLConfig(use_calql=False, cql_autotune_alpha=True, cql_target_action_gap=target_gap)
    agent = tiny_agent(sac=sac, lagrange_init=1.0, lagrange_lr=1e-2)
    batch = random_batch(16)
    alphas = [agent.lagrange().item()]
    for _ in range(3):
        info = update.cql_step(agent, batch, sac, cfg)
        assert info["cql_alpha"].item() == pytest.approx(alphas[-1])  # the penalty used alpha before its step
        alphas.append(agent.lagrange().item())
    steps = np.diff(alphas)
    assert (steps > 0).all() if direction == "up" else (steps < 0).all()


def test_lagrange_needs_an_agent_made_with_a_multiplier():
    cfg = cql_lib.CQLConfig(use_calql=False, cql_autotune_alpha=True)
    with pytest.raises(ValueError, match="lagrange"):
        update.cql_step(tiny_agent(), random_batch(8), tiny_sac(), cfg)


def test_offline_step_calql_requires_mc_returns_and_cql_does_not():
    sac, cql, iql = tiny_sac(), cql_lib.CQLConfig(use_calql=True), iql_lib.IQLConfig()
    agent = tiny_agent(sac=sac)
    with pytest.raises(ValueError, match="mc_returns"):
        update.offline_step(agent, random_batch(8), "calql", sac, cql, iql)
    info = update.offline_step(agent, random_batch(8), "cql", sac, cql, iql)  # the flag is forced off
    assert math.isfinite(info["cql_gap"].item())
    assert set(adam_steps(agent.critic_opt)) == {1}
    with pytest.raises(ValueError, match="calql"):
        update.offline_step(agent, random_batch(8), "bcq", sac, cql, iql)


# ---------------------------------------------------------------- IQL


def test_expectile_loss_weights_positive_diffs_by_tau_and_negative_by_one_minus_tau():
    d = torch.tensor([2.0, -2.0, 1.0, -1.0])
    assert iql_lib.expectile_loss(d[:1], 0.9).item() == pytest.approx(0.9 * 4)
    assert iql_lib.expectile_loss(d[1:2], 0.9).item() == pytest.approx(0.1 * 4)
    assert iql_lib.expectile_loss(d, 0.7).item() == pytest.approx((0.7 * 4 + 0.3 * 4 + 0.7 + 0.3) / 4)


def _np_expectile(y: np.ndarray, tau: float) -> float:
    """Root of sum_i |tau - 1(y_i < v)| (y_i - v) = 0, by bisection."""
    lo, hi = float(y.min()), float(y.max())
    for _ in range(200):
        v = 0.5 * (lo + hi)
        w = np.where(y > v, tau, 1 - tau)
        lo, hi = (v, hi) if (w * (y - v)).sum() > 0 else (lo, v)
    return 0.5 * (lo + hi)


def test_value_fit_converges_to_the_numpy_expectile():
    torch.manual_seed(0)
    agent = tiny_agent(with_value=True)
    cfg = iql_lib.IQLConfig(expectile=0.9)
    batch = random_batch(256, seed=3)
    batch = batch._replace(observations=torch.zeros_like(batch.observations))  # V(s) is one number
    with torch.no_grad():
        agent.target_critic.head_weight.mul_(5.0)  # spread the Q sample so expectiles are far apart
        q = agent.target_critic(batch.observations, batch.actions).min(0).values.numpy()
    want, mean = _np_expectile(q, 0.9), float(q.mean())
    assert want - mean > 0.3
    opt = torch.optim.Adam(agent.value.parameters(), lr=3e-2)
    for _ in range(400):
        opt.zero_grad()
        iql_lib.value_loss(batch, agent.value, agent.target_critic, cfg).backward()
        opt.step()
    v = agent.value(batch.observations[:1]).item()
    assert abs(v - want) < 0.1 * (want - mean)


def test_iql_step_updates_value_critic_actor_and_never_the_temperature():
    sac = tiny_sac()
    agent = tiny_agent(sac=sac, with_value=True)
    before = {n: params(getattr(agent, n)) for n in ("value", "critic", "target_critic", "actor", "temperature")}
    update.iql_step(agent, random_batch(16), sac, iql_lib.IQLConfig())
    for name, p in before.items():
        assert same(params(getattr(agent, name)), p) == (name == "temperature"), name
    assert adam_steps(agent.temperature_opt) == [0]
    with pytest.raises(ValueError, match="with_value"):
        update.iql_step(tiny_agent(), random_batch(16), sac, iql_lib.IQLConfig())


def test_iql_critic_target_bootstraps_from_v_of_next_state():
    agent = tiny_agent(with_value=True)
    batch = random_batch(10)
    y = iql_lib.critic_target(batch, agent.value, 0.9)
    torch.testing.assert_close(y, batch.rewards + 0.9 * batch.masks * agent.value(batch.next_observations))


# ---------------------------------------------------------------- offline step order (official apply_loss_fns)


def _first_adam_grads(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The gradient of a fresh Adam's first step: exp_avg = (1 - beta1) * grad."""
    return [opt.state[p]["exp_avg"] / 0.1 for g in opt.param_groups for p in g["params"]]


@pytest.fixture
def pinned(monkeypatch):
    """Zero policy noise, members 0..k-1, constant random actions: the step's losses can be
    recomputed by hand."""
    from wsrl_dist.algo import sac as sac_lib

    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.zeros_like(t))
    monkeypatch.setattr(torch.Tensor, "uniform_", lambda self, a=0.0, b=1.0, **kw: self.fill_(0.25 * a + 0.75 * b))
    monkeypatch.setattr(sac_lib, "sample_members", lambda e, k, device=None: torch.arange(k, device=device))


@pytest.mark.parametrize("autotune", [False, True])
def test_cql_step_computes_every_loss_at_the_pre_update_parameters(pinned, autotune):
    """Each network's gradient is its loss at the parameters before the step: the actor's loss reads
    the critic before its update (the old order stepped the critic first), the critic's gradient has
    no part of the actor's loss in it, and Polyak moves the target towards the updated critic."""
    import copy

    from wsrl_dist.algo import sac as sac_lib

    sac = tiny_sac()
    cfg = cql_lib.CQLConfig(use_calql=False, cql_autotune_alpha=autotune, cql_n_actions=3)
    agent = tiny_agent(sac=sac, lagrange_init=1.0 if autotune else None)
    ref = copy.deepcopy(agent)
    batch = random_batch(8)
    update.cql_step(agent, batch, sac, cfg)
    # by hand, on the untouched copy
    loss_pi, _ = sac_lib.actor_loss(batch, ref.actor, ref.critic, ref.temperature)
    want_actor = torch.autograd.grad(loss_pi, list(ref.actor.parameters()))
    y = sac_lib.td_target(batch, ref.actor, ref.target_critic, ref.temperature, sac, max_target_backup=True,
                          n_backup=3)
    q = ref.critic(batch.observations, batch.actions)
    gap = cql_lib.cql_gap(batch, ref.actor, ref.critic, q, cfg, torch.arange(sac.critic_subsample_size))
    alpha = ref.lagrange().detach() if autotune else cfg.cql_alpha
    penalty = alpha * (gap.mean() - (cfg.cql_target_action_gap if autotune else 0.0))
    want_critic = torch.autograd.grad(sac_lib.critic_td_loss(q, y) + penalty, list(ref.critic.parameters()))
    for got, want in zip(_first_adam_grads(agent.actor_opt), want_actor, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    for got, want in zip(_first_adam_grads(agent.critic_opt), want_critic, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    if autotune:  # d/d raw of -softplus(raw) * (gap - target), at the gap of the pre-update critic
        want_l = -torch.sigmoid(ref.lagrange.raw) * (gap.mean() - cfg.cql_target_action_gap)
        torch.testing.assert_close(_first_adam_grads(agent.lagrange_opt)[0], want_l.detach(), rtol=1e-4, atol=1e-7)
    for t, c, t0 in zip(agent.target_critic.parameters(), agent.critic.parameters(),
                        ref.target_critic.parameters(), strict=True):
        torch.testing.assert_close(t, torch.lerp(t0, c, sac.soft_target_update_rate))


def test_cql_step_estimates_the_entropy_from_cql_n_actions_samples_per_next_state(monkeypatch):
    """The official CQL agent's temperature loss samples its next actions like its TD target:
    cql_n_actions per s' with cql_max_target_backup, one without."""
    from wsrl_dist.algo import sac as sac_lib

    seen = []
    real = sac_lib.next_entropy
    monkeypatch.setattr(sac_lib, "next_entropy", lambda b, a, n=None: (seen.append(n), real(b, a, n))[1])
    for mtb in (True, False):
        cfg = cql_lib.CQLConfig(use_calql=False, cql_n_actions=7, cql_max_target_backup=mtb)
        update.cql_step(tiny_agent(), random_batch(8), tiny_sac(), cfg)
    assert seen == [7, None]


def test_iql_step_computes_every_loss_at_the_pre_update_parameters():
    """The AWR actor's weights use V and the target critic before the step (the old order stepped V
    and Polyak first), and the critic's target uses V before its update."""
    import copy

    sac, cfg = tiny_sac(), iql_lib.IQLConfig()
    agent = tiny_agent(sac=sac, with_value=True)
    ref = copy.deepcopy(agent)
    batch = random_batch(16)
    update.iql_step(agent, batch, sac, cfg)
    want_actor = torch.autograd.grad(iql_lib.awr_actor_loss(batch, ref.actor, ref.value, ref.target_critic, cfg),
                                     list(ref.actor.parameters()))
    y = iql_lib.critic_target(batch, ref.value, sac.discount)
    q = ref.critic(batch.observations, batch.actions)
    want_critic = torch.autograd.grad(((q - y) ** 2).mean(), list(ref.critic.parameters()))
    for got, want in zip(_first_adam_grads(agent.actor_opt) + _first_adam_grads(agent.critic_opt),
                         list(want_actor) + list(want_critic), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
