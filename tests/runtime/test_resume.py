"""Resume after the driver process is killed mid-run: the restored counters equal the checkpoint's,
and the resumed job ends with the same totals an uninterrupted run has (single- and multi-seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.runtime.conftest import read_records, run_json
from wsrl_dist.runtime.datapath.learner import first_update_step
from wsrl_dist.runtime.orchestration import checkpoint

K, TOTAL, UTD = 100, 700, 4
REPO = Path(__file__).resolve().parents[2]
OVERRIDES = [f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=100000",
             "run.checkpoint_every=150", "runtime.num_workers=2", "runtime.utd_slack=16",
             "runtime.rollout_slack=32"]
CHILD = """
import sys
from tests.runtime.conftest import tiny_config
from wsrl_dist.runtime.orchestration import driver
cfg = tiny_config(sys.argv[1], f"runtime.address={sys.argv[2]}", *sys.argv[3:])
driver.launch(cfg, "pytest child")
"""


def test_resume_after_driver_kill_restores_identical_counters_and_finishes(ray_local, tmp_path):
    from tests.runtime.conftest import tiny_config
    from wsrl_dist.runtime.orchestration import driver

    run_dir = tmp_path / "resume"
    log = open(tmp_path / "child.log", "w")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), ray_local, *OVERRIDES],
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    saved = None
    try:
        t0 = time.time()
        while time.time() - t0 < 180 and child.poll() is None:
            path = checkpoint.latest(run_dir)
            if path is not None:
                saved = json.loads((path / "meta.json").read_text())["counters"]
                if saved["env_steps"] >= 300:
                    break
            time.sleep(0.2)
        assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
        os.kill(child.pid, signal.SIGKILL)  # the driver dies; its actors die with it
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert saved is not None and K < saved["env_steps"] < TOTAL

    cfg_done = driver.resume(run_dir)
    info = run_json(cfg_done)
    back = info["resumed_from"]
    assert back["saved"] == back["restored"]  # env steps, critic updates, weight version, bundles
    assert back["saved"]["env_steps"] >= saved["env_steps"]
    first = first_update_step(tiny_config(run_dir, *OVERRIDES))
    assert (info["env_steps"], info["critic_updates"]) == (TOTAL, UTD * (TOTAL - first))
    assert info["weights_version"] == info["critic_updates"] // UTD
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))
    assert shards[0]["ring"]["total_inserted"] == TOTAL
    versions = shards[0]["ring"]["arrays"]["policy_versions"]
    assert (versions[:K] == 0).all() and versions.max() > back["saved"]["version"]
    tps = read_records(run_dir, "throughput")
    walls = [r["wall_time"] for r in tps]
    assert np.all(np.diff(walls) > -1.0)  # the resumed job's clock continues the first one's


def test_multi_seed_resume_after_driver_kill_restores_every_seed_at_one_step_and_finishes(ray_local, tmp_path):
    from tests.runtime.conftest import tiny_config
    from wsrl_dist.runtime.orchestration import driver

    run_dir = tmp_path / "multi"
    overrides = [*OVERRIDES, "run.seeds=[0,1]", "runtime.num_workers=1"]
    log = open(tmp_path / "child.log", "w")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), ray_local, *overrides],
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    saved = None
    try:
        t0 = time.time()
        while time.time() - t0 < 240 and child.poll() is None:
            paths = [checkpoint.latest(run_dir / f"seed-{s}") for s in (0, 1)]
            if all(paths):
                metas = [json.loads((p / "meta.json").read_text())["counters"] for p in paths]
                if min(m["env_steps"] for m in metas) >= 300:
                    saved = metas
                    break
            time.sleep(0.2)
        assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert saved is not None and saved[0]["bundles"] == saved[1]["bundles"]  # saved at one step
    assert all(K < m["env_steps"] < TOTAL for m in saved)  # killed mid-run

    done = driver.resume(run_dir)
    assert set(run_json(done)["resumed_from"]) == {"0", "1"}
    first = first_update_step(tiny_config(run_dir, *OVERRIDES))
    for seed in (0, 1):
        d = run_dir / f"seed-{seed}"
        info = run_json(d)
        back = info["resumed_from"]
        assert back["saved"] == back["restored"]
        assert back["saved"]["bundles"] >= saved[seed]["bundles"]
        assert (info["env_steps"], info["critic_updates"]) == (TOTAL, UTD * (TOTAL - first))
        assert info["weights_version"] == info["critic_updates"] // UTD
        _, shards, _ = checkpoint.load(checkpoint.latest(d))
        versions = shards[0]["ring"]["arrays"]["policy_versions"]
        assert (versions[:K] == 0).all() and versions.max() > back["saved"]["version"]


def test_a_job_killed_during_pretraining_resumes_from_its_pretraining_checkpoint(ray_local, tmp_path, monkeypatch):
    """`launch --resume` of a run dir with no online checkpoint but a pre-training one: the learner
    continues pre-training from that step (learner.prepare(resume=True)), then the job runs on."""
    import pytest
    import torch

    from tests.runtime.conftest import tiny_config
    from tests.test_pretrain_resume import _die_at, _Killed, _pre
    from wsrl_dist import job
    from wsrl_dist.pretrain import PARTIAL
    from wsrl_dist.runtime.datapath.learner import Learner
    from wsrl_dist.runtime.orchestration import driver

    run_dir = tmp_path / "run"
    cfg = tiny_config(run_dir, *_pre(tmp_path, "cql"), "finetune.warmup_steps=50", "finetune.online_steps=80",
                      "finetune.eval_every=100000", "run.checkpoint_every=100000", "runtime.num_workers=1")
    job.prepare_run_dir(cfg, "pytest killed in pretraining")  # what launch wrote before the kill
    _die_at(monkeypatch, 12)  # the learner process dies at pre-training step 12 ...
    with pytest.raises(_Killed):
        Learner(cfg.to_dict(), None).prepare()
    monkeypatch.undo()
    assert torch.load(run_dir / "checkpoints" / PARTIAL, weights_only=True)["step"] == 10

    driver.resume(run_dir, "pytest resume")  # ... and the job is resumed
    info = run_json(run_dir)
    assert info["stages"]["pretrain"]["resumed_at_step"] == 11
    assert info["stages"]["pretrain"]["pretrain_steps"] == 20
    assert info["env_steps"] == 80 and (run_dir / "checkpoints" / "pretrained.pt").is_file()
    assert not (run_dir / "checkpoints" / PARTIAL).exists()


def test_multi_seed_resume_skips_a_step_one_seed_cannot_load_and_finishes_from_the_older(ray_local, tmp_path,
                                                                                        caplog):
    """Before: a 2-seed `launch --resume` failed naming seed 1's unloadable newest learner.pt. Now
    both seeds resume from the older step they both have intact (one warning) and finish."""
    import logging

    from tests.runtime.conftest import tiny_config
    from wsrl_dist.runtime.orchestration import driver

    run_dir = tmp_path / "multi"
    overrides = ["run.seeds=[0,1]", "finetune.warmup_steps=100", "finetune.online_steps=400",
                 "finetune.eval_every=100000", "run.checkpoint_every=100", "runtime.num_workers=1",
                 "runtime.utd_slack=16", "runtime.rollout_slack=32"]
    driver.launch(tiny_config(run_dir, *overrides), "pytest")
    names = [sorted(p.name for p in (run_dir / f"seed-{s}" / "checkpoints").glob("step_*")) for s in (0, 1)]
    assert all(n[-1] == "step_0000000400" and len(n) == 2 for n in names), names
    broken = run_dir / "seed-1" / "checkpoints" / names[1][-1] / "learner.pt"
    broken.write_bytes(bytes(broken.stat().st_size))  # same size, zeros: only loading can tell
    with caplog.at_level(logging.WARNING, logger="wsrl_dist.runtime.orchestration.seedgroup"):
        driver.resume(run_dir)
    assert any(f"{broken}: does not load" in r.getMessage() for r in caplog.records)
    assert run_json(run_dir)["resumed_from"] == {str(s): names[s][0] for s in (0, 1)}
    first = first_update_step(tiny_config(run_dir, *overrides))
    for seed in (0, 1):
        info = run_json(run_dir / f"seed-{seed}")
        back = info["resumed_from"]
        assert back["checkpoint"] == names[seed][0] and back["saved"] == back["restored"]
        assert back["saved"]["env_steps"] < 400
        assert (info["env_steps"], info["critic_updates"]) == (400, UTD * (400 - first))
