"""The builder's fast paths: FastLearner (device replay, one CUDA graph per step) against the eager
sac_update, and the vector-env dataset rollout (data/parallel_rollout.py). Real envs, tiny nets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from wsrl_dist.algo import fused as fused_lib
from wsrl_dist.algo.agent import make_agent
from wsrl_dist.algo.types import batch_from_numpy
from wsrl_dist.data import builder
from wsrl_dist.data.behaviour import FastLearner, transition_row
from wsrl_dist.data.parallel_rollout import init_actor_weights, rollout_parallel, stream_group
from wsrl_dist.data.ring import RingBuffer
from wsrl_dist.data.schema import episode_bounds
from wsrl_dist.envs.make import make_env
from wsrl_dist.envs.tasks import get_task

SPEC = dataclasses.replace(builder.BuildSpec(task="inverted-pendulum-v5", hidden=[32, 32]), sac=dataclasses.replace(
    builder.behaviour_sac_config(), batch_size=64)).resolved()


def transitions(n: int, seed: int) -> list[tuple]:
    """n real InvertedPendulum steps under uniform random actions (episodes end: terminals too)."""
    env, rng, out = make_env(SPEC.task, seed=seed), np.random.default_rng(seed), []
    obs, _ = env.reset()
    for _ in range(n):
        a = rng.uniform(-1, 1, 1).astype(np.float32)
        nxt, r, term, trunc, _ = env.step(a)
        out.append((obs, a, r, nxt, term, trunc))
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    return out


def agent(device: str = "cpu", capturable: bool = False):
    torch.manual_seed(7)
    return make_agent(4, 1, SPEC.net_config(), SPEC.sac, device=device, capturable=capturable)


def test_fast_learner_step_is_sac_update_on_uniformly_drawn_stored_rows():
    """Same init, same noise: FastLearner.step (packed device rows, indices floor(u * n) drawn on the
    device) gives the action of the actor before the update and leaves the weights that sac_update
    on the host RingBuffer's rows at those indices leaves (so the packing of obs / action / reward /
    next obs / mask is right)."""
    rows, cfg = transitions(160, seed=1), SPEC.sac
    fast_agent, ref_agent = agent(), agent()
    fast = FastLearner(fast_agent, cfg, RingBuffer(200, 4, 1), builder.sac_update, graph=False)
    ref = RingBuffer(200, 4, 1)
    for t in rows[:100]:  # the uniform-random phase: stored, no updates
        fast.insert(t)
        ref.insert(transition_row(t))
    assert rows[:100] and sum(t[4] for t in rows) > 3  # terminal rows are in the draws (masks matter)
    for k, t in enumerate(rows[100:]):
        next_obs = rows[101 + k][0] if 101 + k < len(rows) else t[3]
        torch.manual_seed(100 + k)
        a_fast = fast.step(t, next_obs)
        ref.insert(transition_row(t))
        torch.manual_seed(100 + k)
        with torch.no_grad():  # the next action comes from the actor before this step's update
            a_ref = ref_agent.actor(torch.as_tensor(next_obs)[None])[0][0].numpy()
        u = torch.rand(cfg.batch_size, dtype=torch.float64)
        idx = (u * len(ref)).long().numpy()
        builder.sac_update(ref_agent, batch_from_numpy(ref.gather(idx)), cfg)
        np.testing.assert_allclose(a_fast, a_ref, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(fast_agent.critic.named_parameters(), ref_agent.critic.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    for p, q in zip(fast_agent.actor.parameters(), ref_agent.actor.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fast_agent.actor.mean.weight, agent().actor.mean.weight)  # it did learn
    for k, v in fast.replay().export().items():  # the host copy holds every row, in order
        np.testing.assert_array_equal(v, ref.export()[k], err_msg=k)


def test_fused_fast_learner_is_sac_update_with_the_min_over_both_critics(monkeypatch):
    """FastLearner(fused=True), the GPU default, eagerly on CPU: the fused formulation of the plain-SAC
    step (flat buffers, Spec.full_min) leaves the weights sac_update leaves on the same drawn rows, with
    the policy noise pinned to zero on both sides (the fused path draws its noise in one place:
    tests/algo/test_fused.py checks that part). Checked on a 2-critic ensemble where a with-
    replacement subsample (WSRL's rule) would differ from the builder's clipped double Q."""
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.zeros_like(t))
    draw = fused_lib.draw_noise
    monkeypatch.setattr(fused_lib, "draw_noise", lambda spec, seeds, device: fused_lib.Noise(
        *(torch.zeros_like(x) if x.is_floating_point() else x for x in draw(spec, seeds, device))))
    rows, cfg = transitions(140, seed=3), SPEC.sac
    assert cfg.critic_subsample_size == cfg.critic_ensemble_size == 2
    fast_agent, ref_agent = agent(), agent()
    fast = FastLearner(fast_agent, cfg, RingBuffer(200, 4, 1), builder.sac_update, graph=False, fused=True)
    ref = RingBuffer(200, 4, 1)
    for t in rows[:100]:
        fast.insert(t)
        ref.insert(transition_row(t))
    for k, t in enumerate(rows[100:]):
        torch.manual_seed(100 + k)
        fast.step(t, t[3])
        ref.insert(transition_row(t))
        torch.manual_seed(100 + k)
        idx = (torch.rand(cfg.batch_size, dtype=torch.float64) * len(ref)).long().numpy()
        builder.sac_update(ref_agent, batch_from_numpy(ref.gather(idx)), cfg)
    assert fast._bundle is not None and fast._bundle.spec.full_min
    for (name, p), q in zip(fast_agent.critic.named_parameters(), ref_agent.critic.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    for (name, p), q in zip(fast_agent.actor.named_parameters(), ref_agent.actor.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(fast_agent.temperature(), ref_agent.temperature())
    assert not torch.equal(fast_agent.actor.mean.weight, agent().actor.mean.weight)  # it did learn


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("fused", [False, True], ids=["ops", "fused"])
def test_fast_learner_cuda_graph_matches_its_eager_step(fused):
    """The captured step (fused: compiled too) against the same step run eagerly on the GPU."""
    rows, cfg = transitions(400, seed=2), SPEC.sac
    learners = [FastLearner(agent("cuda", capturable=True), cfg, RingBuffer(400, 4, 1), builder.sac_update, graph=g,
                            fused=fused) for g in (True, False)]
    actions = [[], []]
    for li, learner in enumerate(learners):
        for t in rows[:100]:
            learner.insert(t)
        if learner.graph:  # capture first: its warm-up calls draw from the RNG seeded below
            learner._upload()
            learner._capture()
        for k, t in enumerate(rows[100:]):
            torch.cuda.manual_seed(100 + k)  # graph replays draw from the generator's state at replay
            actions[li].append(learner.step(t, t[3]))
    np.testing.assert_allclose(actions[0], actions[1], rtol=1e-4, atol=1e-5)
    for p, q in zip(learners[0].agent.critic.parameters(), learners[1].agent.critic.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert int(learners[0].stored) == int(learners[1].stored) == 400


def test_a_fast_behaviour_run_stores_every_step_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """train_behaviour_policy(fast=True) on CPU: the random phase's rows reach the device replay
    (uploaded at the first update), a killed run resumes from its checkpoint (rows uploaded again)."""
    spec = dataclasses.replace(SPEC, recipe="expert", train_steps=700, random_steps=300, eval_every=700)
    real, calls = builder.sac_update, []

    def killed_at_step_500(*a):
        if len(calls) == 200:
            raise KeyboardInterrupt
        calls.append(1)
        real(*a)

    monkeypatch.setattr(builder, "sac_update", killed_at_step_500)
    partial = tmp_path / "run.partial.pt"
    with pytest.raises(KeyboardInterrupt):
        builder.train_behaviour_policy(spec, progress=False, partial=partial, checkpoint_every=400, fast=True)
    assert torch.load(partial, weights_only=True)["step"] == 400
    calls.clear()
    monkeypatch.setattr(builder, "sac_update", lambda *a: (calls.append(1), real(*a)))
    _, replay, hist = builder.train_behaviour_policy(spec, progress=False, partial=partial, fast=True)
    assert len(calls) == 300 and hist.train_steps_used == 700 and len(replay["rewards"]) == 700
    assert replay["terminals"][399] or replay["timeouts"][399]  # the cut episode ends at step 400
    assert np.abs(replay["actions"][:300]).mean() == pytest.approx(0.5, abs=0.06)  # uniform phase
    starts, stops = episode_bounds(replay["terminals"], replay["timeouts"])
    for s, e in zip(starts, stops, strict=True):
        np.testing.assert_array_equal(replay["next_observations"][s:e - 1], replay["observations"][s + 1:e])


def random_weights(task: str = SPEC.task) -> dict[str, np.ndarray]:
    return init_actor_weights(get_task(task), SPEC.net_config(), seed=3)


def test_parallel_rollout_writes_each_env_stream_whole_and_closes_its_last_episode():
    """pendulum-v1 never terminates (TimeLimit 200): 2 streams of 225 rows, each with a timeout at
    its 200th row and its last; next_observations follow episodes, and not across their ends."""
    cols = rollout_parallel(random_weights("pendulum-v1"), SPEC.net_config(), "pendulum-v1", 450, seed=3,
                          num_envs=2)
    assert cols["terminals"].sum() == 0
    np.testing.assert_array_equal(np.flatnonzero(cols["timeouts"]), [199, 224, 424, 449])
    starts, stops = episode_bounds(cols["terminals"], cols["timeouts"])
    for s, e in zip(starts, stops, strict=True):
        np.testing.assert_array_equal(cols["next_observations"][s:e - 1], cols["observations"][s + 1:e])
    assert not np.allclose(cols["observations"][225], cols["next_observations"][224])  # env 1 starts fresh


def test_parallel_rollout_terminals_end_episodes_and_rows_do_not_depend_on_grouping():
    net, w = SPEC.net_config(), random_weights()
    cols = rollout_parallel(w, net, SPEC.task, 603, seed=5, num_envs=4)
    assert len(cols["rewards"]) == 603 and cols["terminals"].sum() > 20  # random init: the pole falls
    assert not np.any((cols["terminals"] == 1) & (cols["timeouts"] == 1))
    ends = np.cumsum([151, 151, 151, 150]) - 1
    assert np.all((cols["terminals"][ends] + cols["timeouts"][ends]) == 1)  # each stream closed
    np.testing.assert_array_equal(cols["rewards"], 1.0 - cols["terminals"])  # raw InvertedPendulum reward
    starts, stops = episode_bounds(cols["terminals"], cols["timeouts"])
    assert np.all(np.abs(cols["observations"][starts]).max(-1) <= 0.01)  # every episode starts at a reset
    for s, e in zip(starts, stops, strict=True):
        np.testing.assert_array_equal(cols["next_observations"][s:e - 1], cols["observations"][s + 1:e])
    # the same rows with the envs split over two groups (as over two worker processes), and again
    halves = [stream_group(SPEC.task, net, w, 5, lo, c, False) for lo, c in ((0, [151, 151]), (2, [151, 150]))]
    again = rollout_parallel(w, net, SPEC.task, 603, seed=5, num_envs=4)
    other = rollout_parallel(w, net, SPEC.task, 603, seed=6, num_envs=4)
    for k, v in cols.items():
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), v, err_msg=k)
        np.testing.assert_array_equal(again[k], v, err_msg=k)
    assert not np.array_equal(other["observations"], cols["observations"])


def test_parallel_rollout_in_worker_processes_writes_the_same_rows():
    net, w = SPEC.net_config(), random_weights()
    here = rollout_parallel(w, net, SPEC.task, 400, seed=9, num_envs=3, workers=1)
    events = []
    spawned = rollout_parallel(w, net, SPEC.task, 400, seed=9, num_envs=3, workers=2,
                             report=lambda done, total: events.append((done, total)), report_every=1)
    for k, v in here.items():
        np.testing.assert_array_equal(spawned[k], v, err_msg=k)
    assert events[-1] == (400, 400) and [d for d, _ in events] == sorted(d for d, _ in events)
