"""A 3-node Ray cluster on one machine (head + 2 worker nodes): the job survives losing a node that
runs rollout workers; they come back on the remaining node and the job finishes its env steps."""

from __future__ import annotations

import pytest
import ray

from tests.runtime.conftest import BackgroundJob, run_json, tiny_config

K, TOTAL = 100, 900


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # quicker node-death detection than the 15 s default, loose enough for a loaded 2-core machine
    health = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
              "health_check_timeout_ms": 2000, "health_check_failure_threshold": 3}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                      "_system_config": health})
    nodes = [c.add_node(num_cpus=2) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def test_removing_a_worker_node_mid_run_restarts_its_workers_elsewhere(cluster, tmp_path):
    c, nodes = cluster
    cfg = tiny_config(tmp_path / "multi", f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}",
                      "finetune.eval_every=100000", "run.checkpoint_every=100000", "runtime.num_workers=2",
                      "runtime.worker_cpus=1", "runtime.utd_slack=16", "runtime.rollout_slack=64")
    bg = BackgroundJob(cfg)
    st = bg.wait_for(lambda s: s["phase"] == "online" and s["env_steps"] > K + 100, timeout=180)
    head = ray.get_runtime_context().get_node_id()
    assert st["learner_node"] == head
    worker_nodes = {w["node_id"] for w in st["workers"]}
    assert head not in worker_nodes  # the head's only CPU holds the learner
    doomed = next(n for n in nodes if n.node_id in worker_nodes)
    victims = {w["id"] for w in st["workers"] if w["node_id"] == doomed.node_id}
    c.remove_node(doomed, allow_graceful=False)
    run_dir = bg.join()
    info = run_json(run_dir)
    assert info["env_steps"] == TOTAL
    assert info["worker_restarts"] >= len(victims)
    survivor = nodes[1 - nodes.index(doomed)].node_id
    final = {w["id"]: w for w in info["workers"]}
    assert all(final[v]["node_id"] == survivor and final[v]["pid"] for v in victims)
    assert not any(s.get("phase") == "done" for s in bg.statuses[:-1] if s.get("workers_alive") == 0)
