"""Learner: one seed's replay shards -> update bundles (algo/update.py) -> versioned weights (weights.py).

Not an actor itself: runtime/datapath/learneractor.py's LearnerActor (the one learner actor of every job) holds
one Learner per seed and calls it from its threads. Hosts the seed's UTD limiter (limiter.py): its own
side is checked locally before every bundle, and rollout workers ask it for env steps through
`wait_for_env_steps` (or `acquire_env_steps`, which never waits), on the actor's GRANTS concurrency
group's threads, so that workers waiting there never take the threads the driver's calls need.
LearnerActor.train runs the one training loop over its seeds' Learners (begin_train, next_batch /
next_group, update_fn / run_group, after_bundle, publish_due, end_train). Publishing, stats and
checkpoint state are LearnerOutputs (runtime/datapath/learneroutputs.py).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from wsrl_dist import job
from wsrl_dist.algo.fast import (
    make_bundle_fn,
    make_offline_step_fn,
    offline_step_kind,
    resolve_mode,
)
from wsrl_dist.algo.types import Batch
from wsrl_dist.config import from_dict
from wsrl_dist.envs.make import obs_act_dims
from wsrl_dist.ops.histogram import SECONDS_BUCKETS, Histogram
from wsrl_dist.plan import RunPlan
from wsrl_dist.pretrain import PARTIAL, DeviceSampler, pretrain_agent, training_arrays
from wsrl_dist.runtime.datapath.feed import ReplayFeed
from wsrl_dist.runtime.datapath.grants import GrantDesk, rollout_slack
from wsrl_dist.runtime.datapath.hostcopy import HostCopy
from wsrl_dist.runtime.datapath.learneroutputs import LearnerOutputs
from wsrl_dist.runtime.datapath.limiter import UtdLimiter
from wsrl_dist.runtime.datapath.weights import WeightPublisher
from wsrl_dist.runtime.instrumentation.bundletimer import BundleTimer
from wsrl_dist.runtime.instrumentation.procstats import ProcessStats
from wsrl_dist.runtime.instrumentation.progress import StageRecord


def first_update_step(cfg) -> int:
    """Env steps after which the first bundle may run (RunPlan.first_update_step), for a caller
    holding only a config."""
    return RunPlan.of(cfg).first_update_step


class Learner(LearnerOutputs):
    def __init__(self, cfg: dict, store: Any, shards: list | None = None, plan: RunPlan | None = None):
        self.cfg = from_dict(cfg)
        c = self.cfg
        self.plan = plan if plan is not None else RunPlan.of(c)  # the driver's; built alone: its own
        # the training thread shares the GIL with the threads answering workers' grant calls:
        # hand it back after 1 ms instead of Python's 5 ms, or every bundle waits behind them
        sys.setswitchinterval(0.001)
        self.process_stats = ProcessStats()
        torch.manual_seed(c.run.seed)
        self.device = job.resolve_device(c.run.device)
        self.matmul_dtype = job.configure_matmul(c.run.matmul_precision, self.device)
        job.configure_compile_cache(c.run.compile_cache)
        self.mode = resolve_mode(c.run.fast_path, self.device, self.matmul_dtype)
        self.task = c.task.spec()
        self.obs_dim, self.act_dim = obs_act_dims(self.task)
        self.agent = job.build_agent(c, self.obs_dim, self.act_dim, self.device,
                                     capturable=self.mode.endswith("graph"))
        self.store = store
        self.shards: list = []
        # SAC bundles of sac.utd critic updates, or one step of the kept pre-training loss
        # (offline_continued / offline_retained), per env step
        self.online_loss = self.plan.online_loss
        self.per_step = self.plan.updates_per_env_step
        self.limiter = UtdLimiter(self.per_step, self.plan.first_update_step, self.plan.online_steps,
                                  c.runtime.utd_slack, rollout_slack(c, self.plan))
        self._lock = threading.Lock()  # limiter, shared with the workers' grant calls
        # the workers' side of the limiter; after_bundle wakes grant calls waiting for room
        self.grants = GrantDesk(self.limiter, self._lock, c.runtime.grant_quantum)
        self._agent_lock = threading.Lock()  # agent: one bundle or one state_dict at a time
        self._finish = threading.Event()
        self.rng = np.random.default_rng(c.run.seed + 17)
        self.offline: DeviceSampler | None = None
        self.ratio = self.plan.offline_ratio
        self._bundle = None
        self._group = None  # runtime.replay_groups: G bundles per call (FusedBundles.group)
        self.version = -1
        self.bundles = 0
        self.bundle_groups = 0  # calls that ran a whole sample request's bundles (replay_groups)
        self.env_steps = 0  # rows in the shards, as last seen by the learner
        self.last_info: dict[str, float] = {}
        self.train_seconds = 0.0
        self.step_hist = Histogram(SECONDS_BUCKETS)
        self.publish_hist = Histogram(SECONDS_BUCKETS)
        self.time_split = dict.fromkeys(
            ("limiter_wait", "sample_wait", "assemble_to_device", "update_launch", "publish"), 0.0)
        # ray.put + store call of each version on a thread of its own (weights.WeightPublisher)
        self._publisher = WeightPublisher(store, self.publish_hist)
        # the training loop reads weights and losses off the GPU without waiting for it (hostcopy.py)
        self._weights_copy = HostCopy(self.device)
        self._info_copy = HostCopy(self.device)
        self.bundle_timer = BundleTimer(self.device)  # device time of sampled bundles (GPU-bound?)
        self.feed: ReplayFeed | None = None
        self._train_start = (0.0, 0)  # (perf_counter, critic updates) when train() began
        self.stage = StageRecord()  # build / pre-training progress, read by progress() during prepare
        self.set_shards(shards or [])

    def progress(self) -> dict[str, Any]:
        """The build / pre-training progress of a prepare() that may still be running (progress.py)."""
        return self.stage.read()

    def set_shards(self, shards: list) -> None:
        """Replay shard handles (the driver places shards next to the learner, after creating it)."""
        self.shards = list(shards)

    # ------------------------------------------------------------------ stage 1
    def prepare(self, pretrain: bool = True, resume: bool = False) -> dict[str, Any]:
        """Pretrain or load the pre-trained agent (when the method asks) and load offline data for
        retention baselines. A job resumed from an online checkpoint passes pretrain=False: only the
        offline sampler returns. `resume` (a job resumed before its first online checkpoint):
        reuse checkpoints/pretrained.pt when pre-training had finished, else continue from
        checkpoints/pretrain-partial.pt (pretrain.checkpoint_every) when there is one."""
        c, t0, out = self.cfg, time.time(), {"pretrain_steps": 0}
        warm, pretrains = pretrain and self.plan.pretrained, pretrain and self.plan.pretrains
        ckpt_dir = Path(c.run.run_dir) / "checkpoints"
        finished = pretrains and resume and (ckpt_dir / "pretrained.pt").is_file()
        if (pretrains and not finished) or self.ratio > 0:
            dataset = job.load_offline_dataset(c, self.task, progress=False, report=self.stage.build_event)
            sampler = DeviceSampler(training_arrays(dataset, self.task, c.sac.discount), self.device,
                                    c.run.seed)
            out["dataset"] = dataset.source
            if pretrains and not finished:
                self.stage.start("pretrain", c.pretrain.steps)
                timing: dict[str, float] = {}
                with self._agent_lock:
                    first = pretrain_agent(self.agent, sampler, c, on_log=lambda s, i: (
                        out.update(last=i), self.stage.pretrain_log(s, i)), progress=self.stage.add,
                        mode=self.mode, partial=ckpt_dir / PARTIAL, resume=resume, timing=timing,
                        note=lambda text: self.stage.set(note=text))
                # the step's kind and its rates (pretrain.StepClock: the loop, its first step, the steady
                # rate): `seconds` also holds the dataset's load or build
                out["pretrain_step"] = offline_step_kind(c.pretrain.algo, self.mode)
                out["pretrain_steps"] = c.pretrain.steps
                out.update({f"pretrain_{k}": v for k, v in timing.items()})
                if first > 1:
                    out["resumed_at_step"] = first
            self.offline = sampler if self.ratio > 0 else None  # WSRL drops the offline data here
        if finished:
            job.load_agent(ckpt_dir / "pretrained.pt", self.agent)
            out["loaded"] = str(ckpt_dir / "pretrained.pt")
        if warm and c.pretrain.checkpoint:
            job.load_agent(c.pretrain.checkpoint, self.agent)
            out["loaded"] = c.pretrain.checkpoint
        out["seconds"] = time.time() - t0
        return out

    # ------------------------------------------------------------------ limiter
    def acquire_env_steps(self, n: int, multiple: int = 1, blocked_s: float = 0.0) -> int:
        """Rollout side, never waits: env steps a worker may take now (0 = wait, -1 = budget spent)."""
        granted = self.grants.acquire(n, multiple, blocked_s)
        self.process_stats.count_grant(granted)
        return granted

    def wait_for_env_steps(self, n: int, multiple: int = 1, wait_s: float = 0.1) -> list:
        """Rollout side, waits (runtime.grant_wait_s > 0): a refused call sleeps here until this
        learner's updates make room or `wait_s` passes (grants.GrantDesk). Returns [granted (0
        after wait_s, -1 = budget spent), seconds waited]."""
        granted, waited = self.grants.wait_for(n, multiple, wait_s)
        self.process_stats.count_grant(granted)
        return [granted, waited]

    def begin_online(self, env_steps: int) -> None:
        """Align the rollout budget with what the shards hold (after warmup or a resume)."""
        with self._lock:
            self.limiter.sync_env_steps(env_steps)
            self.env_steps = int(env_steps)
            self.grants.wake_all()  # the granted count moved: let waiting workers look again

    def rows_lost(self, n: int) -> None:
        """`n` rows the shards held died with a restarted replay shard (replay.py): they leave the
        granted count (handed out again, so the job still ends with online_steps rows) and the
        learner's view of the shards (its next poll reads the true count; max() kept the old one)."""
        with self._lock:
            self.limiter.granted = max(0, self.limiter.granted - int(n))
            self.env_steps = max(0, self.env_steps - int(n))
            if self.feed is not None:
                self.feed.env_steps = max(0, self.feed.env_steps - int(n))
            self.grants.wake_all()

    def finish(self) -> None:
        """Rollout is over: run the updates still owed, then return from train()."""
        self._finish.set()

    # ------------------------------------------------------------------ training
    @property
    def online_rows(self) -> int:
        """Replay rows per bundle: utd * batch_size minus the offline share (retention baselines)."""
        n = self.plan.rows_per_env_step
        return n - (int(round(n * self.ratio)) if self.offline is not None else 0)

    def _poll_env_steps(self) -> None:
        steps = ray.get([s.env_steps.remote() for s in self.shards])
        self.env_steps = max(self.env_steps, sum(steps))

    def _wait_for_room(self) -> bool:
        """Block until the limiter allows a bundle; False once finish() is set and, with the shard
        counts read after it, no whole bundle is still owed."""
        t0, waited, fresh, polls = time.perf_counter(), False, False, 0
        while True:
            with self._lock:
                avail = self.limiter.bundles_available(self.env_steps, self.per_step)
                owed = self.limiter.updates_due(self.env_steps) - self.limiter.updates
            if avail > 0:
                if waited:
                    with self._lock:
                        self.limiter.add_blocked("learner", time.perf_counter() - t0)
                return True
            if fresh and owed < self.per_step:
                return False
            finishing = self._finish.is_set()
            if waited:  # poll the shards at up to 1 kHz, backing off to 100 Hz while starved
                time.sleep(min(0.01, 0.001 * 2 ** min(polls, 4)))
            polls += waited
            waited = True
            self._poll_env_steps()
            fresh = finishing

    def make_feed(self) -> ReplayFeed:
        """This learner's sampling (feed.py): G bundles per request and `prefetch_depth` requests in
        flight; without prefetch, one bundle's rows requested right before each bundle (lock-step)."""
        rt = self.cfg.runtime
        sizes = [p["size"] for p in ray.get([s.sample.remote(0) for s in self.shards])]
        return ReplayFeed(self.shards, self.online_rows, self.obs_dim, self.act_dim, self.device,
                          self.rng, bundles_per_request=rt.sample_bundles if rt.prefetch else 1,
                          depth=rt.prefetch_depth if rt.prefetch else 0, shard_sizes=sizes,
                          mc_returns=self.plan.mc_returns, offline=self.offline,
                          offline_rows=self.plan.rows_per_env_step - self.online_rows)

    def next_batch(self) -> Batch:
        """The next bundle's batch (online rows from the feed, then offline rows for retention
        baselines: the feed mixes them per request); adds the wait and the unpacking to the time split."""
        return self._sampled(self.feed.next)

    def next_group(self) -> list[Batch] | None:
        """runtime.replay_groups: the feed's next request as G bundles, when a whole request is at
        hand and the limiter allows all G now; None otherwise (the loop then runs one bundle)."""
        with self._lock:
            avail = self.limiter.bundles_available(self.env_steps, self.per_step)
        if avail < self.feed.group or not self.feed.at_request_start():
            return None
        return self._sampled(self.feed.next_group)

    def _sampled(self, take):
        t0 = time.perf_counter()
        waited = self.feed.wait_seconds
        out = take()
        self.env_steps = max(self.env_steps, self.feed.env_steps)
        wait = self.feed.wait_seconds - waited
        self.time_split["sample_wait"] += wait
        self.time_split["assemble_to_device"] += time.perf_counter() - t0 - wait
        return out

    def after_bundle(self, info: dict[str, torch.Tensor], n: int = 1) -> None:
        """Bookkeeping once `n` bundles are queued (caller holds the agent lock): counters, limiter,
        and every 20 bundles a loss snapshot copied to the host without waiting for the GPU."""
        first = self.bundles + 1
        self.bundles += n
        if any(b % 20 == 1 for b in range(first, self.bundles + 1)):
            self._info_copy.start(list(info.values()), tag=list(info.keys()))
        with self._lock:
            self.limiter.record_updates(self.per_step * n)
            self.grants.wake()

    def _make_update_fn(self, example: Batch):
        """One env step's update: a SAC bundle, or a step of the kept pre-training loss (the
        offline_* baselines: CQL / IQL / Cal-QL, as local.py runs them online)."""
        c = self.cfg
        if self.online_loss == "sac":
            return make_bundle_fn(self.agent, c.sac, self.mode, example=example, matmul_dtype=self.matmul_dtype)
        return make_offline_step_fn(self.agent, self.online_loss, c.sac, c.pretrain.cql, c.pretrain.iql,
                                    self.mode, example=example)

    # ------------------------------------------------------------------ the actor's loop, per seed
    def begin_train(self, t_start: float) -> None:
        """Before learneractor.LearnerActor.train's loop: the rate's origin and a fresh feed."""
        self._train_start = (t_start, self.limiter.updates)
        self.feed = self.make_feed()
        self._group = None  # captured on the feed's buffers: a new feed needs a new one

    def update_fn(self, example: Batch):
        """This seed's one-env-step update fn (_make_update_fn), built on first use: CUDA-graph
        capture needs a batch (caller holds the agent lock)."""
        if self._bundle is None:
            self._bundle = self._make_update_fn(example)
        return self._bundle

    def run_group(self, group: list[Batch]) -> dict[str, torch.Tensor]:
        """runtime.replay_groups: a whole sample request's G bundles as one call (one CUDA graph
        replay on a GPU: algo/fused_bundles.py FusedBundles.group); update fns without one loop
        (caller holds the agent lock)."""
        if self._group is None:
            bundle = self.update_fn(group[0])
            self._group = bundle.group(group) if hasattr(bundle, "group") else lambda bs: [bundle(b) for b in bs][-1]
        self.bundle_groups += 1
        return self._group(group)

    def end_train(self, t_start: float) -> None:
        """After the loop: every weight version out, the loop's wall time counted."""
        self.feed.close()
        with self._agent_lock:
            self.drain_publishing()
        self.train_seconds += time.perf_counter() - t_start
