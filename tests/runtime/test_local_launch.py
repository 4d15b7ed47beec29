"""`wsrl-dist launch` with no Ray running starts a local Ray sized for the job: on this 2-core
machine three 1-CPU rollout workers plus the learner still all get scheduled and all collect. Its
workers poll the learner for grants (runtime.grant_wait_s=0); the other job tests' workers wait in it."""

from __future__ import annotations

import ray

from tests.runtime.conftest import run_json, tiny_config


def test_launch_without_a_running_ray_schedules_every_worker_on_a_small_machine(tmp_path):
    from wsrl_dist.runtime.orchestration import driver

    assert not ray.is_initialized()
    cfg = tiny_config(tmp_path / "local", "finetune.warmup_steps=150", "finetune.online_steps=400",
                      "runtime.num_workers=3", "runtime.worker_cpus=1", "finetune.eval_every=100000",
                      "run.checkpoint_every=100000", "runtime.grant_wait_s=0")
    run_dir = driver.launch(cfg, "pytest local launch")
    assert not ray.is_initialized()  # the job shut down the Ray it started
    info = run_json(run_dir)
    assert info["env_steps"] == 400 and info["stages"]["warmup"]["env_steps"] == 150
    assert info["worker_restarts"] == 0
    assert len(info["workers"]) == 3 and all(w["env_steps"] > 0 for w in info["workers"]), info["workers"]
