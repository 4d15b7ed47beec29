"""Minari datasets (wsrl_dist.data.minari): built here with Minari's own tools from real gymnasium envs.

Minari's `DataCollector` needs jax (`minari[create]`), which is not installed; the datasets are therefore
made with `minari.create_dataset_from_buffers` from `EpisodeBuffer`s filled by real env rollouts.
"""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer  # noqa: E402

from wsrl_dist.data.minari import load_minari  # noqa: E402
from wsrl_dist.data.schema import DatasetError, DatasetNotFoundError  # noqa: E402


def collect(env: gym.Env, n_episodes: int, seed: int = 0) -> tuple[list[EpisodeBuffer], list[dict]]:
    """Roll out random actions; return Minari episode buffers and what we saw, step by step."""
    env.action_space.seed(seed)
    buffers, seen = [], []
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=seed + ep)
        is_dict = isinstance(obs, dict)
        obs_buf = {k: [v] for k, v in obs.items()} if is_dict else [obs]
        steps = {"obs": [obs], "act": [], "rew": [], "term": [], "trunc": []}
        while True:
            a = env.action_space.sample()
            obs, r, term, trunc, _ = env.step(a)
            if is_dict:
                for k, v in obs.items():
                    obs_buf[k].append(v)
            else:
                obs_buf.append(obs)
            for k, v in zip(("obs", "act", "rew", "term", "trunc"), (obs, a, r, term, trunc), strict=True):
                steps[k].append(v)
            if term or trunc:
                break
        buffers.append(EpisodeBuffer(
            observations=obs_buf, actions=steps["act"], rewards=steps["rew"],
            terminations=steps["term"], truncations=steps["trunc"],
        ))
        seen.append(steps)
    return buffers, seen


def make_dataset(dataset_id: str, env_id: str, n_episodes: int, **make_kwargs) -> list[dict]:
    env = gym.make(env_id, **make_kwargs)
    buffers, seen = collect(env, n_episodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env, algorithm_name="random", author="wsrl-dist tests",
            author_email="tests@example.com", code_permalink="none", description="test dataset",
        )
    env.close()
    return seen


@pytest.fixture
def minari_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def expected_columns(seen: list[dict], flatten=lambda o: np.asarray(o)) -> dict[str, np.ndarray]:
    obs = [np.stack([flatten(o) for o in s["obs"]]) for s in seen]
    return {
        "observations": np.concatenate([o[:-1] for o in obs]),
        "next_observations": np.concatenate([o[1:] for o in obs]),
        "actions": np.concatenate([np.stack(s["act"]) for s in seen]),
        "rewards": np.concatenate([np.asarray(s["rew"]) for s in seen]),
        "terminals": np.concatenate([np.asarray(s["term"]) for s in seen]),
        "timeouts": np.concatenate([np.asarray(s["trunc"]) for s in seen]),
    }


def test_round_trip_columns_equal_what_was_collected(minari_dir):
    # InvertedPendulum terminates when the pole falls; the 8-step limit truncates the rest.
    seen = make_dataset("tests/invpend-random-v0", "InvertedPendulum-v5", 6, max_episode_steps=8)
    exp = expected_columns(seen)
    assert exp["terminals"].sum() > 0 and exp["timeouts"].sum() > 0  # both ends are exercised
    ds = load_minari("tests/invpend-random-v0")
    assert len(ds) == len(exp["rewards"]) and ds.obs_dim == 4 and ds.act_dim == 1
    for k, v in exp.items():
        got = getattr(ds, k)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, v.astype(np.float32), rtol=0, atol=0, err_msg=k)
    assert ds.metadata["dataset_id"] == "tests/invpend-random-v0"
    assert ds.metadata["total_steps"] == len(ds) and ds.metadata["author"] == ["wsrl-dist tests"]
    assert "tests/invpend-random-v0" in ds.source


