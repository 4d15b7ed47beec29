"""Evaluation: deterministic policy (tanh(mean)) on a fresh env, the reference's score per family."""

from __future__ import annotations

import numpy as np

from wsrl_dist.algo.policy import Policy
from wsrl_dist.envs.make import make_env


def evaluate(policy: Policy, task, episodes: int, seed: int) -> dict[str, float | None]:
    """Run `episodes` episodes with the mode action; raw (unscaled) returns, as the reference does.

    Returns return_mean/std, normalized_score (D4RL, x100; None where undefined), success_rate
    (fraction of episodes with info['success'] at any step; None where the env reports none).
    """
    env = make_env(task, seed=seed, eval_mode=True)  # eval_mode offsets the seed, as the reference does
    returns, successes, last_rewards = [], [], []
    try:
        for _ in range(episodes):
            obs, _ = env.reset()
            total, success, done, r = 0.0, None, False, 0.0
            while not done:
                action = policy.act(obs[None], deterministic=True)[0]
                obs, r, terminated, truncated, info = env.step(action)
                total += float(r)
                if "success" in info:
                    success = bool(success) or bool(info["success"])
                done = terminated or truncated
            returns.append(total)
            last_rewards.append(float(r))
            if success is not None:
                successes.append(success)
    finally:
        env.close()
    mean = float(np.mean(returns))
    score = None
    if task.success_metric == "kitchen_tasks":
        score = 100.0 * float(np.mean(last_rewards)) / 4.0  # reference: last-step reward / 4
    elif task.ref_min_score is not None and task.ref_max_score is not None:
        score = float(task.normalized_score(mean))
    return {
        "return_mean": mean,
        "return_std": float(np.std(returns)),
        "normalized_score": score,
        "success_rate": float(np.mean(successes)) if successes else None,
    }


def q_probe(policy: Policy, critic_state: dict, cfg, task, episodes: int, seed: int) -> dict[str, float | int]:
    """Q of the current critic against the Monte-Carlo return of the same states (the WSRL paper's
    Q-divergence check: does Q run away from the returns its policy actually gets?).

    Why this estimator and not MC returns of the online batch rows: a row's return-to-go is known
    only when its episode ends, so labelling replay rows means holding every episode in the rollout
    workers (delays rows, and the rollout side of the UTD limiter must be turned off for it:
    runtime/datapath/learner.py `rollout_slack`) just to log a diagnostic. Here `episodes` fresh episodes of
    the *stochastic* policy (SAC's Q, with backup_entropy off, is the expected discounted return of
    the sampled policy) are rolled out off the training path, and at every visited (s, a) the mean
    over the critic ensemble of Q(s, a) is set against that episode's discounted return-to-go in the
    critic's reward scale (task.scale_reward, sac.discount). States closer than H steps to a
    time-limit cut are left out, H = log(0.01) / log(discount) (459 at 0.99): their truncated
    return-to-go would miss more than 1% of the discount weight. Episodes that terminate count
    whole (their return-to-go is exact). The training loop is untouched: the learner hands over
    one CPU copy of its critic per probe.
    """
    import torch

    from wsrl_dist.algo.nets import EnsembleCritic
    from wsrl_dist.data.returns import mc_returns_to_go

    discount = float(cfg.sac.discount)
    critic = EnsembleCritic(policy.obs_dim, policy.act_dim, list(cfg.net.critic_hidden),
                            cfg.sac.critic_ensemble_size, cfg.net.layer_norm)
    critic.load_state_dict(critic_state)
    horizon = int(np.ceil(np.log(0.01) / np.log(discount))) if 0 < discount < 1 else 0
    env = make_env(task, seed=seed + 7919, eval_mode=True)  # another stream than evaluate()'s episodes
    q_all, mc_all, returns = [], [], []
    try:
        for _ in range(episodes):
            obs, _ = env.reset()
            observations, actions, rewards, done, terminated, total = [], [], [], False, False, 0.0
            while not done:
                action = policy.act(obs[None], deterministic=False)[0]
                observations.append(np.asarray(obs, np.float32))
                actions.append(action)
                obs, r, terminated, truncated, _ = env.step(action)
                rewards.append(task.scale_reward(float(r)))
                total += float(r)
                done = terminated or truncated
            n = len(rewards)
            ends = np.zeros(n, np.float32)
            ends[-1] = 1.0
            mc = mc_returns_to_go(np.asarray(rewards, np.float32), ends * float(terminated),
                                  ends * float(not terminated), discount)
            keep = n if terminated else max(n - horizon, 0)
            if keep:
                with torch.no_grad():
                    q = critic(torch.as_tensor(np.stack(observations[:keep])),
                               torch.as_tensor(np.stack(actions[:keep]))).mean(0).numpy()
                q_all.append(q)
                mc_all.append(mc[:keep])
            returns.append(total)
    finally:
        env.close()
    q = np.concatenate(q_all) if q_all else np.zeros(0)
    mc = np.concatenate(mc_all) if mc_all else np.zeros(0)
    return {
        "q_probe_q_mean": float(q.mean()) if q.size else None,
        "q_probe_mc_mean": float(mc.mean()) if mc.size else None,
        "q_probe_gap_mean": float((q - mc).mean()) if q.size else None,  # > 0: Q over-estimates
        "q_probe_states": int(q.size),
        "q_probe_return_mean": float(np.mean(returns)),
    }
