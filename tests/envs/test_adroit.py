"""Adroit binary: -1/0 reward from info["success"], termination at success, pen horizon 100, no clipping."""

from __future__ import annotations

import numpy as np
import pytest

from wsrl_dist.envs import make_env


@pytest.mark.parametrize("name,obs_dim,act_dim", [
    ("pen-binary-v0", 45, 24), ("door-binary-v0", 39, 28), ("relocate-binary-v0", 39, 30)])
def test_obs_and_action_dims_and_binary_rewards(name, obs_dim, act_dim):
    env = make_env(name, seed=0)
    obs, info = env.reset()
    assert obs.shape == (obs_dim,) and obs.dtype == np.float32 and info["success"] is False
    assert env.action_space.shape == (act_dim,)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    for _ in range(3):
        _, r, terminated, _, info = env.step(env.action_space.sample())
        assert r in (-1.0, 0.0) and (r == 0.0) == info["success"]


def test_pen_truncates_at_100_steps():
    env = make_env("pen-binary-v0", seed=0)
    env.reset()
    steps, truncated, terminated = 0, False, False
    while not (truncated or terminated):
        _, r, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
    assert (steps, truncated, terminated) == (100, True, False)


def test_door_open_gives_reward_zero_success_and_termination():
    env = make_env("door-binary-v0", seed=0)
    env.reset()
    base = env.unwrapped
    qpos = base.data.qpos.copy()
    qpos[base.door_hinge_addrs] = 1.5  # success: hinge angle >= 1.35
    base.set_state(qpos, np.zeros_like(base.data.qvel))
    _, r, terminated, truncated, info = env.step(np.zeros(28, dtype=np.float32))
    assert (r, terminated, truncated, info["success"]) == (0.0, True, False, True)


def test_adroit_actions_are_not_clipped_to_0_99999():
    env = make_env("door-binary-v0", seed=0)
    env.reset()
    env.step(np.ones(28, dtype=np.float32))
    base = env.unwrapped
    np.testing.assert_allclose(base.data.ctrl, base.act_mean + base.act_rng)  # a = 1 reached the env
