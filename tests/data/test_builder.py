"""D4RL-recipe dataset builder (wsrl_dist.data.builder): real SAC runs on InvertedPendulum, real files."""
from __future__ import annotations

import dataclasses
import os
import time

import h5py
import numpy as np
import pytest
import torch

from wsrl_dist.algo.nets import NetConfig
from wsrl_dist.data.builder import (
    DATASET_NOTE,
    BuildSpec,
    behaviour_sac_config,
    build_dataset,
    load_or_build,
    policy_from_weights,
    recipe_from_task,
    rollout_dataset,
    train_behaviour_policy,
)
from wsrl_dist.data.d4rl import load_d4rl_hdf5
from wsrl_dist.data.schema import episode_bounds
from wsrl_dist.envs.tasks import get_task

# Tiny nets, budgets and lr 1e-3: InvertedPendulum's deterministic eval return passes 60 within ~1.5k
# SAC steps, while a random-init policy's mean action (~0) keeps the pole up for ~24 steps.
SPEC = BuildSpec(task="inverted-pendulum-v5", recipe="medium", transitions=2500, train_steps=4000,
                 target_return=60.0, seed=0, hidden=[32, 32], random_steps=500, eval_every=500,
                 eval_episodes=3, sac=dataclasses.replace(behaviour_sac_config(), actor_lr=1e-3,
                                                          critic_lr=1e-3, temperature_lr=1e-3))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("builder_cache")


@pytest.fixture(scope="module")
def trained():
    return train_behaviour_policy(SPEC, progress=False)


@pytest.fixture(scope="module")
def medium_path(cache):
    return build_dataset(SPEC, cache, progress=False)


@pytest.fixture(scope="module")
def random_path(cache):
    return build_dataset(dataclasses.replace(SPEC, recipe="random"), cache, progress=False)


def test_recipe_is_read_off_the_task_name():
    assert recipe_from_task("hopper-medium-replay-v2") == "medium-replay"
    assert recipe_from_task("walker2d-medium-expert-v2") == "medium-expert"
    assert recipe_from_task("halfcheetah-random-v2") == "random"
    assert recipe_from_task("hopper-expert-v2") == "expert"
    assert recipe_from_task("hopper-medium-v2") == "medium"
    assert recipe_from_task("inverted-pendulum-v5") == "medium"


def test_target_defaults_to_a_third_of_the_reference_max():
    assert BuildSpec("hopper-medium-v2").resolved().target_return == pytest.approx(3234.3 / 3)
    assert BuildSpec("inverted-pendulum-v5").resolved().target_return == pytest.approx(1000 / 3)
    assert BuildSpec("pendulum-v1").resolved().target_return == -870.0  # documented per-task default
    assert BuildSpec("hopper-medium-v2", target_return=5.0).resolved().target_return == 5.0
    with pytest.raises(ValueError, match="family"):
        BuildSpec("antmaze-umaze-v2").resolved()
    with pytest.raises(ValueError, match="recipe"):
        BuildSpec("hopper-medium-v2", recipe="mediocre").resolved()


def test_training_stops_at_the_target_and_keeps_its_buffer(trained):
    agent, replay, hist = trained
    assert hist.target_reached_at is not None and hist.train_steps_used == hist.target_reached_at
    assert hist.train_steps_used < SPEC.train_steps
    assert hist.eval_returns[-1] >= SPEC.target_return > max(hist.eval_returns[:-1])
    assert len(replay["rewards"]) == hist.train_steps_used
    # raw InvertedPendulum-v5 reward (1 while upright, 0 on the falling step): no scale/bias applied
    np.testing.assert_array_equal(replay["rewards"], 1.0 - replay["terminals"])
    assert replay["timeouts"][-1] == 1.0 or replay["terminals"][-1] == 1.0


def test_built_file_has_the_d4rl_layout_and_metadata(medium_path):
    with h5py.File(medium_path, "r") as f:
        for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            assert f[k].shape[0] == SPEC.transitions
        assert f["terminals"].dtype == bool and f["timeouts"].dtype == bool
        assert "spec_hash" in f["metadata"].attrs
    ds = load_d4rl_hdf5(medium_path, expected_obs_dim=4, expected_act_dim=1)
    assert len(ds) == SPEC.transitions
    m = ds.metadata
    assert m["env_id"] == "InvertedPendulum-v5" and m["task_name"] == "inverted-pendulum-v5"
    assert m["recipe"] == "medium" and m["seed"] == 0 and m["builder_version"] >= 1
    assert m["dataset_note"] == DATASET_NOTE and m["target_reached"] is True
    assert 0 < m["train_steps_used"] < SPEC.train_steps
    assert m["behaviour_normalized_score"] == pytest.approx(m["behaviour_eval_return"] / 10.0)
    name = medium_path.name
    assert name.startswith("inverted-pendulum-v5-medium-n2500-seed0-") and m["spec_hash"] in name


