"""Multi-seed job (`run.seeds: [a, b, ...]`): S seeds of one config, ONE learner, S worker groups.

Each seed is a SeedGroup: a seedjob.Job of that seed's single-seed config (run.seed = the seed) with
its own WeightStore, replay shards, rollout Supervisor (runtime.num_workers workers, env seeds derived
from the seed), Monitor, metrics.jsonl, evaluations and checkpoints, all under <run_dir>/seed-<s>/
(the layout of a single-seed run dir, report included). Its learner is a LearnerView onto the shared
MultiSeedLearner actor (runtime/multilearner.py), which steps every seed together (lock-step: the
slowest group gates the others). The top run dir holds config.yaml and run.json listing the seeds;
the Prometheus exporter serves every seed's snapshot under a `seed` label. Warmup is per group (K
env steps each, concurrently); `wsrl-dist scale --workers N` gives EVERY group N workers.
Checkpoints are taken for all seeds at once (same multi-seed step: lock-step needs equal counts on
resume); `launch --resume` restores every seed from them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from wsrl_dist import job
from wsrl_dist.config import RunConfig, from_dict
from wsrl_dist.ops.report import MetricsLog, write_report
from wsrl_dist.plan import RunPlan
from wsrl_dist.runtime import checkpoint as ckpt
from wsrl_dist.runtime import stop
from wsrl_dist.runtime.control import controller_name, make_controller
from wsrl_dist.runtime.grants import learner_actor_class
from wsrl_dist.runtime.jobtools import (
    _on_this_node,
    _port_note,
    _ray_address,
    _start_metrics,
    check_learner_running,
    learner_died,
    scale_requests,
)
from wsrl_dist.runtime.multilearner import LearnerView, MultiSeedLearner
from wsrl_dist.runtime.progress import announce_metrics
from wsrl_dist.runtime.seedjob import Job
from wsrl_dist.runtime.supervisor import Supervisor
from wsrl_dist.runtime.weights import WeightStore

log = logging.getLogger(__name__)


def seed_dir_name(seed: int) -> str:
    return f"seed-{seed}"


def seed_configs(cfg: RunConfig) -> list[RunConfig]:
    """One single-seed config per entry of run.seeds: run.seed = it, run dir <run_dir>/seed-<s>;
    `{seed}` in pretrain.checkpoint becomes the seed."""
    out = []
    for seed in cfg.run.seeds:
        d = cfg.to_dict()
        d["run"].update(seed=seed, seeds=[], run_dir=str(Path(cfg.run.run_dir) / seed_dir_name(seed)))
        if d["pretrain"]["checkpoint"]:  # "{seed}" names each seed's own pre-trained agent (study.py)
            d["pretrain"]["checkpoint"] = d["pretrain"]["checkpoint"].replace("{seed}", str(seed))
        out.append(from_dict(d))
    return out


class SeedGroup(Job):
    """One seed of a multi-seed job. MultiSeedJob creates its actors and runs its stages; the Job
    methods it inherits (ticks, evaluations, checkpoints, final records) act on this seed only."""

    def __init__(self, cfg: RunConfig, command: str, parent: MultiSeedJob):
        # seed-<s>/: config.yaml, run.json; monitor and counters; the job's plan for this seed
        super().__init__(cfg, command, announce=False, plan=parent.plan.for_seed(cfg.run.seed))
        self.parent = parent
        self.status_dict: dict[str, Any] = {}

    def _push_status(self) -> None:  # the parent pushes every group's status as one
        self.status_dict = self.monitor.status()

    def _maybe_checkpoint(self, env_steps: int) -> None:  # the parent checkpoints all seeds at once
        return None

    def _wait(self, refs: list, phase: str) -> None:  # keep every group's monitor ticking
        while refs:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=self.rt.monitor_interval)
            self.parent._tick(phase)


class MultiSeedJob:
    def __init__(self, cfg: RunConfig, command: str, resume: bool = False, plan: RunPlan | None = None):
        self.plan = plan = plan if plan is not None else RunPlan.of(cfg)
        self.cfg, self.rt, self.seeds = cfg, cfg.runtime, list(plan.seeds)
        if cfg.run.run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            seeds = "-".join(map(str, self.seeds))
            cfg.run.run_dir = job.default_run_dir(cfg, f"{cfg.task.name}-{cfg.finetune.method}-seeds{seeds}-{stamp}")
        self.run_dir = job.prepare_run_dir(cfg, command, extra={
            "runtime": "ray", "utd_target": plan.updates_per_env_step, "seeds": self.seeds,
            "seed_dirs": [seed_dir_name(s) for s in self.seeds]}, plan=plan)
        job.update_run_json(self.run_dir, seed=None)  # run.seed is not one of the seeds trained
        with contextlib.suppress(OSError):  # each seed-<s>/ has its own checkpoints/; none at the top
            os.rmdir(self.run_dir / "checkpoints")
        self.groups = [SeedGroup(c, command, self) for c in seed_configs(cfg)]
        if resume:  # no checkpoint at all: a fresh launch that continues any pre-training checkpoints
            for g, path in zip(self.groups, common_checkpoints([g.run_dir for g in self.groups])):
                g.resume_from, g.resuming = path, True
        self.next_checkpoint = cfg.run.checkpoint_every
        for g in self.groups:
            job.update_run_json(g.run_dir, multiseed_run=str(self.run_dir), seeds=self.seeds)
        self.snapshot: dict[str, Any] = {}
        self.phase = "pretrain"
        self.last_tick = 0.0

    # ------------------------------------------------------------------ actors
    def _create_actors(self) -> None:
        here = _on_this_node()
        stores = [ray.remote(WeightStore).options(num_cpus=0, scheduling_strategy=here).remote()
                  for _ in self.groups]
        opts = self.groups[0]._learner_options()
        opts["max_concurrency"] = 4 + 4 * len(self.groups)  # every group's driver-side calls
        cls = learner_actor_class(MultiSeedLearner, self.groups[0].rt.num_workers, len(self.groups))
        self.learner = cls.options(**opts).remote(
            [g.cfg_dict for g in self.groups], stores, [g.plan for g in self.groups])
        self.learner_node = ray.get(self.learner.ping.remote())
        for i, (g, store) in enumerate(zip(self.groups, stores)):
            g.store, g.learner, g.learner_node = store, LearnerView(self.learner, i), self.learner_node
            g.shards = g._make_shards(self.learner_node)
            ray.get(g.learner.set_shards.remote(g.shards))
            g.sup = Supervisor(g.cfg_dict, g.shards, g.store, g.learner, g.monitor, g.plan)
        self.controller = make_controller(self.run_dir)

    def _teardown(self) -> None:
        for g in self.groups:
            if hasattr(g, "sup"):
                g.sup.kill_all()
            for actor in [*getattr(g, "shards", []), getattr(g, "store", None)]:
                if actor is not None:
                    ray.kill(actor, no_restart=True)
        for actor in (getattr(self, "learner", None), getattr(self, "controller", None)):
            if actor is not None:
                ray.kill(actor, no_restart=True)

    # ------------------------------------------------------------------ monitor loop
    def _tick(self, phase: str, every: float = 0.0) -> None:
        """Tick every group (each writes its own metrics.jsonl), then export and push the status."""
        if time.time() - self.last_tick < every:
            return
        self.last_tick, self.phase = time.time(), phase
        for g in self.groups:
            g._tick(phase)
        self.snapshot = {str(g.cfg.run.seed): g.snapshot for g in self.groups}
        self.controller.set_status.remote(self.status())
        steps = min(g.monitor.view.get("env_steps", 0) for g in self.groups)
        every_s = self.rt.checkpoint_every_s  # also by time (seedjob.Job._maybe_checkpoint)
        timed = every_s and time.time() - self.groups[0].last_checkpoint_t >= every_s
        if phase == "online" and (steps >= self.next_checkpoint or timed):
            while self.next_checkpoint <= steps:
                self.next_checkpoint += self.cfg.run.checkpoint_every
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Every seed's checkpoint from the same multi-seed step (a kill between two seeds' saves
        leaves an older common one: common_checkpoints)."""
        states = ray.get(self.learner.state_dicts.remote())
        for g, state in zip(self.groups, states):
            g.c["next_checkpoint"] = self.next_checkpoint
            g._checkpoint(state)

    def _stopped(self, exc: KeyboardInterrupt) -> stop.JobStopped:
        """Interrupted: online, every seed's checkpoint from the same multi-seed step (what resume
        continues from; chunks in flight are lost and handed out again); earlier, the newest
        checkpoints stand (pre-training: its partial checkpoint; warmup: warms up again)."""
        first = self.groups[0]
        with stop.shielded():
            try:
                if self.phase == "online":
                    self._checkpoint()
                    latest = ckpt.latest(first.run_dir)
                    step = json.loads((latest / "meta.json").read_text())["counters"]["env_steps"]
                elif self.phase == "warmup":
                    step = min(g.monitor.view.get("env_steps", 0) for g in self.groups)
                else:
                    step = stop.pretrain_step(first.run_dir)
            except (RayError, OSError) as e:  # actors already gone: the newest checkpoints stand
                log.error("no checkpoint written at the stop: %s", e)
                step = 0
        return stop.JobStopped(self.phase, step, self.run_dir, stop.signum_of(exc))

    def status(self) -> dict[str, Any]:
        """What `wsrl-dist status` prints: totals over the seeds plus each seed's own status."""
        per = {str(g.cfg.run.seed): g.status_dict for g in self.groups}
        total = {k: sum(st.get(k) or 0 for st in per.values())
                 for k in ("env_steps", "critic_updates", "workers_alive")}
        return {"phase": self.phase, "seeds": per, **total,
                "workers_target_per_seed": self.groups[0].c["workers_target"],
                "learner_node": self.learner_node, "updated_at": time.time()}

    # ------------------------------------------------------------------ stages
    def _prepare(self) -> None:
        for g in self.groups:  # one after another, each with its own torch RNG stream
            g._prepare()

    def _warmup(self) -> None:
        """Every group collects exactly K env steps into its own shards, all groups at once; the
        learner is idle. Per group this is seedjob.Job._warmup's loop."""
        K, t0 = self.plan.warmup_steps, time.time()
        while True:  # process start-up: every worker of every group, or a minute
            ok = True
            for g in self.groups:
                g.sup.supervise()
                states = [s.state for s in g.sup.slots.values()]
                ok &= "idle" in states and ("starting" not in states or time.time() - t0 > 60)
            if ok:
                break
            time.sleep(0.1)
            self._tick("warmup", every=self.rt.monitor_interval)
        start_s, t0 = time.time() - t0, time.time()
        pending: list[list] = [[] for _ in self.groups]
        walls = [0.0] * len(self.groups)
        while True:
            busy = False
            for i, g in enumerate(self.groups):
                g.sup.supervise()
                pending[i] = [r for r in pending[i] if not ray.wait([r], timeout=0)[0]]
                if pending[i] or any(s.state == "running" for s in g.sup.slots.values()):
                    busy = True  # a finished share is handed back by the next supervise()
                    continue
                left = K - g._env_steps()
                if left > 0:
                    pending[i], busy = g.sup.collect(left), True
                elif not walls[i]:
                    walls[i] = time.time() - t0
            if not busy:
                break
            refs = [r for p in pending for r in p]
            if refs:
                ray.wait(refs, num_returns=1, timeout=self.rt.monitor_interval)
            else:  # every worker of these groups is still (re)starting
                time.sleep(self.rt.monitor_interval)
            self._tick("warmup", every=self.rt.monitor_interval)
        for g, wall in zip(self.groups, walls):
            lrn = ray.get(g.learner.stats.remote())
            g.stages["workers_start_s"] = start_s
            g.stages["warmup"] = {"env_steps": g._env_steps(), "critic_updates": lrn["critic_updates"],
                                  "wall_s": wall}
            job.update_run_json(g.run_dir, stages=g.stages)
            if K > 0:
                g._start_eval("after_warmup")

    def _online(self) -> None:
        total, t0 = self.plan.online_steps, time.time()
        for g in self.groups:  # rows lost in the warmup: counted, not handed out again
            g._count_shard_restarts(ray.get([s.stats.remote() for s in g.shards]), online=False)
            ray.get(g.learner.begin_online.remote(g._env_steps()))  # before any grant
        train_ref = self.learner.train.remote()
        for g in self.groups:
            g.sup.start_runs()
        done = [False] * len(self.groups)
        while not all(done):
            check_learner_running(train_ref)
            for n in scale_requests(self.controller):  # per group: N workers in every seed's group
                for g in self.groups:
                    g.c["workers_target"] = n
                    g.sup.scale(n)
            for i, g in enumerate(self.groups):
                g.sup.supervise()
                done[i] = done[i] or g._rollout_complete(total)
            self._tick("online")
            time.sleep(self.rt.monitor_interval)
        self.learner.finish.remote()
        self.groups[0]._wait([train_ref], "online")
        finals = ray.get(train_ref)
        for g, final in zip(self.groups, finals):
            g.stages["online"] = {"wall_s": time.time() - t0, "bundles": final["bundles"],
                                  "offline_rows_per_bundle": final["offline_rows_per_bundle"]}

    def run(self) -> Path:
        for g in self.groups:
            g.log = MetricsLog(g.run_dir)
        server = None
        try:
            self._create_actors()
            server = _start_metrics(lambda: self.snapshot, self.rt, label="seed")
            url = f"http://{server.host}:{server.port}/metrics"
            for path in [self.run_dir, *(g.run_dir for g in self.groups)]:
                job.update_run_json(path, metrics_url=url, controller=controller_name(str(self.run_dir)),
                                    ray_address=_ray_address())
            announce_metrics(url, note=_port_note(server, self.rt))
            if self.groups[0].resume_from is not None:
                for g in self.groups:
                    g._restore()
                    g.sup.scale(g.c["workers_target"])
                self.next_checkpoint = self.groups[0].c["next_checkpoint"]
                job.update_run_json(self.run_dir, resumed_from={
                    str(g.cfg.run.seed): g.resume_from.name for g in self.groups})
            else:
                self._prepare()
                for g in self.groups:
                    g.sup.scale(self.rt.num_workers)
                self._warmup()
            self._online()
            for g in self.groups:
                g._finish_records()
            self._tick("done")
            job.update_run_json(self.run_dir, finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                                per_seed={str(g.cfg.run.seed): _summary(g.run_dir) for g in self.groups})
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through stop.signals_raise (driver)
            raise self._stopped(e) from None
        except RayActorError:
            if getattr(self, "learner", None) is None:
                raise
            newest = common_checkpoints([g.run_dir for g in self.groups])[0]
            died = learner_died(self.learner, self.run_dir, self.phase,
                                min(g.monitor.view.get("env_steps", 0) for g in self.groups),
                                sum(g.monitor.view.get("critic_updates", 0) for g in self.groups),
                                newest.name if newest else None)
            if died is None:
                raise
            raise died from None
        finally:
            if server is not None:
                server.stop()
            self._teardown()
            for g in self.groups:
                g.log.close()
        for g in self.groups:
            write_report(g.run_dir)
        job.sync_run_dir(self.cfg)
        return self.run_dir


