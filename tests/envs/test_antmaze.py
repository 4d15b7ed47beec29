"""AntMaze: 29-d D4RL obs, pinned goal, sparse 0/1 reward, termination at the goal."""

from __future__ import annotations

import numpy as np
import pytest

from wsrl_dist.envs import dataset_obs_transform, get_task, make_env
from wsrl_dist.envs.wrappers import ANTMAZE_SUCCESS_RADIUS, antmaze_goal_xy, antmaze_reward


def test_obs_is_29d_xy_plus_ant_state_and_rewards_are_zero_or_one():
    env = make_env("antmaze-large-diverse-v2", seed=0)
    obs, info = env.reset()
    assert obs.shape == (29,) and obs.dtype == np.float32 and info["success"] is False
    assert env.action_space.shape == (8,)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    ant = env.unwrapped.ant_env
    for _ in range(5):
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        assert r in (0.0, 1.0) and isinstance(info["success"], bool)
        # D4RL layout: qpos (15, with x, y first) then qvel (14)
        np.testing.assert_allclose(obs, np.concatenate([ant.data.qpos, ant.data.qvel]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["antmaze-umaze-v2", "antmaze-medium-play-v2", "antmaze-large-play-v2"])
def test_goal_is_pinned_to_goal_cell_centre_every_reset(name):
    spec = get_task(name)
    env = make_env(spec, seed=1)
    expected = antmaze_goal_xy(spec.env_kwargs["maze_map"])
    for _ in range(2):
        env.reset()
        np.testing.assert_array_equal(env.unwrapped.goal, expected)
        np.testing.assert_array_equal(env.unwrapped.maze.unique_goal_locations[0], expected)


def test_umaze_goal_cell_is_top_left_in_maze_coordinates():
    np.testing.assert_array_equal(antmaze_goal_xy(get_task("antmaze-umaze-v2").env_kwargs["maze_map"]), [-4.0, 4.0])


def test_reaching_goal_gives_reward_one_success_and_termination():
    env = make_env("antmaze-umaze-v2", seed=0)
    env.reset()
    obs, r, terminated, _, info = env.step(np.zeros(8))
    assert (r, terminated, info["success"]) == (0.0, False, False)
    ant = env.unwrapped.ant_env
    qpos = ant.data.qpos.copy()
    qpos[:2] = env.unwrapped.goal + ANTMAZE_SUCCESS_RADIUS / 4
    ant.set_state(qpos, np.zeros_like(ant.data.qvel))
    obs, r, terminated, truncated, info = env.step(np.zeros(8))
    assert (r, terminated, truncated, info["success"]) == (1.0, True, False, True)
    assert np.linalg.norm(obs[:2] - env.unwrapped.goal) <= ANTMAZE_SUCCESS_RADIUS


def test_relabel_reward_and_dataset_transform_match_the_env():
    spec = get_task("antmaze-medium-diverse-v2")
    maze = spec.env_kwargs["maze_map"]
    goal = antmaze_goal_xy(maze)
    xy = np.stack([goal, goal + 0.44, goal + [0.5, 0.0], goal + 5.0])
    np.testing.assert_array_equal(antmaze_reward(xy, maze), [1.0, 0.0, 0.0, 0.0])  # 0.44 * sqrt(2) > 0.45
    batch = {"observation": np.ones((4, 27)), "achieved_goal": xy, "desired_goal": np.zeros((4, 2))}
    out = dataset_obs_transform(spec)(batch)
    assert out.shape == (4, 29) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :2], xy)