def test_flags_and_next_observations_follow_episode_boundaries(medium_path):
    ds = load_d4rl_hdf5(medium_path)
    assert not np.any((ds.terminals == 1) & (ds.timeouts == 1))
    assert ds.terminals.sum() > 10  # the pole falls: true terminations, not timeouts
    assert ds.terminals[-1] == 1.0 or ds.timeouts[-1] == 1.0  # final partial episode is closed
    starts, stops = episode_bounds(ds.terminals, ds.timeouts)
    for s, e in zip(starts, stops, strict=True):
        np.testing.assert_array_equal(ds.next_observations[s:e - 1], ds.observations[s + 1:e])
    # across a boundary the next row is a fresh reset, not the stored s'
    ends = stops[:-1] - 1
    assert np.all(np.abs(ds.observations[ends + 1] - ds.next_observations[ends]).max(-1) > 1e-3)
    assert np.all(np.abs(ds.observations[starts]).max(-1) <= 0.01)  # InvertedPendulum resets near 0


def test_rollouts_mark_time_limit_truncations_as_timeouts():
    task = get_task("pendulum-v1")  # never terminates; TimeLimit 200
    net = NetConfig(actor_hidden=[8], critic_hidden=[8], layer_norm=False)
    ds = rollout_dataset(policy_from_weights(task, net, None, seed=0), task, 450, seed=3)
    assert len(ds) == 450 and ds.terminals.sum() == 0
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [199, 399, 449])
    assert not np.allclose(ds.observations[200], ds.next_observations[199])


def test_second_build_hits_the_cache(medium_path, cache):
    mtime = os.stat(medium_path).st_mtime_ns
    t0 = time.perf_counter()
    again = build_dataset(SPEC, cache, progress=False)
    assert again == medium_path and time.perf_counter() - t0 < 3.0
    assert os.stat(medium_path).st_mtime_ns == mtime
    ds = load_or_build(SPEC, cache, progress=False)
    assert os.stat(medium_path).st_mtime_ns == mtime and len(ds) == SPEC.transitions


def test_a_damaged_cache_file_is_rebuilt(cache):
    spec = dataclasses.replace(SPEC, recipe="random", transitions=300, seed=5)
    path = build_dataset(spec, cache, progress=False)
    good = load_d4rl_hdf5(path).observations
    path.write_bytes(path.read_bytes()[:500])
    with pytest.warns(UserWarning, match="rebuilding"):
        assert build_dataset(spec, cache, progress=False) == path
    np.testing.assert_array_equal(load_d4rl_hdf5(path).observations, good)  # same seed, same data


def test_medium_replay_is_the_training_buffer(trained, medium_path, cache):
    _, replay, hist = trained
    path = build_dataset(dataclasses.replace(SPEC, recipe="medium-replay"), cache, progress=False)
    ds = load_d4rl_hdf5(path)
    assert len(ds) == hist.train_steps_used < SPEC.transitions
    assert ds.metadata["transitions_requested"] == SPEC.transitions
    for k, v in replay.items():  # same seed -> the build's run is the run above, row for row
        np.testing.assert_array_equal(getattr(ds, k), v, err_msg=k)
    # the first random_steps rows are uniform random actions, later ones come from the learner
    assert np.abs(ds.actions[:SPEC.random_steps]).mean() == pytest.approx(0.5, abs=0.05)


def test_random_policy_data_scores_far_below_the_trained_policy(medium_path, random_path):
    med, rnd = load_d4rl_hdf5(medium_path).metadata, load_d4rl_hdf5(random_path).metadata
    assert rnd["recipe"] == "random" and rnd["train_steps_used"] == 0
    # random-init actions ~ tanh(N(0, 1)): episodes of ~5 steps. The medium policy's data (sampled
    # actions of a policy stopped right at its target) varies with the CPU's float rounding, which
    # changes the whole training run: ~50 on the Intel CI boxes, 16.6 on an AMD EPYC one (3.6x)
    assert med["dataset_return_mean"] > 3.0 * rnd["dataset_return_mean"]
    assert med["behaviour_eval_return"] > 2.0 * rnd["behaviour_eval_return"]  # fresh eval episodes


def test_medium_expert_concatenates_both_policies(cache):
    spec = dataclasses.replace(SPEC, recipe="medium-expert", transitions=1001, train_steps=1500)
    ds = load_or_build(spec, cache, progress=False)
    m = ds.metadata
    assert len(ds) == 1001 and list(m["behaviour_parts"]) == ["medium", "expert"]
    assert m["train_steps_used"] == 1500  # the whole budget, not stopped at the target
    # 501 medium rows then 500 expert rows: the medium part's last row closes its partial episode
    assert ds.terminals[500] == 1.0 or ds.timeouts[500] == 1.0


