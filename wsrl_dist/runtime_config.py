"""RuntimeConfig: the distributed job's shape (workers, shards, chunking, limiter). No ray import.

It configures wsrl_dist/runtime/ but lives beside config.py, which composes it: the config sits below
the runtime that reads it (tests/test_architecture.py).
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_FRAME_BYTES = 1 << 20


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
    # Rollout side of the UTD limiter: env steps the workers may run ahead of updates / utd (None:
    # unpaced, only the learner side is limited), at most num_workers x chunk_size (one chunk per
    # worker: grants.rollout_slack). Must be >= envs_per_worker.
    rollout_slack: int | None = 512
    # the smallest rollout grant while the pool is short (limiter.grant): with the learner behind,
    # 14 workers asking for one step at a time made ~3,000 grant calls/s into the learner process
    grant_quantum: int = 8
    # a refused worker waits in the learner (learner.wait_for_env_steps) up to this many seconds for
    # room instead of polling it; 0: the old polling, with the worker's own sleeps backing off to 50 ms
    grant_wait_s: float = 0.1
    max_inflight_chunks: int = 4  # insert calls a worker leaves unanswered before it waits
    prefetch: bool = True  # learner requests the next batches before running the current bundle
    # sample requests kept in flight when prefetch is on: one Ray sample round trip (~2.5 ms for
    # 1,024 rows) is longer than a GPU bundle (~1 ms), so none in flight leaves the learner waiting
    prefetch_depth: int = 2
    # bundles' rows fetched per sample request (runtime/datapath/feed.py): one Ray round trip, one shuffle and
    # one host->device copy serve this many bundles. Rows are then sampled up to
    # (prefetch_depth + 1) * sample_bundles bundles (= env steps) before use; 1 without prefetch.
    sample_bundles: int = 4
    # run each sample request's sample_bundles bundles as ONE call (one CUDA graph replay on a GPU,
    # reading the feed's device buffer in place) whenever the limiter allows them all; experimental
    # (not yet measured on a GPU), for SAC methods on the fused fast paths, one seed
    replay_groups: bool = False
    monitor_interval: float = 1.0  # driver's stats/metrics/health loop, seconds
    restart_timeout: float = 120.0  # seconds a restarting worker may take before it is replaced
    keep_checkpoints: int = 2  # newest checkpoints kept under <run_dir>/checkpoints
    shard_cpus: float = 0.0  # CPUs reserved per replay shard actor
    # TEST ONLY: the learner sleeps this long after every update bundle, a deliberately slow learner
    # (tests/runtime/test_utd_band.py holds the UTD band with it); 0 in every real run
    test_learner_delay_s: float = 0.0
    # driver watchdog (runtime/orchestration/watchdog.py): no env step stored and no critic update for this many
    # seconds in the warmup or online stage ends the job with an error naming the stuck actors
    stall_timeout_s: float = 300.0
    # replay shards survive a killed process (runtime/datapath/replay.py): Ray restarts a shard up to this many
    # times and it refills from its newest snapshot, written every replay_snapshot_s seconds (0 = no
    # snapshots: a restarted shard starts empty) under <run_dir>/replay; rows since it are lost
    # (counted: wsrl_replay_rows_lost_total). A 1M-row shard's snapshot is ~100-200 MB of writes.
    shard_max_restarts: int = 100
    replay_snapshot_s: float = 60.0
    # a job checkpoint also when this many seconds passed since the last one (0 = only every
    # run.checkpoint_every env steps): a dead learner ends the job, and --resume redoes what came
    # after the newest checkpoint, so this bounds the work lost in time as well as in env steps
    checkpoint_every_s: float = 900.0

    def validate(self) -> None:
        for name in ("num_workers", "envs_per_worker", "num_shards", "chunk_size", "publish_every",
                     "prefetch_depth", "sample_bundles", "grant_quantum"):
            if getattr(self, name) < 1:
                raise ValueError(f"runtime.{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_slack is not None and self.rollout_slack < self.envs_per_worker:
            raise ValueError(
                f"runtime.rollout_slack ({self.rollout_slack}) must be >= runtime.envs_per_worker "
                f"({self.envs_per_worker}) or null, else a vector env can never step")
        if self.max_inflight_chunks < 1 or self.monitor_interval <= 0 or self.keep_checkpoints < 1:
            raise ValueError("runtime.max_inflight_chunks/keep_checkpoints >= 1, monitor_interval > 0")
        if not 0 <= self.grant_wait_s <= 10:
            raise ValueError(f"runtime.grant_wait_s must be in [0, 10] seconds, got {self.grant_wait_s}")
        if self.utd_slack < 0:
            raise ValueError(f"runtime.utd_slack must be >= 0, got {self.utd_slack}")
        self._validate_limits()

    def _validate_limits(self) -> None:
        """Limits that looped or crashed with no key named (issue 17): max_frame_bytes=0 refused
        every chunk, so the warmup waited forever; max_restarts=-5 failed inside Ray."""
        if self.max_restarts < 0:  # Ray reads -1 as "restart forever": a crash-looping worker never gives up
            raise ValueError(f"runtime.max_restarts must be >= 0, got {self.max_restarts}")
        if self.shard_max_restarts < 0:
            raise ValueError(f"runtime.shard_max_restarts must be >= 0, got {self.shard_max_restarts}")
        if self.checkpoint_every_s < 0:
            raise ValueError(f"runtime.checkpoint_every_s must be >= 0 seconds (0 = off), got {self.checkpoint_every_s}")
        if self.replay_snapshot_s < 0:
            raise ValueError(f"runtime.replay_snapshot_s must be >= 0 seconds (0 = off), got {self.replay_snapshot_s}")
        if self.max_frame_bytes < MIN_FRAME_BYTES:
            raise ValueError(f"runtime.max_frame_bytes must be >= {MIN_FRAME_BYTES} (1 MiB: a "
                             f"{self.chunk_size}-row chunk must fit), got {self.max_frame_bytes}")
        for name in ("restart_timeout", "stall_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"runtime.{name} must be > 0 seconds, got {getattr(self, name)}")
        for name in ("worker_cpus", "shard_cpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"runtime.{name} must be >= 0, got {getattr(self, name)}")
        if self.learner_gpus is not None and self.learner_gpus < 0:
            raise ValueError(f"runtime.learner_gpus must be >= 0 or null, got {self.learner_gpus}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"runtime.metrics_port must be in [0, 65535] (0 = a free port), got {self.metrics_port}")
