"""Task registry: names, reward scale/bias, D4RL normalised scores, errors, config overrides."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from wsrl_dist.envs import TaskConfig, UnknownTaskError, get_task, list_tasks


def test_registry_holds_every_requested_name():
    expected = {f"{r}-{q}-v2" for r in ("hopper", "halfcheetah", "walker2d", "ant")
                for q in ("random", "medium", "medium-replay", "medium-expert", "expert")}
    expected |= {f"antmaze-{m}-v2" for m in ("umaze", "umaze-diverse", "medium-play", "medium-diverse",
                                              "large-play", "large-diverse")}
    expected |= {f"kitchen-{k}-v0" for k in ("complete", "partial", "mixed")}
    expected |= {f"{k}-binary-v0" for k in ("pen", "door", "relocate")}
    expected |= {"inverted-pendulum-v5", "pendulum-v1"}
    assert set(list_tasks()) == expected
    assert list_tasks("kitchen") == ["kitchen-complete-v0", "kitchen-mixed-v0", "kitchen-partial-v0"]


@pytest.mark.parametrize("name,env_id,minari_id,horizon", [
    ("hopper-medium-v2", "Hopper-v5", "mujoco/hopper/medium-v0", 1000),
    ("antmaze-large-diverse-v2", "AntMaze_Large-v5", "D4RL/antmaze/large-diverse-v1", 1000),
    ("antmaze-umaze-v2", "AntMaze_UMaze-v5", "D4RL/antmaze/umaze-v1", 700),
    ("kitchen-partial-v0", "FrankaKitchen-v1", "D4RL/kitchen/partial-v2", 280),
    ("door-binary-v0", "AdroitHandDoor-v1", "D4RL/door/human-v2", 200),
    ("pen-binary-v0", "AdroitHandPen-v1", "D4RL/pen/human-v2", 100),
])
def test_spec_maps_to_gymnasium_env_and_minari_dataset(name, env_id, minari_id, horizon):
    spec = get_task(name)
    assert (spec.env_id, spec.minari_id, spec.max_episode_steps) == (env_id, minari_id, horizon)


def test_medium_expert_concatenates_two_minari_datasets_and_replay_has_none():
    me = get_task("walker2d-medium-expert-v2")
    assert (me.minari_id, me.minari_concat) == ("mujoco/walker2d/medium-v0", ("mujoco/walker2d/expert-v0",))
    assert get_task("walker2d-medium-replay-v2").minari_id is None
    assert get_task("walker2d-random-v2").minari_id is None


def test_kitchen_mixed_has_the_d4rl_subtasks():
    assert get_task("kitchen-mixed-v0").make_kwargs()["tasks_to_complete"] == [
        "microwave", "kettle", "bottom burner", "light switch"]


def test_scale_reward_maps_raw_sparse_rewards_to_plus_minus_five():
    antmaze, adroit, kitchen = get_task("antmaze-umaze-v2"), get_task("pen-binary-v0"), get_task("kitchen-mixed-v0")
    assert antmaze.scale_reward(0.0) == -5.0 and antmaze.scale_reward(1.0) == 5.0
    assert adroit.scale_reward(-1.0) == -5.0 and adroit.scale_reward(0.0) == 5.0
    r = np.arange(5, dtype=np.float32)
    out = kitchen.scale_reward(r)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-4.0, -3.0, -2.0, -1.0, 0.0])
    assert get_task("hopper-medium-v2").scale_reward(3.25) == 3.25


def test_sparse_negative_reward_is_the_scaled_failure_reward():
    for name in list_tasks():
        spec = get_task(name)
        if spec.sparse_reward:
            raw_fail = {"antmaze": 0.0, "adroit": -1.0}[spec.family]
            assert spec.scale_reward(raw_fail) == spec.sparse_negative_reward == -5.0
        else:
            assert spec.sparse_negative_reward is None
            assert spec.family in ("kitchen", "locomotion", "classic")


def test_action_clip_is_off_only_for_adroit():
    for name in list_tasks():
        spec = get_task(name)
        assert spec.clip_actions == (None if spec.family == "adroit" else 0.99999)


def test_normalized_score_matches_hand_computed_d4rl_values():
    hopper = get_task("hopper-medium-v2")  # D4RL: min -20.272305, max 3234.3
    assert hopper.normalized_score(3234.3) == pytest.approx(100.0)
    assert hopper.normalized_score(-20.272305) == pytest.approx(0.0)
    assert hopper.normalized_score(1607.0138475) == pytest.approx(50.0)
    np.testing.assert_allclose(get_task("halfcheetah-medium-v2").normalized_score(np.array([12135.0, -280.178953])),
                               [100.0, 0.0])
    assert get_task("kitchen-complete-v0").normalized_score(2.0) == pytest.approx(50.0)
    assert get_task("antmaze-large-play-v2").normalized_score(1.0) == pytest.approx(100.0)


def test_normalized_score_refuses_tasks_without_reference_scores():
    with pytest.raises(ValueError, match="success_rate"):
        get_task("door-binary-v0").normalized_score(0.0)


def test_unknown_task_error_names_close_matches():
    with pytest.raises(UnknownTaskError) as e:
        get_task("hopper-medum-v2")
    assert "hopper-medium-v2" in str(e.value)
    with pytest.raises(KeyError, match="antmaze-large-diverse-v2"):
        get_task("antmaze-large-diverse-v0")


def test_spec_is_immutable_and_make_kwargs_returns_fresh_lists():
    spec = get_task("antmaze-medium-play-v2")
    kw = spec.make_kwargs()
    kw["maze_map"][1][1] = 1
    assert spec.make_kwargs()["maze_map"][1][1] == "r"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.reward_scale = 2.0  # type: ignore[misc]
    hash(spec)


def test_task_config_overrides_only_what_is_set():
    assert TaskConfig(name="hopper-medium-v2").spec() is get_task("hopper-medium-v2")
    spec = TaskConfig(name="antmaze-umaze-v2", reward_bias=-1.0, max_episode_steps=50).spec()
    assert (spec.reward_scale, spec.reward_bias, spec.max_episode_steps) == (10.0, -1.0, 50)


def test_importing_envs_does_not_import_gymnasium():
    code = "import sys, wsrl_dist.envs; print('gymnasium' in sys.modules, 'mujoco' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
