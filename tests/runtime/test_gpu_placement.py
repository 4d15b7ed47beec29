"""Two learners on one Ray cluster each get their own GPU through Ray's resource scheduling.

CI has no GPU, so the cluster declares two logical GPUs (`ray.init(num_gpus=2)`): Ray still assigns
distinct GPU ids to actors that ask for `num_gpus=1`, which is the placement logic under test. The
learners then run on CPU (torch sees no CUDA device). The same two jobs on a real 2-GPU machine put
each learner on its own device (issue 6)."""

from __future__ import annotations

import pytest

from tests.runtime.conftest import BackgroundJob, tiny_config


@pytest.fixture(scope="module")
def ray_two_gpus():
    import ray

    ray.init(num_cpus=6, num_gpus=2, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    yield
    ray.shutdown()


def test_two_jobs_on_one_cluster_put_their_learners_on_different_gpus(ray_two_gpus, tmp_path):
    jobs = [BackgroundJob(tiny_config(
        tmp_path / f"job{i}", "finetune.warmup_steps=100", "finetune.online_steps=1200",
        "runtime.num_workers=1", "runtime.learner_gpus=1", f"run.seed={i}",
        "run.checkpoint_every=100000", "finetune.eval_every=100000")) for i in range(2)]
    try:
        statuses = [j.wait_for(lambda s: s["phase"] == "online" and s.get("learner_gpu_ids"),
                               timeout=300) for j in jobs]
        ids = [tuple(s["learner_gpu_ids"]) for s in statuses]
        assert all(len(i) == 1 for i in ids), ids
        assert ids[0] != ids[1], f"both learners were given GPU {ids[0]}"
    finally:
        for j in jobs:
            j.join(timeout=600)
