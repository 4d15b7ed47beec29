"""Monitor: merges the stats dicts of learner, shards and rollout workers into one view (off the data path).

Plain class, no Ray: driver.py feeds it one poll per tick and reads back the Prometheus snapshot
(ops/metrics.py schema), the status dict that `driver.status()` returns and the `throughput` record
for metrics.jsonl. Rates are measured over a sliding window of recent ticks.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from wsrl_dist.ops.histogram import POLICY_LAG_BUCKETS, SECONDS_BUCKETS, Histogram
from wsrl_dist.runtime.instrumentation.progress import STAGE_KEYS

WINDOW_SECONDS = 5.0
ALIVE_STATES = ("idle", "running", "stopping", "done")  # supervisor slot states with a live actor


class Monitor:
    def __init__(self, utd_target: float, first_update_step: int, task: Any):
        self.utd_target = float(utd_target)
        self.first_update_step = int(first_update_step)
        self.task = task
        self.samples: deque[tuple[float, int, int]] = deque()  # (t, env_steps, critic updates)
        self.retired_lag = Histogram(POLICY_LAG_BUCKETS)  # lag histograms of finished incarnations
        self.view: dict[str, Any] = {}

    def retire(self, worker_stats: dict[str, Any] | None) -> None:
        """Keep the lag histogram of a worker incarnation that stopped or died."""
        if worker_stats and "lag_hist" in worker_stats:
            self.retired_lag.merge(worker_stats["lag_hist"])

    def update(self, *, phase: str, learner: dict[str, Any], shards: list[dict[str, Any]],
               workers: dict[int, dict[str, Any]], alive: dict[int, str], store_version: int,
               restarts: int, dropped: int, workers_target: int, now: float | None = None,
               placement: dict[str, Any] | None = None, rows_lost: int = 0, shard_restarts: int = 0) -> None:
        """One tick. `workers` holds the latest stats per worker id, `alive` its supervision state;
        `placement`: Supervisor.placement() (workers Ray has not placed, and why)."""
        placement = placement or {}
        now = time.time() if now is None else now
        env_steps = sum(s["env_steps"] for s in shards)
        updates = int(learner.get("critic_updates", 0))
        self.samples.append((now, env_steps, updates))
        while len(self.samples) > 2 and now - self.samples[1][0] >= WINDOW_SECONDS:
            self.samples.popleft()
        t0, e0, u0 = self.samples[0]
        dt, de, du = now - t0, env_steps - e0, updates - u0
        lag = Histogram(POLICY_LAG_BUCKETS).merge(self.retired_lag)
        for w in workers.values():
            lag.merge(w["lag_hist"])
        returns = [r for s in shards for r in s["recent_returns"]]
        acting = [w for wid, w in workers.items() if alive.get(wid) == "running"]
        online = env_steps - self.first_update_step  # the limiter's count (limiter.py)
        self.view = {
            "phase": phase, "env_steps": env_steps, "critic_updates": updates,
            "env_steps_per_second": de / dt if dt > 0 else 0.0,
            "critic_updates_per_second": du / dt if dt > 0 else 0.0,
            "utd_actual": du / de if de > 0 and phase == "online" else None,
            "utd_cumulative": updates / online if online > 0 else None,
            "utd_target": self.utd_target,
            "learner_env_steps": learner.get("env_steps", 0),
            "learner_device": learner.get("device"), "learner_gpu_ids": learner.get("gpu_ids"),
            "learner_time_split_s": learner.get("time_split_s"),
            "learner_feed_split_s": learner.get("feed_split_s"),
            "limiter_blocked_seconds": learner.get("limiter_blocked_seconds", {}),
            "replay": {i: {k: s[k] for k in ("size", "inserts", "samples", "rejected")}
                       for i, s in enumerate(shards)},
            "env_steps_by_worker": _sum_maps(s["env_steps_by_worker"] for s in shards),
            "rejected_chunks": _sum_maps(s["rejected"] for s in shards),
            "policy_lag_hist": lag.to_dict(),
            "policy_lag": float(np.mean([max(0, store_version - w["version"]) for w in acting]))
            if acting else None,
            "weights_version": store_version,
            "worker_restarts_total": restarts, "dropped_env_steps": dropped,
            # rows that died with restarted replay shards (after their last snapshot), and restarts
            "replay_rows_lost": rows_lost, "replay_restarts_total": shard_restarts,
            "learner_pid": learner.get("pid"), "replay_pids": [s.get("pid") for s in shards],
            "workers_alive": sum(1 for s in alive.values() if s in ALIVE_STATES),
            "workers_target": workers_target,
            "workers_pending": placement.get("workers_pending", 0),
            "pending_reason": placement.get("pending_reason"),
            "worker_resources": placement.get("worker_resources"),
            "workers": [{"id": wid, "state": alive.get(wid), "pid": w.get("pid"),
                         "node_id": w.get("node_id"), "env_steps": w.get("env_steps"),
                         "version": w.get("version")} for wid, w in sorted(workers.items())],
            "episode_return": float(np.mean(returns)) if returns else None,
            "losses": learner.get("losses", {}),
            "learner_step_seconds": learner.get("step_hist"),
            "weight_publish_seconds": learner.get("publish_hist"),
            "gpu_memory_bytes": learner.get("gpu_memory_bytes"),
            "learner_device_busy": learner.get("device_busy"),
            "bundle_device_ms": learner.get("bundle_device_ms"),
            "learner_process": learner.get("process"),
            "updated_at": now,
        }

    def snapshot(self) -> dict[str, Any]:
        """The ops.metrics SNAPSHOT dict (keys documented there); missing values are left out."""
        v = self.view
        if not v:
            return {}
        snap = {
            "phase": v["phase"], "env_steps_total": v["env_steps"],
            "env_steps_by_worker": {str(k): n for k, n in v["env_steps_by_worker"].items()},
            "env_steps_per_second": v["env_steps_per_second"],
            "critic_updates_total": v["critic_updates"],
            "critic_updates_per_second": v["critic_updates_per_second"],
            "utd_actual": v["utd_actual"], "utd_target": v["utd_target"],
            "limiter_blocked_seconds": v["limiter_blocked_seconds"], "replay": v["replay"],
            "rejected_chunks": v["rejected_chunks"], "policy_lag": v["policy_lag_hist"],
            "weights_version": v["weights_version"], "worker_restarts_total": v["worker_restarts_total"],
            "replay_rows_lost_total": v.get("replay_rows_lost", 0),
            "replay_restarts_total": v.get("replay_restarts_total", 0),
            "workers_alive": v["workers_alive"], "episode_return": v["episode_return"],
            "workers_pending": v.get("workers_pending", 0),
            "weight_publish_seconds": v["weight_publish_seconds"],
            "learner_step_seconds": v["learner_step_seconds"], "gpu_memory_bytes": v["gpu_memory_bytes"],
            "learner_device_busy": v.get("learner_device_busy"),
            "learner_loop_seconds": v.get("learner_time_split_s") or None,
            # the stage (build, pretrain, ...) with its progress, rate and ETA (runtime/instrumentation/progress.py)
            "stage": v.get("stage"), "stage_progress": v.get("stage_progress"),
            "stage_steps_per_second": v.get("stage_steps_per_second"),
            "stage_eta_seconds": v.get("stage_eta_seconds"),
        }
        proc = v.get("learner_process")
        if proc:  # the learner process's own load (runtime/instrumentation/procstats.py)
            snap["learner_cpu_seconds"] = proc["cpu_seconds"]
            snap["learner_gc_seconds"] = proc["gc_seconds"]
            snap["learner_grant_calls"] = {"granted": proc["grant_calls"] - proc["grant_refusals"],
                                           "refused": proc["grant_refusals"]}
        if v["episode_return"] is not None and self.task.has_ref_scores:
            snap["normalized_score"] = float(self.task.normalized_score(v["episode_return"]))
        for key in ("weight_publish_seconds", "learner_step_seconds"):
            if snap[key] is not None and list(snap[key]["buckets"]) != list(SECONDS_BUCKETS):
                snap[key] = None
        return {k: x for k, x in snap.items() if x is not None}

    def status(self) -> dict[str, Any]:
        """What `driver.status(address)` returns: phase, rates, UTD, replay sizes, lag, workers."""
        v = self.view
        keep = ("phase", "env_steps", "critic_updates", "env_steps_per_second",
                "critic_updates_per_second", "utd_actual", "utd_cumulative", "utd_target",
                "policy_lag", "weights_version", "workers_alive", "workers_target",
                "workers_pending", "pending_reason", "worker_resources", "worker_restarts_total", "dropped_env_steps", "workers", "learner_env_steps",
                "replay_rows_lost", "replay_restarts_total", "learner_pid", "replay_pids",
                "env_steps_by_worker", "learner_device", "learner_gpu_ids",
                "limiter_blocked_seconds", "episode_return", "updated_at")
        out = {k: v.get(k) for k in keep + STAGE_KEYS}
        out["replay_sizes"] = {i: r["size"] for i, r in v.get("replay", {}).items()}
        return out

    def throughput_record(self) -> dict[str, Any]:
        """Fields of one `throughput` line in metrics.jsonl."""
        v = self.view
        keep = ("phase", "env_steps", "critic_updates", "env_steps_per_second",
                "critic_updates_per_second", "utd_actual", "utd_cumulative", "utd_target",
                "learner_env_steps", "policy_lag", "weights_version", "workers_alive",
                "workers_pending", "worker_restarts_total", "dropped_env_steps", "episode_return",
                "replay_rows_lost", "replay_restarts_total")
        # the stage's count, rate and ETA: pre-training steps while env steps are still 0
        out = {k: v.get(k) for k in keep + STAGE_KEYS if k != "pretrain_losses"}
        out["replay_size"] = sum(r["size"] for r in v["replay"].values())
        out["limiter_blocked_learner_s"] = v["limiter_blocked_seconds"].get("learner", 0.0)
        out["limiter_blocked_rollout_s"] = v["limiter_blocked_seconds"].get("rollout", 0.0)
        # cumulative wall seconds of the learner loop's parts, so a job cut short still shows them
        out["learner_time_split_s"] = v.get("learner_time_split_s")
        out["learner_feed_split_s"] = v.get("learner_feed_split_s")  # its assemble part, in parts
        # the bundle's own device time and the share of wall time the device spent on bundles
        out["bundle_device_ms"] = v.get("bundle_device_ms")
        out["learner_device_busy"] = v.get("learner_device_busy")
        # the learner process's cumulative CPU seconds, GC pauses and grant calls (procstats.py)
        out["learner_process"] = v.get("learner_process")
        return out


def _sum_maps(maps) -> dict:
    out: dict = {}
    for m in maps:
        for k, n in m.items():
            out[k] = out.get(k, 0) + n
    return out
