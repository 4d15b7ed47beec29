"""RuntimeConfig: the distributed job's shape (workers, shards, chunking, limiter). No ray import."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RuntimeConfig:
    num_workers: int = 2  # rollout actors
    envs_per_worker: int = 1  # vectorised envs per rollout actor
    num_shards: int = 1  # replay shards
    chunk_size: int = 64  # transitions per msgpack chunk sent to a shard
    publish_every: int = 1  # publish actor weights every k update bundles
    utd_slack: float = 256.0  # critic updates the learner may run ahead of utd * online env steps
    max_restarts: int = 3  # per rollout worker
    max_frame_bytes: int = 64 * 1024 * 1024  # wire: reject bigger msgpack frames
    worker_cpus: float = 1.0
    learner_gpus: float | None = None  # None: 1 if the cluster has a GPU, else 0
    address: str | None = None  # Ray address; None starts a local Ray
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # 0 picks a free port
    control_port: int = 0  # scale/status control server on metrics_host (0: free port)

    def validate(self) -> None:
        for name in ("num_workers", "envs_per_worker", "num_shards", "chunk_size", "publish_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"runtime.{name} must be >= 1, got {getattr(self, name)}")
        if self.utd_slack < 0:
            raise ValueError(f"runtime.utd_slack must be >= 0, got {self.utd_slack}")
