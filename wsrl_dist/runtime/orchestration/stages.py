"""The Job: creates the actors of the data path and runs pretrain -> warmup -> online for S >= 1 seeds.

Actors: ONE learner (learneractor.LearnerActor: GPU when the cluster has one; hosts every seed's UTD
limiter) and per seed a SeedGroup (runtime/orchestration/seedgroup.py) with its own WeightStore, replay shards
(placed on the learner's node), RolloutWorker x N (max_restarts), Monitor, metrics.jsonl, evaluations
and checkpoints; one JobController (named, for scale / status from other processes). A ~1 s monitor
loop ticks every group (stats, Prometheus, metrics.jsonl, evaluations), checkpoints, restarts or
replaces dead workers and applies scale requests. driver.launch / driver.resume start it.

One seed (run.seed, or run.seeds of one entry) is S = 1: the group's run dir is the run dir (config.yaml,
run.json, metrics.jsonl, checkpoints/, report: local.py's layout), `wsrl-dist status` shows its status
and Prometheus its metrics unlabelled, and the learner runs that seed's own loop (its update fn,
runtime.replay_groups). Two or more (`run.seeds: [a, b, ...]`): <run_dir>/seed-<s>/ holds what a
one-seed run dir holds, the top run dir config.yaml and run.json listing the seeds; the learner
steps every seed together (lock-step: the slowest group gates the others); status and Prometheus
carry every seed (a `seed` label); `wsrl-dist scale --workers N` gives EVERY group N workers.
Checkpoints are taken for all seeds at once (the same step: lock-step needs equal counts on
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
from wsrl_dist.config import RunConfig
from wsrl_dist.errors import LearnerDied
from wsrl_dist.ops.report import MetricsLog, write_report
from wsrl_dist.plan import RunPlan
from wsrl_dist.runtime.datapath.grants import learner_actor_class
from wsrl_dist.runtime.datapath.learneractor import LearnerActor, LearnerView
from wsrl_dist.runtime.datapath.weights import WeightStore
from wsrl_dist.runtime.instrumentation.progress import announce_metrics
from wsrl_dist.runtime.orchestration import checkpoint as ckpt
from wsrl_dist.runtime.orchestration import stop
from wsrl_dist.runtime.orchestration.control import controller_name, make_controller
from wsrl_dist.runtime.orchestration.jobtools import (
    _on_this_node,
    _port_note,
    _ray_address,
    _start_metrics,
    check_learner_running,
    learner_died,
    scale_requests,
)
from wsrl_dist.runtime.orchestration.seedgroup import (
    SeedGroup,
    common_checkpoints,
    resume_points,
    seed_configs,
    seed_dir_name,
    summary,
)
from wsrl_dist.runtime.orchestration.supervisor import Supervisor
from wsrl_dist.runtime.orchestration.watchdog import Watchdogs

log = logging.getLogger(__name__)


class Job:
    """The job of a config, any number of seeds (module docstring); driver.launch / resume run it."""

    def __init__(self, cfg: RunConfig, command: str, resume: bool = False, force_config: bool = False,
                 plan: RunPlan | None = None):
        """`resume`: continue cfg.run.run_dir from its newest checkpoint(s) (resume_points; none at
        all: a fresh launch that continues any pre-training checkpoints). `force_config`: take one
        written by a config that hashes differently."""
        self.plan = plan = plan if plan is not None else RunPlan.of(cfg)
        self.cfg, self.rt, self.seeds = cfg, cfg.runtime, list(plan.seeds)
        points = resume_points(cfg, self.seeds, force_config) if resume else None  # before any write
        if len(self.seeds) == 1:  # one seed: its group's run dir is the run dir
            self.groups = [SeedGroup(cfg, command, self, plan, announce=True)]
            self.run_dir = self.groups[0].run_dir
        else:
            if cfg.run.run_dir is None:
                stamp, seeds = time.strftime("%Y%m%d-%H%M%S"), "-".join(map(str, self.seeds))
                cfg.run.run_dir = job.default_run_dir(cfg, f"{cfg.task.name}-{cfg.finetune.method}-seeds{seeds}-{stamp}")
            self.run_dir = job.prepare_run_dir(cfg, command, extra={
                "runtime": "ray", "utd_target": plan.updates_per_env_step, "seeds": self.seeds,
                "seed_dirs": [seed_dir_name(s) for s in self.seeds]}, plan=plan)
            job.update_run_json(self.run_dir, seed=None)  # run.seed is not one of the seeds trained
            with contextlib.suppress(OSError):  # each seed-<s>/ has its own checkpoints/; none at the top
                os.rmdir(self.run_dir / "checkpoints")
            self.groups = [SeedGroup(c, command, self, plan.for_seed(c.run.seed), label=f"seed {c.run.seed}")
                           for c in seed_configs(cfg)]
            for g in self.groups:
                job.update_run_json(g.run_dir, multiseed_run=str(self.run_dir), seeds=self.seeds)
        for g, point in zip(self.groups, points or []):
            g.resuming = True  # no online checkpoint: pre-training continues from its own (learner.prepare)
            if isinstance(point, ckpt.Loaded):
                g.resume_from, g.loaded = point.path, point
            else:
                g.resume_from = point
        self.next_checkpoint = cfg.run.checkpoint_every
        self.snapshot: dict[str, Any] = {}
        self.phase = self.stage = "pretrain"  # phase: of the last tick (status); stage: the one running
        self.last_tick = 0.0
        self.learner_node: str | None = None

    # ------------------------------------------------------------------ actors
    def _create_actors(self) -> None:
        here = _on_this_node()
        stores = [ray.remote(WeightStore).options(num_cpus=0, scheduling_strategy=here).remote()
                  for _ in self.groups]
        cls = learner_actor_class(LearnerActor, self.rt.num_workers, len(self.groups))
        self.learner = cls.options(**self._learner_options()).remote(
            [g.cfg_dict for g in self.groups], stores, [g.plan for g in self.groups])
        self.learner_node = ray.get(self.learner.ping.remote())
        for i, (g, store) in enumerate(zip(self.groups, stores)):
            g.store, g.learner, g.learner_node = store, LearnerView(self.learner, i), self.learner_node
            g.shards = g._make_shards(self.learner_node)
            ray.get(g.learner.set_shards.remote(g.shards))
            g.sup = Supervisor(g.cfg_dict, g.shards, g.store, g.learner, g.monitor, g.plan)
        self.controller = make_controller(self.run_dir)

    def _learner_options(self) -> dict[str, Any]:
        # Losing a rollout node must not take the job's state along: the stores (no CPU, metadata
        # only) live on the driver's node, shards on the learner's (hard affinity; Ray's soft
        # affinity spills zero-CPU actors off a node whose CPUs are taken). A CPU learner prefers
        # the driver's node; a GPU learner goes where the GPU is.
        gpus = self.rt.learner_gpus
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and self.cfg.run.device != "cpu" else 0
        # threads for every group's driver-side calls (8 with one seed)
        opts: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus, "max_concurrency": 4 + 4 * len(self.groups)}
        if not gpus:
            opts["scheduling_strategy"] = _on_this_node(soft=True)
        return opts

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
        """Tick every group (each writes its own metrics.jsonl), export and push the status, and
        checkpoint every run.checkpoint_every env steps (the slowest seed's) or runtime.checkpoint_every_s."""
        if time.time() - self.last_tick < every:
            return
        self.last_tick, self.phase = time.time(), phase
        for g in self.groups:
            g._tick(phase)
        self._push_status()
        steps = min(g.monitor.view.get("env_steps", 0) for g in self.groups)
        every_s = self.rt.checkpoint_every_s  # also by time: bounds what a dead learner loses
        timed = every_s and time.time() - self.groups[0].last_checkpoint_t >= every_s
        if phase == "online" and (steps >= self.next_checkpoint or timed):
            while self.next_checkpoint <= steps:
                self.next_checkpoint += self.cfg.run.checkpoint_every
            self._checkpoint()

    def _push_status(self, wait: bool = False) -> None:
        """`wait`: until the controller holds it (the ticks' pushes are not waited for)."""
        one = len(self.groups) == 1  # one seed: its snapshot unlabelled (_start_metrics in run)
        self.snapshot = self.groups[0].snapshot if one else {str(g.cfg.run.seed): g.snapshot for g in self.groups}
        ref = self.controller.set_status.remote(self.status())
        if wait:
            ray.get(ref)

    def _checkpoint(self) -> Path:
        """Every seed's checkpoint from the same learner step (a kill between two seeds' saves
        leaves an older common one: common_checkpoints); returns the first seed's."""
        states = ray.get(self.learner.state_dicts.remote())
        paths = []
        for g, state in zip(self.groups, states):
            g.c["next_checkpoint"] = self.next_checkpoint
            paths.append(g._checkpoint(state))
        return paths[0]

    def status(self) -> dict[str, Any]:
        """What `wsrl-dist status` prints: one seed's status as it is; for several, totals over the
        seeds plus each seed's own status."""
        if len(self.groups) == 1:
            return {**self.groups[0].status_dict, "learner_node": self.learner_node}
        per = {str(g.cfg.run.seed): g.status_dict for g in self.groups}
        total = {k: sum(st.get(k) or 0 for st in per.values())
                 for k in ("env_steps", "critic_updates", "workers_alive")}
        return {"phase": self.phase, "seeds": per, **total,
                "workers_target_per_seed": self.groups[0].c["workers_target"],
                "learner_node": self.learner_node, "updated_at": time.time()}

    # ------------------------------------------------------------------ stop and learner death
    def _stopped(self, exc: KeyboardInterrupt) -> stop.JobStopped:
        """Interrupted: checkpoint what this stage can resume from; the JobStopped to raise. Online,
        every seed's checkpoint now, from the same step (the workers' chunks in flight are lost;
        resume hands those steps out again); in pre-training its partial checkpoint (every
        pretrain.checkpoint_every steps); in warmup, resume warms up again from checkpoints/pretrained.pt."""
        first = self.groups[0]
        with stop.shielded():
            try:
                if self.stage == "online":
                    path = self._checkpoint()
                    step = json.loads((path / "meta.json").read_text())["counters"]["env_steps"]
                elif self.stage == "warmup":
                    step = min(g._env_steps() for g in self.groups)
                else:
                    step = stop.pretrain_step(first.run_dir)
            except (RayError, OSError, AttributeError) as e:  # actors gone or never made: the newest stands
                log.error("no checkpoint written at the stop: %s", e)
                latest = ckpt.latest(first.run_dir)
                step = json.loads((latest / "meta.json").read_text())["counters"]["env_steps"] if latest else None
                return stop.JobStopped(self.stage, step, self.run_dir, stop.signum_of(exc), saved=False)
        return stop.JobStopped(self.stage, step, self.run_dir, stop.signum_of(exc))

    def _learner_died(self) -> LearnerDied | None:
        """After an actor error: LearnerDied if the learner is what died, else None."""
        if getattr(self, "learner", None) is None:
            return None
        steps = []
        for g in self.groups:
            try:
                steps.append(g._env_steps())
            except (RayError, AttributeError):
                steps.append(g.monitor.view.get("env_steps"))
        try:
            newest = common_checkpoints([g.run_dir for g in self.groups])[0]
        except RuntimeError:
            newest = None
        return learner_died(self.learner, self.run_dir, self.stage, min((s for s in steps if s is not None),
                                                                          default=None),
                            sum(g.monitor.view.get("critic_updates", 0) for g in self.groups),
                            newest.name if newest else None)

    # ------------------------------------------------------------------ stages
    def _prepare(self) -> None:
        for g in self.groups:  # one after another, each with its own torch RNG stream
            g._prepare()

    def _warmup(self) -> None:
        """Every group collects exactly K env steps into its own shards, all groups at once; the
        learner is idle. Shares lost with a dead worker are handed out again until the shards hold K."""
        K, t0 = self.plan.warmup_steps, time.time()
        while True:  # process start-up: give every worker a share if it comes up within a minute
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
        dogs = Watchdogs(self.groups, self.rt.stall_timeout_s)
        while True:
            busy = False
            for i, g in enumerate(self.groups):
                g.sup.supervise()
                pending[i] = [r for r in pending[i] if not ray.wait([r], timeout=0)[0]]
                if not walls[i]:  # a group still warming up: no silent hang
                    dogs.check(i, "warmup", [not w for w in walls])
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
        dogs = Watchdogs(self.groups, self.rt.stall_timeout_s)
        while True:
            check_learner_running(train_ref)
            for i in range(len(self.groups)):  # lost grants back to the pool; no silent hang
                if not done[i]:
                    dogs.check(i, "online", [not d for d in done])
            for n in scale_requests(self.controller):  # N workers in every seed's group
                for g in self.groups:
                    g.c["workers_target"] = n
                    g.sup.scale(n)
            for i, g in enumerate(self.groups):
                g.sup.supervise()
                done[i] = done[i] or g._rollout_complete(total)
            if all(done):
                break
            self._tick("online")
            time.sleep(self.rt.monitor_interval)
        self.learner.finish.remote()
        # the learner runs the updates still owed: watched too, or a learner stuck there (say, on
        # a replay shard that never comes back) held the job silently for good
        while not ray.wait([train_ref], timeout=self.rt.monitor_interval)[0]:
            self._tick("online")
            for i in range(len(self.groups)):
                dogs.check(i, "online", [True] * len(self.groups))
        for g, final in zip(self.groups, ray.get(train_ref)):
            g.stages["online"] = {"wall_s": time.time() - t0, "bundles": final["bundles"],
                                  "bundle_groups": final["bundle_groups"],
                                  "offline_rows_per_bundle": final["offline_rows_per_bundle"]}

    def run(self) -> Path:
        for g in self.groups:
            g.log = MetricsLog(g.run_dir)
        server = None
        try:
            self._create_actors()
            server = _start_metrics(lambda: self.snapshot, self.rt, label=None if len(self.groups) == 1 else "seed")
            url = f"http://{server.host}:{server.port}/metrics"
            for path in dict.fromkeys([self.run_dir, *(g.run_dir for g in self.groups)]):
                job.update_run_json(path, metrics_url=url, controller=controller_name(str(self.run_dir)),
                                    ray_address=_ray_address())
            announce_metrics(url, note=_port_note(server, self.rt))
            if self.groups[0].resume_from is not None:
                self.stage = "online"
                for g in self.groups:
                    g._restore()
                    g.sup.scale(g.c["workers_target"])
                self.next_checkpoint = self.groups[0].c["next_checkpoint"]
                if len(self.groups) > 1:  # each seed's run.json has its own resumed_from
                    job.update_run_json(self.run_dir, resumed_from={
                        str(g.cfg.run.seed): g.resume_from.name for g in self.groups})
            else:
                self._prepare()
                for g in self.groups:
                    g.sup.scale(self.rt.num_workers)
                self.stage = "warmup"
                self._warmup()
            self.stage = "online"
            self._online()
            for g in self.groups:
                g._finish_online()
            # phase "done" at the controller before any group's final count of shard restarts
            # (_finish_records): a restart from a kill while the status still reads "online" is
            # then in run.json. Pushed only after run.json, as it was, a kill that read "online"
            # could land after the last count (the kill soak, tests/runtime/test_actor_kills.py)
            self.phase = "done"
            self._push_status(wait=True)
            for g in self.groups:
                g._finish_records()
            self._push_status()  # the final ticks' status
            if len(self.groups) > 1:  # the top run dir's summary of its seeds
                job.update_run_json(self.run_dir, finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    per_seed={str(g.cfg.run.seed): summary(g.run_dir) for g in self.groups})
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through stop.signals_raise (driver)
            raise self._stopped(e) from None
        except RayActorError:
            died = self._learner_died()
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
