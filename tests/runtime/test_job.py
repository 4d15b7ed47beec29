"""One live job on a local Ray, poked while it runs: warmup, UTD band, weight versions, scaling
2 -> 4 -> 1 workers (the first request from another process), and a worker killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from tests.runtime.conftest import BackgroundJob, read_records, run_json, tiny_config
from wsrl_dist.runtime.datapath.learner import first_update_step
from wsrl_dist.runtime.orchestration import checkpoint

K, TOTAL, UTD, UTD_SLACK, ROLLOUT_SLACK = 200, 1400, 4, 16, 32


@pytest.fixture(scope="module")
def live(ray_local, tmp_path_factory):
    cfg = tiny_config(
        tmp_path_factory.mktemp("job") / "live",
        f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=600",
        "runtime.num_workers=2", f"runtime.utd_slack={UTD_SLACK}", f"runtime.rollout_slack={ROLLOUT_SLACK}",
        "run.checkpoint_every=100000",
    )
    bg = BackgroundJob(cfg)
    events: dict = {}
    bg.wait_for(lambda s: s["phase"] == "online" and s["env_steps"] > K + 50)
    code = ("import json, sys; from wsrl_dist.runtime.orchestration import driver; "
            "print(json.dumps(driver.scale(sys.argv[1], 4))); print(json.dumps(driver.status(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, ray_local], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    events["cli"] = [json.loads(line) for line in out.stdout.strip().splitlines()[-2:]]
    st = bg.wait_for(lambda s: s["workers_alive"] == 4 and all(w["env_steps"] for w in s["workers"]))
    url = run_json(cfg.run.run_dir)["metrics_url"]
    events["metrics"] = urllib.request.urlopen(url, timeout=10).read().decode()
    victim = next(w for w in st["workers"] if w["id"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)
    events["victim"] = victim
    events["after_kill"] = bg.wait_for(lambda s: s["worker_restarts_total"] >= 1 and any(
        w["id"] == 1 and w["pid"] not in (None, victim["pid"]) and w["state"] == "running"
        for w in s["workers"]))
    from wsrl_dist.runtime.orchestration import driver

    driver.scale(None, 1, job=cfg.run.run_dir.rsplit("/", 1)[-1])
    events["scaled_down"] = bg.wait_for(lambda s: s["workers_alive"] == 1)
    run_dir = bg.join()
    return cfg, run_dir, bg, events


def test_warmup_collects_exactly_k_env_steps_with_zero_learner_updates_then_updates_start(live):
    cfg, run_dir, _, _ = live
    info = run_json(run_dir)
    assert info["stages"]["warmup"]["env_steps"] == K
    assert info["stages"]["warmup"]["critic_updates"] == 0
    assert info["stages"]["warmup"]["wall_s"] > 0
    tps = read_records(run_dir, "throughput")
    assert all(r["critic_updates"] == 0 for r in tps if r["phase"] in ("pretrain", "warmup"))
    assert max(r["critic_updates"] for r in tps if r["phase"] == "online") > 0
    ckpt = checkpoint.latest(run_dir)
    _, shards, _ = checkpoint.load(ckpt)
    versions = shards[0]["ring"]["arrays"]["policy_versions"]
    assert (versions[:K] == 0).all()  # warmup rows come from the initial policy only


def test_measured_utd_stays_within_limiter_band(live):
    cfg, run_dir, _, _ = live
    first = first_update_step(cfg)
    online = [r for r in read_records(run_dir, "throughput") if r["phase"] == "online"]
    assert len(online) >= 5
    for r in online:
        gap = r["critic_updates"] - UTD * max(0, r["learner_env_steps"] - first)
        assert -UTD * (ROLLOUT_SLACK + 1) <= gap <= UTD_SLACK, r
    info = run_json(run_dir)
    assert info["env_steps"] == TOTAL
    assert info["critic_updates"] == UTD * (TOTAL - first)  # a finished run owes nothing
    late = [r["utd_cumulative"] for r in online if r["env_steps"] > TOTAL // 2]
    assert late and all(abs(u - UTD) < 0.5 for u in late)


def test_weight_versions_advance_and_workers_act_with_them(live):
    cfg, run_dir, bg, _ = live
    info = run_json(run_dir)
    assert info["weights_version"] == info["critic_updates"] // UTD  # publish_every = 1
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))
    versions = shards[0]["ring"]["arrays"]["policy_versions"]
    quarters = [q.mean() for q in np.array_split(versions[K:], 4)]
    assert quarters == sorted(quarters) and quarters[-1] > 0.5 * info["weights_version"]
    seen = [w["version"] for s in bg.statuses for w in s.get("workers", []) if w["id"] == 0 and w["version"] is not None]
    assert seen[-1] > seen[0] >= 0
    lags = [s["policy_lag"] for s in bg.statuses if s.get("policy_lag") is not None]
    assert lags and np.median(lags) < 20


def test_scaling_2_to_4_to_1_workers_mid_run(live):
    cfg, run_dir, bg, events = live
    ack, status = events["cli"]
    assert ack["requested"] == 4 and status["phase"] == "online"  # answered from another process
    alive = [s["workers_alive"] for s in bg.statuses if s["phase"] == "online"]
    assert alive[0] == 2 and 4 in alive and alive[-1] == 1
    assert 1 in alive[alive.index(4):]  # 4 first, then down to 1
    by_worker = events["scaled_down"]["env_steps_by_worker"]
    assert set(by_worker) >= {0, 1, 2, 3} and all(by_worker[w] > 0 for w in (2, 3))
    assert run_json(run_dir)["env_steps"] == TOTAL


def test_killed_worker_is_restarted_and_the_job_still_finishes(live):
    cfg, run_dir, _, events = live
    after = events["after_kill"]
    reborn = next(w for w in after["workers"] if w["id"] == 1)
    assert reborn["pid"] != events["victim"]["pid"]
    info = run_json(run_dir)
    assert info["worker_restarts"] >= 1
    assert info["env_steps"] == TOTAL  # steps lost with the killed chunk were handed out again


def test_metrics_endpoint_serves_the_job_snapshot(live):
    _, _, _, events = live
    text = events["metrics"]
    for name in ("wsrl_env_steps_total", "wsrl_critic_updates_total", "wsrl_utd_target",
                 "wsrl_replay_size", "wsrl_workers_alive", 'wsrl_phase{phase="online"} 1.0'):
        assert name in text


def test_run_dir_has_the_local_layout_and_a_report(live):
    _, run_dir, _, _ = live
    for name in ("config.yaml", "run.json", "metrics.jsonl", "results.md", "checkpoints"):
        assert (run_dir / name).exists(), name
    assert {r["phase"] for r in read_records(run_dir, "eval")} >= {"initial", "after_warmup", "online"}
    assert read_records(run_dir, "train")
