"""Kitchen: D4RL 60-d obs, reward = subtasks solved so far (0..4), termination and success when all 4 are done."""

from __future__ import annotations

import numpy as np
import pytest

from wsrl_dist.envs import dataset_obs_transform, make_env, obs_act_dims

TASKS = ("microwave", "kettle", "light switch", "slide cabinet")


@pytest.fixture(scope="module")
def env():
    e = make_env("kitchen-complete-v0", seed=0)  # FrankaKitchen is the slowest env to build: once per module
    yield e
    e.close()


def _solve(env, tasks):
    """Put the named subtasks' joints at their goal configuration (real sim state, no stubs)."""
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import (
        OBS_ELEMENT_GOALS,
        OBS_ELEMENT_INDICES,
    )

    base = env.unwrapped
    qpos = base.data.qpos.copy()
    for t in tasks:
        qpos[OBS_ELEMENT_INDICES[t]] = OBS_ELEMENT_GOALS[t]
    base.robot_env.set_state(qpos, np.zeros_like(base.data.qvel))


def test_obs_is_60d_float32_and_random_rewards_are_subtask_counts(env):
    obs, info = env.reset()
    assert obs.shape == (60,) and obs.dtype == np.float32
    assert info["success"] is False and info["num_completed"] == 0
    assert env.action_space.shape == (9,)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    for _ in range(5):
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        assert r == float(int(r)) and 0 <= r <= 4 and r == info["num_completed"]
        assert obs.shape == (60,)


def test_reward_counts_solved_subtasks_cumulatively_and_terminates_at_four(env):
    env.reset()
    _solve(env, ["microwave"])
    _, r, terminated, _, info = env.step(np.zeros(9))
    assert (r, terminated, info["success"]) == (1.0, False, False)
    _, r, terminated, _, _ = env.step(np.zeros(9))
    assert (r, terminated) == (1.0, False)  # counted once, stays counted
    _solve(env, TASKS[1:])
    _, r, terminated, truncated, info = env.step(np.zeros(9))
    assert (r, terminated, truncated, info["success"]) == (4.0, True, False, True)
    assert sorted(info["episode_task_completions"]) == sorted(TASKS)
    _, info = env.reset()
    assert info["num_completed"] == 0  # reset starts a fresh count


def test_obs_is_d4rl_layout_robot_qpos_object_qpos_and_task_goal(env):
    obs, _ = env.reset()
    qpos = env.unwrapped.data.qpos
    np.testing.assert_allclose(obs[:9], qpos[:9], atol=0.02)  # robot qpos (+ the env's obs noise)
    np.testing.assert_allclose(obs[9:30], qpos[9:30], atol=0.01)  # object qpos
    goal = obs[30:]
    assert goal[22] == pytest.approx(-0.75)  # microwave goal sits at qpos index 22
    np.testing.assert_allclose(goal[17:20], [-0.69, -0.05, 0.37])  # light switch, slide cabinet
    assert goal[11] == goal[12] == 0.0  # bottom burner is not a kitchen-complete subtask
    assert obs_act_dims("kitchen-mixed-v0") == (60, 9)


def test_dataset_obs_transform_maps_minari_59d_batches_to_env_layout():
    raw = np.arange(3 * 59, dtype=np.float64).reshape(3, 59)
    out = dataset_obs_transform("kitchen-mixed-v0")({"observation": raw, "achieved_goal": {}})
    assert out.shape == (3, 60) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :9], raw[:, :9])
    np.testing.assert_array_equal(out[:, 9:30], raw[:, 18:39])
    assert out[0, 30 + 11] == pytest.approx(-0.88)  # kitchen-mixed includes the bottom burner
