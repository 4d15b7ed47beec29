"""SAC losses of the online phase (wsrl_dist.algo.sac), checked against python-loop references."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.algo._helpers import ACT, random_batch, tiny_agent, tiny_sac
from wsrl_dist.algo import sac as sac_lib
from wsrl_dist.algo.nets import Scalar

E = 4  # ensemble members in tiny_sac


# ---------------------------------------------------------------- target subset


def test_subsampled_min_uses_the_indices_torch_randint_draws_including_repeats():
    q = torch.randn(10, 6)
    repeats = 0
    for seed in range(200):
        torch.manual_seed(seed)
        out = sac_lib.subsampled_min(q, 2)
        torch.manual_seed(seed)
        i, j = torch.randint(10, (2,)).tolist()
        torch.testing.assert_close(out, torch.minimum(q[i], q[j]))
        repeats += i == j  # then the target is one member's Q alone
    assert repeats > 5


def test_subsampled_min_draws_members_with_replacement():
    # member e has Q = e everywhere, so the result is the smallest drawn index. Drawing 2 of 10 without
    # replacement could never return 9 (the other draw would be smaller); with replacement P = 1/100.
    q = torch.arange(10.0)[:, None].expand(10, 3)
    torch.manual_seed(0)
    mins = torch.stack([sac_lib.subsampled_min(q, 2)[0] for _ in range(3000)])
    assert (mins == 9).sum() > 5
    # k = E: without replacement the result would always be the global min 0
    torch.manual_seed(0)
    full = torch.stack([sac_lib.subsampled_min(q, 10)[0] for _ in range(300)])
    assert (full > 0).any()


# ---------------------------------------------------------------- TD target


def _loop_target(agent, batch, cfg, seed, alpha=None):
    """Reference y per row: a' ~ pi(s') (n of them with max backup), Qbar = min over the SAME sampled
    members computed one member and one row at a time, max over next actions, r + gamma*mask*Qbar."""
    s2 = batch.next_observations
    torch.manual_seed(seed)  # replay td_target's random draws: next actions first, then member indices
    with torch.no_grad():
        if cfg.max_target_backup:
            a2, logp2 = agent.actor(s2, cfg.n_backup_actions)
        else:
            a2, logp2 = agent.actor(s2)
            a2, logp2 = a2[:, None], logp2[:, None]
        idx = torch.randint(E, (cfg.critic_subsample_size,)).tolist()
        ys = []
        for b in range(s2.shape[0]):
            best, best_logp = None, None
            for j in range(a2.shape[1]):
                q = min(agent.target_critic.member(e, s2[b:b + 1], a2[b, j:j + 1]).item() for e in idx)
                if best is None or q > best:
                    best, best_logp = q, logp2[b, j].item()
            if alpha is not None:
                best = best - alpha * best_logp
            ys.append(batch.rewards[b].item() + cfg.discount * batch.masks[b].item() * best)
    return torch.tensor(ys)


@pytest.mark.parametrize("max_target_backup", [False, True])
@pytest.mark.parametrize("backup_entropy", [False, True])
def test_td_target_equals_python_loop_reference(max_target_backup, backup_entropy):
    cfg = tiny_sac(max_target_backup=max_target_backup, backup_entropy=backup_entropy, n_backup_actions=5)
    agent = tiny_agent(sac=cfg)
    agent.temperature = Scalar(0.7)
    batch = random_batch(12)
    for seed in (3, 4):
        torch.manual_seed(seed)
        y = sac_lib.td_target(batch, agent.actor, agent.target_critic, agent.temperature, cfg)
        ref = _loop_target(agent, batch, cfg, seed, alpha=0.7 if backup_entropy else None)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert not y.requires_grad


def test_backup_entropy_adds_minus_alpha_log_prob_to_the_bootstrap():
    cfg = tiny_sac()
    agent = tiny_agent(sac=cfg)
    agent.temperature = Scalar(0.5)
    batch = random_batch(10)
    torch.manual_seed(5)
    y_plain = sac_lib.td_target(batch, agent.actor, agent.target_critic, agent.temperature, cfg)
    torch.manual_seed(5)
    y_ent = sac_lib.td_target(batch, agent.actor, agent.target_critic, agent.temperature,
                              dataclasses.replace(cfg, backup_entropy=True))
    torch.manual_seed(5)
    _, logp2 = agent.actor(batch.next_observations)
    torch.testing.assert_close(y_ent - y_plain, -cfg.discount * batch.masks * 0.5 * logp2.detach())
    assert (y_ent != y_plain).any()


def test_max_target_backup_takes_the_max_over_sampled_next_actions():
    cfg = tiny_sac(max_target_backup=True, n_backup_actions=8)
    agent = tiny_agent(sac=cfg)
    batch = random_batch(10)._replace(masks=torch.ones(10))
    ys = []
    for seed in range(5):
        torch.manual_seed(seed)
        y_max = sac_lib.td_target(batch, agent.actor, agent.target_critic, agent.temperature, cfg)
        # with the same draws, every single-action target is at most the max-backup target
        torch.manual_seed(seed)
        with torch.no_grad():
            a2, _ = agent.actor(batch.next_observations, 8)
            idx = torch.randint(E, (2,))
            per_action = torch.stack([agent.target_critic(batch.next_observations, a2[:, j])[idx].min(0).values
                                      for j in range(8)])  # [n, B]
        torch.testing.assert_close(y_max, batch.rewards + cfg.discount * per_action.max(0).values)
        ys.append((y_max, batch.rewards + cfg.discount * per_action.mean(0)))
    assert all((y_max >= y_mean - 1e-6).all() for y_max, y_mean in ys)
    assert any((y_max > y_mean + 1e-4).any() for y_max, y_mean in ys)


def test_masks_zero_give_target_equal_to_reward():
    cfg = tiny_sac(backup_entropy=True, max_target_backup=True)
    agent = tiny_agent(sac=cfg)
    batch = random_batch(9)._replace(masks=torch.zeros(9))
    y = sac_lib.td_target(batch, agent.actor, agent.target_critic, agent.temperature, cfg)
    torch.testing.assert_close(y, batch.rewards)


def test_critic_loss_is_plain_mse_over_members_and_batch():
    q = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    y = torch.tensor([0.0, 2.0])
    assert sac_lib.critic_td_loss(q, y).item() == pytest.approx((1 + 0 + 9 + 4) / 4)


# ---------------------------------------------------------------- actor and temperature


def test_actor_loss_uses_the_min_over_all_members():
    agent = tiny_agent()
    agent.temperature = Scalar(0.3)
    batch = random_batch(16)
    torch.manual_seed(11)
    loss, logp = sac_lib.actor_loss(batch, agent.actor, agent.critic, agent.temperature)
    torch.manual_seed(11)
    a, ref_logp = agent.actor(batch.observations)
    q_all = torch.stack([agent.critic.member(e, batch.observations, a) for e in range(E)])
    torch.testing.assert_close(loss, (0.3 * ref_logp - q_all.min(0).values).mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp, ref_logp)
    # the last member alone made a constant 100 below the shared head's bias (its last hidden layer
    # outputs a fixed vector v on the head's negative weights): the loss then uses that constant for
    # every row, which a subset or a mean over members would not do
    c = agent.critic
    with torch.no_grad():
        neg = (c.head_weight[:, 0] < 0).float()
        v = neg * 100.0 / (-c.head_weight[:, 0] * neg).sum()  # head_weight . v = -100
        c.weights[-1][E - 1].zero_()
        if c.layer_norm:  # LayerNorm of the constant row 0 is 0: its bias is the output
            c.biases[-1][E - 1].zero_()
            c.ln_biases[-1][E - 1, 0] = v
        else:
            c.biases[-1][E - 1, 0] = v
    q_low = c.head_bias - 100.0
    assert (q_low < q_all[:E - 1].min()).all()
    torch.manual_seed(11)
    shifted, _ = sac_lib.actor_loss(batch, agent.actor, agent.critic, agent.temperature)
    torch.testing.assert_close(shifted, (0.3 * ref_logp - q_low).mean(), rtol=1e-5, atol=1e-4)


def test_actor_loss_gives_no_gradient_to_the_temperature():
    agent = tiny_agent()
    loss, _ = sac_lib.actor_loss(random_batch(8), agent.actor, agent.critic, agent.temperature)
    loss.backward()
    assert agent.temperature.raw.grad.item() == 0.0
    assert any(p.grad.abs().sum() > 0 for p in agent.actor.parameters())


def test_temperature_loss_estimates_entropy_at_next_observations():
    agent = tiny_agent()
    batch = random_batch(32)
    batch = batch._replace(next_observations=batch.next_observations * 5.0 + 3.0)  # far from s
    torch.manual_seed(2)
    loss = sac_lib.temperature_loss(batch, agent.actor, agent.temperature, target_entropy=-ACT)
    torch.manual_seed(2)
    _, logp_next = agent.actor(batch.next_observations)
    torch.manual_seed(2)
    _, logp_here = agent.actor(batch.observations)
    alpha = agent.temperature().item()
    assert loss.item() == pytest.approx(alpha * (-logp_next.mean().item() + ACT), rel=1e-5)
    assert loss.item() != pytest.approx(alpha * (-logp_here.mean().item() + ACT), rel=1e-3)


def test_next_entropy_averages_n_samples_per_state_when_asked():
    """antmaze: the reference estimates the entropy from its 10 backup actions per next state."""
    agent, batch = tiny_agent(), random_batch(16)
    torch.manual_seed(5)
    h10 = sac_lib.next_entropy(batch, agent.actor, 10)
    torch.manual_seed(5)
    _, logp = agent.actor(batch.next_observations, 10)
    assert logp.shape == (16, 10)
    torch.testing.assert_close(h10, -logp.mean())
    torch.manual_seed(5)
    assert sac_lib.next_entropy(batch, agent.actor).item() != pytest.approx(h10.item(), rel=1e-3)


def test_bundle_estimates_entropy_with_the_backup_actions_only_under_max_target_backup(monkeypatch):
    from wsrl_dist.algo import update

    seen = []
    real = sac_lib.next_entropy
    monkeypatch.setattr(sac_lib, "next_entropy", lambda b, a, n=None: (seen.append(n), real(b, a, n))[1])
    for mtb in (False, True):
        sac = dataclasses.replace(tiny_sac(), max_target_backup=mtb, n_backup_actions=7)
        update.sac_bundle(tiny_agent(), random_batch(sac.utd * sac.batch_size), sac)
    assert seen == [None, 7]


@pytest.mark.parametrize("target_entropy, alpha_moves", [(-100.0, "down"), (100.0, "up")])
def test_temperature_step_lowers_alpha_when_entropy_is_above_target(target_entropy, alpha_moves):
    agent = tiny_agent()
    batch = random_batch(32)
    before = agent.temperature().item()
    loss = sac_lib.temperature_loss(batch, agent.actor, agent.temperature, target_entropy)
    loss.backward()
    assert all(p.grad.abs().sum() == 0 for p in agent.actor.parameters())  # alpha's loss only
    agent.temperature_opt.step()
    after = agent.temperature().item()
    assert (after < before) if alpha_moves == "down" else (after > before)
