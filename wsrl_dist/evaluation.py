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