def common_checkpoints(run_dirs: list[Path]) -> list[Path | None]:
    """Per seed run dir, its newest checkpoint of the newest multi-seed step every seed has one of
    (all None when a seed has none). Raises when every seed has some but they share no step."""
    found = []
    for d in run_dirs:
        points = {}
        for path in sorted((Path(d) / "checkpoints").glob("step_*")):
            if ckpt.problem(path) is None:  # complete: DONE marker and file sizes
                points[json.loads((path / "meta.json").read_text())["counters"]["bundles"]] = path
        found.append(points)
    if not all(found):  # nothing saved, or killed inside the first multi-seed checkpoint (some seeds
        return [None] * len(run_dirs)  # saved, not all): a fresh launch, as with none at all
    common = set.intersection(*(set(p) for p in found))
    if not common:
        raise RuntimeError(f"the seeds of {Path(run_dirs[0]).parent} have no checkpoint of the same "
                           f"step in common ({[sorted(p) for p in found]} bundles): cannot resume")
    step = max(common)
    return [p[step] for p in found]


def _summary(run_dir: Path) -> dict[str, Any]:
    info = json.loads((Path(run_dir) / "run.json").read_text())
    return {k: info.get(k) for k in ("env_steps", "critic_updates", "weights_version", "worker_restarts",
                                     "wall_time_s")}

