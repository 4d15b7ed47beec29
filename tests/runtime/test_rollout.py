"""RolloutWorker as a real Ray actor on a real vector env (2 envs): exact env-step counts, true final
observations on truncation, raw episode returns, version stamps."""

from __future__ import annotations

import numpy as np
import ray

from tests.runtime.conftest import tiny_config
from wsrl_dist.algo.agent import make_agent
from wsrl_dist.runtime.datapath.replay import ReplayShard
from wsrl_dist.runtime.datapath.rollout import RolloutWorker
from wsrl_dist.runtime.datapath.weights import WeightStore


def test_vector_worker_collects_exactly_n_steps_and_keeps_true_final_obs(ray_local, tmp_path):
    cfg = tiny_config(tmp_path / "r", "task.name=pendulum-v1", "runtime.envs_per_worker=2",
                      "runtime.chunk_size=64")
    agent = make_agent(3, 1, cfg.net, cfg.sac)
    store = ray.remote(WeightStore).remote()
    ray.get(store.publish.remote(7, [ray.put(agent.export_policy())]))
    shard = ray.remote(ReplayShard).remote(10_000, 3, 1, 0)
    worker = ray.remote(RolloutWorker).options(max_concurrency=2).remote(
        cfg.to_dict(), 0, shard, store, None)
    stats = ray.get(worker.collect.remote(451))  # odd: the last vector step keeps one row
    assert stats["env_steps"] == stats["inserted_rows"] == 451 and stats["version"] == 7
    rows = ray.get(shard.state_dict.remote())["ring"]["arrays"]
    assert len(rows["rewards"]) == 451 and (rows["policy_versions"] == 7).all()
    # rows alternate env 0, env 1; Pendulum truncates both at step 200 (rows 398 and 399)
    assert np.flatnonzero(rows["timeouts"]).tolist() == [398, 399]
    assert not rows["terminals"].any()
    for i in range(440):
        same = np.array_equal(rows["next_observations"][i], rows["observations"][i + 2])
        assert same == (i not in (398, 399)), i  # at truncation: the real last obs, not the reset
    st = ray.get(shard.stats.remote())
    assert st["episodes"] == 2 and all(r < 0 for r in st["recent_returns"])  # raw Pendulum costs
    ray.kill(worker)