def test_root_argument_overrides_the_env_var(tmp_path, minari_dir, monkeypatch):
    make_dataset("tests/pendulum-random-v0", "Pendulum-v1", 2, max_episode_steps=5)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError):
        load_minari("tests/pendulum-random-v0")
    ds = load_minari("tests/pendulum-random-v0", root=minari_dir)
    assert len(ds) == 10 and ds.timeouts.sum() == 2 and ds.terminals.sum() == 0


@pytest.fixture
def pointmaze(minari_dir):
    gymnasium_robotics = pytest.importorskip("gymnasium_robotics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym.register_envs(gymnasium_robotics)
    seen = make_dataset("tests/pointmaze-random-v0", "PointMaze_UMaze-v3", 2, max_episode_steps=6)
    space = gym.make("PointMaze_UMaze-v3").observation_space
    return seen, space


def test_dict_observations_are_flattened_like_gymnasium(pointmaze):
    seen, space = pointmaze
    ds = load_minari("tests/pointmaze-random-v0")
    exp = expected_columns(seen, flatten=lambda o: gym.spaces.flatten(space, o))
    assert ds.obs_dim == 8
    np.testing.assert_array_equal(ds.observations, exp["observations"].astype(np.float32))
    np.testing.assert_array_equal(ds.next_observations, exp["next_observations"].astype(np.float32))


def test_obs_transform_maps_each_step_observation(pointmaze):
    seen, _ = pointmaze

    def only_state_and_goal(o):
        return np.concatenate([o["observation"], o["desired_goal"]])

    exp = expected_columns(seen, flatten=only_state_and_goal)
    ds = load_minari("tests/pointmaze-random-v0", obs_transform=only_state_and_goal)
    assert ds.obs_dim == 6
    np.testing.assert_array_equal(ds.observations, exp["observations"].astype(np.float32))
    batched = load_minari(
        "tests/pointmaze-random-v0",
        obs_transform=lambda o: np.concatenate([o["observation"], o["desired_goal"]], axis=-1),
        obs_transform_batched=True,
    )
    np.testing.assert_array_equal(batched.next_observations, ds.next_observations)


def test_obs_transform_with_wrong_output_shape_is_an_error(pointmaze):
    with pytest.raises(DatasetError, match=r"field 'observations'.*expected \[7, O\]"):
        load_minari("tests/pointmaze-random-v0", obs_transform=lambda o: np.zeros(3), obs_transform_batched=True)


def test_dims_different_from_the_env_are_errors(minari_dir):
    make_dataset("tests/pendulum-random-v0", "Pendulum-v1", 1, max_episode_steps=3)
    with pytest.raises(DatasetError, match=r"field 'observations': obs dim 3 differs from the env's 5"):
        load_minari("tests/pendulum-random-v0", expected_obs_dim=5)
    with pytest.raises(DatasetError, match=r"field 'actions': action dim 1 differs"):
        load_minari("tests/pendulum-random-v0", expected_act_dim=2)


def test_missing_dataset_says_how_to_download(minari_dir):
    with pytest.raises(DatasetNotFoundError) as ei:
        load_minari("D4RL/antmaze/large-diverse-v1")
    msg = str(ei.value)
    assert "minari download D4RL/antmaze/large-diverse-v1" in msg
    assert str(minari_dir) in msg and "no network" in msg


def test_corrupt_dataset_file_is_an_error_naming_the_dataset(minari_dir):
    make_dataset("tests/pendulum-random-v0", "Pendulum-v1", 3, max_episode_steps=50)
    files = sorted((minari_dir / "tests/pendulum-random-v0/data").glob("*.hdf5"))
    assert files, "expected Minari's HDF5 storage"
    with open(files[0], "r+b") as fh:
        fh.truncate(files[0].stat().st_size // 2)
    with pytest.raises(DatasetError, match=r"minari:tests/pendulum-random-v0 .*cannot read Minari"):
        load_minari("tests/pendulum-random-v0")