def test_a_killed_behaviour_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """The behaviour run checkpoints every `checkpoint_every` env steps; a build killed after that
    resumes there (updates not redone, evals kept, the cut episode ended as a timeout) and removes
    the checkpoint once its run is stored."""
    from wsrl_dist.data import builder

    spec = dataclasses.replace(SPEC, recipe="expert", train_steps=1200, random_steps=300, eval_every=600)
    real_update, calls = builder.sac_update, []

    def killed_at_step_900(agent, batch, cfg):
        if len(calls) == 600:  # updates start after the 300 random steps: update 600 is step 900
            raise KeyboardInterrupt
        calls.append(1)
        real_update(agent, batch, cfg)

    monkeypatch.setattr(builder, "sac_update", killed_at_step_900)
    with pytest.raises(KeyboardInterrupt):
        builder._train_cached(spec, tmp_path, progress=False, checkpoint_every=400)
    (partial,) = tmp_path.glob("runs/*.partial.pt")
    assert torch.load(partial, weights_only=True)["step"] == 800
    assert not list(tmp_path.glob("runs/*.npz"))

    calls.clear()
    monkeypatch.setattr(builder, "sac_update", lambda *a: (calls.append(1), real_update(*a)))
    replay, hist = builder._train_cached(spec, tmp_path, progress=False, checkpoint_every=400)
    assert len(calls) == 400  # steps 801..1200 only
    assert hist.train_steps_used == 1200 and hist.env_steps == [600, 1200]
    assert len(replay["rewards"]) == 1200
    assert replay["terminals"][799] or replay["timeouts"][799]  # the cut episode ends at step 800
    assert not partial.exists() and len(list(tmp_path.glob("runs/*.npz"))) == 1


def test_medium_replay_resumes_the_run_a_killed_medium_build_left(tmp_path, monkeypatch):
    """medium and medium-replay share one behaviour run: the checkpoint a killed medium build left
    is that run's, so a medium-replay build resumes it instead of refusing it."""
    from wsrl_dist.data import builder

    medium = dataclasses.replace(SPEC, train_steps=700, random_steps=300, target_return=1e9)

    def stop(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "sac_update", stop)
    with pytest.raises(KeyboardInterrupt):  # checkpoint at step 200 (random steps), killed at 301
        builder._train_cached(medium, tmp_path, progress=False, checkpoint_every=200)
    monkeypatch.undo()
    real_load, resumed = builder._load_build_partial, []
    monkeypatch.setattr(builder, "_load_build_partial",
                        lambda *a: resumed.append(real_load(*a)) or resumed[-1])
    replay, hist = builder._train_cached(dataclasses.replace(medium, recipe="medium-replay"), tmp_path,
                                         progress=False, checkpoint_every=200)
    assert [step for step, _ in resumed] == [200]  # resumed there, not retrained
    assert hist.train_steps_used == 700 and len(replay["rewards"]) == 700
    assert replay["terminals"][199] or replay["timeouts"][199]  # the cut episode ends at step 200
    assert not list(tmp_path.glob("runs/*.partial.pt"))


def test_a_builder_checkpoint_of_another_spec_or_damaged_is_refused_by_name(tmp_path, monkeypatch):
    from wsrl_dist.data import builder

    spec = dataclasses.replace(SPEC, recipe="expert", train_steps=700, random_steps=300, eval_every=600)
    partial = tmp_path / "run.partial.pt"

    def stop(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "sac_update", stop)
    with pytest.raises(KeyboardInterrupt):  # checkpoint at step 200 (random steps), killed at 301
        builder.train_behaviour_policy(spec, progress=False, partial=partial, checkpoint_every=200)
    assert torch.load(partial, weights_only=True)["step"] == 200
    with pytest.raises(ValueError, match="written for behaviour run .* remove it"):
        builder.train_behaviour_policy(dataclasses.replace(spec, seed=3), progress=False, partial=partial)
    partial.write_bytes(partial.read_bytes()[:100])
    with pytest.raises(ValueError, match="does not load"):
        builder.train_behaviour_policy(spec, progress=False, partial=partial)


def test_a_build_reports_its_progress_to_a_callback(tmp_path):
    """Callers that show build progress elsewhere than tqdm (the Ray learner under `launch`) get
    behaviour-run events with the eval return against its target, then rollout rows to the total."""
    events = []
    spec = dataclasses.replace(SPEC, transitions=1200)
    build_dataset(spec, tmp_path, progress=False, report=events.append)
    behaviour = [e for e in events if e["part"] == "behaviour"]
    rollout = [e for e in events if e["part"] == "rollout"]
    assert behaviour and rollout and all(e["stage"] == "build" for e in events)
    assert [e["done"] for e in behaviour] == sorted(e["done"] for e in behaviour)
    assert behaviour[-1]["target_return"] == pytest.approx(60.0)
    assert behaviour[-1]["eval_return"] >= 60.0  # stopped at the target: the last eval reached it
    assert rollout[-1]["done"] == rollout[-1]["total"] == 1200
