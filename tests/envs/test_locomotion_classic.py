"""Locomotion and classic envs: obs/action conventions, action rescaling, seeding, truncation."""

from __future__ import annotations

import numpy as np
import pytest

from wsrl_dist.envs import get_task, make_env, obs_act_dims


@pytest.mark.parametrize("name,obs_dim,act_dim", [
    ("hopper-medium-v2", 11, 3), ("halfcheetah-medium-replay-v2", 17, 6),
    ("walker2d-expert-v2", 17, 6), ("ant-medium-v2", 105, 8), ("inverted-pendulum-v5", 4, 1),
])
def test_locomotion_obs_is_flat_float32_and_actions_are_unit_box(name, obs_dim, act_dim):
    env = make_env(name, seed=0)
    obs, info = env.reset()
    assert obs.shape == (obs_dim,) and obs.dtype == np.float32
    assert env.observation_space.shape == (obs_dim,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (act_dim,)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    for _ in range(3):
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.dtype == np.float32 and np.isfinite(r)
        assert "success" not in info
    assert obs_act_dims(name) == (obs_dim, act_dim)
    env.close()


def test_actions_are_clipped_then_rescaled_to_env_bounds():
    env = make_env("inverted-pendulum-v5", seed=0)  # env bounds [-3, 3]
    env.reset()
    env.step(np.array([1.0], dtype=np.float32))
    assert env.unwrapped.data.ctrl[0] == pytest.approx(3.0 * 0.99999)
    env.step(np.array([-0.5], dtype=np.float32))
    assert env.unwrapped.data.ctrl[0] == pytest.approx(-1.5)
    env.step(np.array([7.0], dtype=np.float32))  # out of range: clipped first
    assert env.unwrapped.data.ctrl[0] == pytest.approx(3.0 * 0.99999)


def test_locomotion_env_receives_clipped_action_unchanged_when_bounds_are_unit():
    env = make_env("hopper-medium-v2", seed=0)
    env.reset()
    env.step(np.array([1.0, -1.0, 0.25], dtype=np.float32))
    np.testing.assert_allclose(env.unwrapped.data.ctrl, [0.99999, -0.99999, 0.25], rtol=1e-6)


def test_same_seed_same_episode_and_eval_mode_shifts_seed():
    a, _ = make_env("hopper-medium-v2", seed=3).reset()
    b, _ = make_env("hopper-medium-v2", seed=3).reset()
    c, _ = make_env("hopper-medium-v2", seed=3, eval_mode=True).reset()
    d, _ = make_env("hopper-medium-v2", seed=1003).reset()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(c, d)


def test_pendulum_truncates_exactly_at_max_episode_steps():
    spec = get_task("pendulum-v1")
    env = make_env(spec, seed=0)
    env.reset()
    for t in range(1, spec.max_episode_steps + 1):
        _, r, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (t == spec.max_episode_steps)
        assert r <= 0.0  # raw Pendulum reward, unscaled


def test_env_spec_recreates_the_whole_wrapper_stack():
    env = make_env("pendulum-v1", seed=2)
    again = env.spec.make()  # what a remote worker can rebuild from the spec alone
    assert str(again) == str(env)
    np.testing.assert_array_equal(again.reset()[0], env.reset()[0])
