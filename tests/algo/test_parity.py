"""Network details that must match the official WSRL code (zhouzypaul/wsrl, issue 14 section 1):
one Q head shared by the ensemble, LayerNorm epsilon 1e-6, the critic's final-layer init scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.algo._helpers import ACT, OBS, tiny_agent, tiny_net, tiny_sac
from wsrl_dist.algo import fused as fused_lib
from wsrl_dist.algo.agent import make_agent
from wsrl_dist.algo.nets import EnsembleCritic, NetConfig
from wsrl_dist.algo.policy import Policy


def _inputs(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, OBS, generator=g), torch.rand(n, ACT, generator=g) * 2 - 1


# ---------------------------------------------------------------- 1. one shared Q head


def test_the_ensemble_has_one_q_head_and_per_member_trunks():
    """Official: only the MLP trunk is vmapped; Dense(1) sits outside, one kernel [H, 1] and bias."""
    critic = EnsembleCritic(OBS, ACT, [16, 12], ensemble=5, layer_norm=True)
    shapes = {k: tuple(v.shape) for k, v in critic.state_dict().items()}
    assert shapes == {
        "weights.0": (5, OBS + ACT, 16), "weights.1": (5, 16, 12),
        "biases.0": (5, 1, 16), "biases.1": (5, 1, 12),
        "ln_scales.0": (5, 1, 16), "ln_scales.1": (5, 1, 12),
        "ln_biases.0": (5, 1, 16), "ln_biases.1": (5, 1, 12),
        "head_weight": (12, 1), "head_bias": (1,),
    }
    # the Deviation switch: a head per member, as the last stacked layer
    per = EnsembleCritic(OBS, ACT, [16, 12], ensemble=5, layer_norm=True, shared_head=False)
    per_shapes = {k: tuple(v.shape) for k, v in per.state_dict().items()}
    assert "head_weight" not in per_shapes
    assert per_shapes["weights.2"] == (5, 12, 1) and per_shapes["biases.2"] == (5, 1, 1)
    # make_agent follows net.shared_q_head, for the critic and its target
    agent = tiny_agent()
    assert agent.critic.head_weight.shape == (16, 1) and agent.target_critic.head_weight.shape == (16, 1)
    assert not hasattr(tiny_agent(net=tiny_net(shared_q_head=False)).critic, "head_weight")


@pytest.mark.parametrize("members", [None, [3, 0, 3]])
def test_the_shared_head_gradient_is_the_sum_over_members(members):
    """Each member's Q is trunk_e(s, a) . w + b with the SAME w, b; the head's gradient of a loss
    over members is the sum of what each member alone would give it (a repeated member twice)."""
    torch.manual_seed(0)
    critic = EnsembleCritic(OBS, ACT, [16, 16], ensemble=4, layer_norm=True)
    obs, act = _inputs()
    idx = None if members is None else torch.tensor(members)
    k = 4 if idx is None else len(members)
    coef = torch.randn(k, obs.shape[0], generator=torch.Generator().manual_seed(1))
    (critic(obs, act, idx) * coef).sum().backward()
    got_w, got_b = critic.head_weight.grad.clone(), critic.head_bias.grad.clone()
    want_w, want_b = torch.zeros_like(got_w), torch.zeros_like(got_b)
    for j, e in enumerate(range(4) if idx is None else members):
        critic.zero_grad()
        (critic.member(e, obs, act) * coef[j]).sum().backward()
        want_w += critic.head_weight.grad
        want_b += critic.head_bias.grad
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_b, want_b, rtol=1e-5, atol=1e-6)
    assert got_b.item() == pytest.approx(coef.sum().item(), rel=1e-5)  # dQ/db = 1 for every member


def test_fused_critic_q_evaluates_the_shared_head_for_gathered_target_trunks():
    """fused.critic_q on the flat layout == EnsembleCritic, for all members and for a gathered
    subset (the target's k sampled trunks with the one shared target head), for S = 2 seeds."""
    agents = [tiny_agent(seed=s) for s in (0, 1)]
    spec = fused_lib.make_spec(agents[0], tiny_sac())
    state = fused_lib.FusedState(agents, spec)
    obs, act = _inputs()
    obs2, act2 = obs.expand(2, -1, -1), act.expand(2, -1, -1)
    q = fused_lib.critic_q(spec.critic_layout.views(state.t["critic"]), spec.critic_layers, True, obs2, act2)
    members = torch.tensor([[3, 1], [0, 0]])
    qt = fused_lib.critic_q(spec.critic_layout.gather(state.t["target"], members), spec.critic_layers, True,
                            obs2, act2)
    for i, ag in enumerate(agents):
        with torch.no_grad():
            torch.testing.assert_close(q[i], ag.critic(obs, act), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(qt[i], ag.target_critic(obs, act, members[i]), rtol=1e-5, atol=1e-5)


def test_an_old_per_member_head_checkpoint_is_refused_by_name():
    old = tiny_agent(net=tiny_net(shared_q_head=False)).state_dict()
    agent = tiny_agent()
    with pytest.raises(ValueError, match="per member.*before the shared head"):
        agent.load_state_dict(old)
    with pytest.raises(ValueError, match="net.shared_q_head=False"):  # and the other way round
        tiny_agent(net=tiny_net(shared_q_head=False)).load_state_dict(agent.state_dict())


# ---------------------------------------------------------------- 2. LayerNorm epsilon 1e-6


def _ln(h: torch.Tensor, eps: float) -> torch.Tensor:
    return (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + eps)


def test_every_layer_norm_uses_flax_epsilon_eager_fused_and_numpy():
    """Pre-LayerNorm activations with variance ~1e-6 make 1e-6 and torch's 1e-5 differ by ~30%:
    the actor (torch, fused plan, numpy rollout policy) and the critic (eager, fused) use 1e-6."""
    torch.manual_seed(0)
    net = tiny_net(critic_hidden=[16], critic_kernel_scale_final=None)  # sqrt(2): var(h) ~ var(x)
    agent = make_agent(OBS, ACT, net, tiny_sac())
    lns = [m for m in agent.actor.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(lns) == 2 and all(m.eps == 1e-6 for m in lns)
    plan = fused_lib.ActorPlan.of(agent.actor)
    assert [s[3] for s in plan.trunk if s[0] == "ln"] == [1e-6, 1e-6]
    obs, act = _inputs()
    obs = obs * 1e-3  # activations ~1e-3 before the first LayerNorm of each network
    with torch.no_grad():
        agent.actor.trunk.net[0].bias.zero_()
        agent.critic.biases[0].zero_()

    # critic: one hidden layer, so Q is written out by hand with each epsilon
    c = agent.critic
    x = torch.cat([obs, act * 1e-3], -1)

    def q_with(eps: float) -> torch.Tensor:
        h = _ln(x @ c.weights[0] + c.biases[0], eps) * c.ln_scales[0] + c.ln_biases[0]
        return (F.relu(h) @ c.head_weight + c.head_bias).squeeze(-1)

    with torch.no_grad():
        eager = c(obs, act * 1e-3)
        spec = fused_lib.make_spec(agent, tiny_sac())
        state = fused_lib.FusedState([agent], spec)
        fused = fused_lib.critic_q(spec.critic_layout.views(state.t["critic"]), spec.critic_layers, True,
                                   obs[None], act[None] * 1e-3)[0]
        want, torch_default = q_with(1e-6), q_with(1e-5)
    assert (want - torch_default).abs().max() > 1e-2  # the inputs make the epsilon matter
    torch.testing.assert_close(eager, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused, want, rtol=1e-4, atol=1e-5)

    # actor: torch module (whose LayerNorm modules the fused plan reads) and the numpy policy
    with torch.no_grad():  # the next LayerNorm undoes a common scale: a shift makes the scale count
        agent.actor.trunk.net[1].bias.normal_(generator=torch.Generator().manual_seed(2))
    mean_t, _ = agent.actor.dist_params(obs)
    policy = Policy(OBS, ACT, net)
    policy.load(agent.export_policy(), version=0)
    mean_np, _ = policy.dist_params(obs.numpy())
    np.testing.assert_allclose(mean_np, mean_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    ln0 = agent.actor.trunk.net[1]
    with torch.no_grad():
        ln0.eps = 1e-5
        mean_1e5, _ = agent.actor.dist_params(obs)
    assert (mean_1e5 - mean_t).abs().max() > 1e-2  # and that numpy agreement is not eps-blind


# ---------------------------------------------------------------- 4. init scales


def _singular_values(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.detach().double())


@pytest.mark.parametrize("scale", [1e-2, None])
def test_init_scales_follow_the_official_kernel_scale_final(scale):
    """Official (orthogonal init_fns, MLP kernel_scale_final, locomotion/antmaze/adroit configs):
    every hidden Dense orthogonal(sqrt 2) except the LAST hidden one, orthogonal(kernel_scale_final)
    (actor and critic alike; None: sqrt 2, kitchen); the heads (Q, mean, log-std) orthogonal(sqrt 2)."""
    torch.manual_seed(0)
    net = NetConfig(actor_hidden=[32, 24, 16], critic_hidden=[32, 24, 16], kernel_scale_final=scale,
                    critic_kernel_scale_final=scale)
    agent = make_agent(OBS, ACT, net, tiny_sac(critic_ensemble_size=3))
    last = math.sqrt(2.0) if scale is None else scale
    for critic in (agent.critic, agent.target_critic):
        for i, w in enumerate(critic.weights):
            gain = last if i == len(critic.weights) - 1 else math.sqrt(2.0)
            for e in range(3):  # each member its own orthogonal matrix
                torch.testing.assert_close(_singular_values(w[e]), torch.full((min(w.shape[1:]),), gain,
                                                                             dtype=torch.float64), rtol=1e-5, atol=1e-7)
            assert not torch.equal(w[0], w[1])
        assert float(critic.head_weight.detach().norm()) == pytest.approx(math.sqrt(2.0), rel=1e-5)
        assert not critic.head_bias.any() and not any(b.any() for b in critic.biases)
    linears = [m for m in agent.actor.trunk.net if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(linears):
        gain = last if i == len(linears) - 1 else math.sqrt(2.0)
        torch.testing.assert_close(_singular_values(lin.weight), torch.full((min(lin.weight.shape),), gain,
                                                                            dtype=torch.float64), rtol=1e-5, atol=1e-7)
    for head in (agent.actor.mean, agent.actor.log_std_head):
        torch.testing.assert_close(_singular_values(head.weight), torch.full((ACT,), math.sqrt(2.0),
                                                                             dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_the_critic_init_scale_has_its_own_switch():
    """net.critic_kernel_scale_final sets the critic's last hidden layer apart from the actor's
    (official critic_network_kwargs vs policy_network_kwargs)."""
    torch.manual_seed(0)
    net = NetConfig(actor_hidden=[16, 16], critic_hidden=[16, 16], kernel_scale_final=None,
                    critic_kernel_scale_final=1e-2)
    agent = make_agent(OBS, ACT, net, tiny_sac())
    assert float(_singular_values(agent.critic.weights[-1][0]).max()) == pytest.approx(1e-2, rel=1e-5)
    actor_last = [m for m in agent.actor.trunk.net if isinstance(m, torch.nn.Linear)][-1]
    assert float(_singular_values(actor_last.weight).max()) == pytest.approx(math.sqrt(2.0), rel=1e-5)
    assert NetConfig().critic_kernel_scale_final == 1e-2 and NetConfig().shared_q_head  # reference defaults
