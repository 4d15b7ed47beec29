"""One seed's job: creates the actors of the data path and runs pretrain -> warmup -> online.

Actors: WeightStore, Learner (GPU when the cluster has one; hosts the UTD limiter), ReplayShard x S
(placed on the learner's node), RolloutWorker x N (max_restarts), JobController (named, for scale /
status from other processes). A ~1 s monitor loop polls stats, serves Prometheus metrics, writes
metrics.jsonl, evaluates, checkpoints, restarts or replaces dead workers and applies scale requests.
Run-dir layout as local.py: config.yaml, run.json, metrics.jsonl, checkpoints/, report.
driver.launch / driver.resume start it; multiseed.SeedGroup is one Job per seed of a multi-seed job.
Evaluation, Q probes, checkpoints, restore and the stop record are JobRecords (runtime/seedrecords.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from wsrl_dist import job
from wsrl_dist.config import RunConfig
from wsrl_dist.envs.make import obs_act_dims
from wsrl_dist.ops.report import MetricsLog, write_report
from wsrl_dist.plan import RunPlan
from wsrl_dist.runtime.control import controller_name, make_controller
from wsrl_dist.runtime.grants import learner_actor_class
from wsrl_dist.runtime.jobtools import (
    _on_this_node,
    _port_note,
    _ray_address,
    _start_metrics,
    check_learner_running,
    scale_requests,
)
from wsrl_dist.runtime.learner import Learner
from wsrl_dist.runtime.monitor import Monitor
from wsrl_dist.runtime.progress import StageLines, StageProgress, announce_metrics
from wsrl_dist.runtime.replay import ReplayShard
from wsrl_dist.runtime.seedrecords import JobRecords
from wsrl_dist.runtime.supervisor import Supervisor
from wsrl_dist.runtime.watchdog import Watchdog
from wsrl_dist.runtime.weights import WeightStore

log = logging.getLogger(__name__)


class Job(JobRecords):
    def __init__(self, cfg: RunConfig, command: str, resume_from: Path | None = None, resuming: bool = False,
                 announce: bool = True, plan: RunPlan | None = None):
        self.cfg, self.rt, self.command = cfg, cfg.runtime, command
        # derived from the config once (plan.py) and handed to the learner and the workers
        self.plan = plan = plan if plan is not None else RunPlan.of(cfg)
        self.run_dir = job.prepare_run_dir(
            cfg, command, extra={"runtime": "ray", "utd_target": plan.updates_per_env_step}, announce=announce,
            plan=plan)
        self.resume_from = resume_from
        # resumed without an online checkpoint: pre-training continues from its own (learner.prepare)
        self.resuming = resuming or resume_from is not None
        self.cfg_dict = cfg.to_dict()
        self.first_update = plan.first_update_step
        self.monitor = Monitor(plan.updates_per_env_step, self.first_update, cfg.task.spec())
        self.snapshot: dict[str, Any] = {}
        self.c: dict[str, Any] = {"next_eval": cfg.finetune.eval_every, "next_log": cfg.run.log_every,
                                  "next_checkpoint": cfg.run.checkpoint_every, "dropped": 0,
                                  "rows_lost": 0, "shard_restarts": 0,
                                  "wall_time": 0.0, "workers_target": self.rt.num_workers}
        self.evals: list[tuple[Any, int, str, int]] = []  # (ref, env_steps, phase, version)
        self.probes: list[tuple[Any, int, str, int]] = []  # Q-vs-MC probes, the same shape
        self.next_probe = cfg.finetune.q_probe_every  # not checkpointed: a resume probes once at once
        self.stages: dict[str, Any] = {}
        self.t0 = time.time()
        self.last_tick = 0.0
        self.shards_seen = (0, 0)  # the shards' own (rows_lost, restarts) sums as last counted
        self.last_checkpoint_t = time.time()

    # ------------------------------------------------------------------ actors
    def _create_actors(self) -> None:
        self.store = ray.remote(WeightStore).options(num_cpus=0, scheduling_strategy=_on_this_node()).remote()
        self.learner = (learner_actor_class(Learner, self.rt.num_workers).options(**self._learner_options())
                        .remote(self.cfg_dict, self.store, plan=self.plan))
        self.learner_node = ray.get(self.learner.ping.remote())
        self.shards = self._make_shards(self.learner_node)
        ray.get(self.learner.set_shards.remote(self.shards))
        self.controller = make_controller(self.run_dir)
        self.sup = Supervisor(self.cfg_dict, self.shards, self.store, self.learner, self.monitor, self.plan)

    def _learner_options(self) -> dict[str, Any]:
        # Losing a rollout node must not take the job's state along: the store (no CPU, metadata
        # only) lives on the driver's node, shards on the learner's (hard affinity; Ray's soft
        # affinity spills zero-CPU actors off a node whose CPUs are taken). A CPU learner prefers
        # the driver's node; a GPU learner goes where the GPU is.
        gpus = self.rt.learner_gpus
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 and self.cfg.run.device != "cpu" else 0
        opts: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus, "max_concurrency": 8}
        if not gpus:
            opts["scheduling_strategy"] = _on_this_node(soft=True)
        return opts

    def _make_shards(self, learner_node: str) -> list:
        """runtime.num_shards ReplayShard actors on the learner's node, seeded from run.seed.
        Restartable (runtime.shard_max_restarts): a killed shard comes back with its newest snapshot
        (<run_dir>/replay, every runtime.replay_snapshot_s), and the calls in flight to it (workers'
        inserts, the learner's samples) are retried by Ray once it is back instead of failing."""
        rt, near = self.rt, NodeAffinitySchedulingStrategy(learner_node, soft=False)
        restarts = {"max_restarts": rt.shard_max_restarts, "max_task_retries": -1 if rt.shard_max_restarts else 0}
        snapshots = str(Path(self.run_dir).resolve() / "replay")
        task = self.cfg.task.spec()
        obs_dim, act_dim = obs_act_dims(task)
        capacity = -(-self.cfg.finetune.replay_capacity // rt.num_shards)
        return [ray.remote(ReplayShard).options(num_cpus=rt.shard_cpus, scheduling_strategy=near, **restarts)
                .remote(capacity, obs_dim, act_dim, self.cfg.run.seed + 101 * i,
                        reward_scale=task.reward_scale, reward_bias=task.reward_bias,
                        max_frame_bytes=rt.max_frame_bytes, shard_id=i,
                        mc_returns=self.plan.mc_returns,
                        snapshot_dir=snapshots, snapshot_s=rt.replay_snapshot_s)
                for i in range(rt.num_shards)]

    def _teardown(self) -> None:
        if hasattr(self, "sup"):
            self.sup.kill_all()
        for actor in [*getattr(self, "shards", []), getattr(self, "learner", None),
                      getattr(self, "store", None), getattr(self, "controller", None)]:
            if actor is not None:
                ray.kill(actor, no_restart=True)

    # ------------------------------------------------------------------ monitor loop
    def _env_steps(self) -> int:
        return sum(ray.get([s.env_steps.remote() for s in self.shards]))

    def _tick(self, phase: str, every: float = 0.0) -> None:
        """Poll all stats once; `every` skips the tick if the last one is more recent than that.
        A transient ActorUnavailableError (e.g. while a node is being declared dead) skips a tick."""
        if time.time() - self.last_tick < every:
            return
        self.last_tick = time.time()
        try:
            self._poll_and_record(phase)
        except ActorUnavailableError as e:
            log.warning("monitor tick skipped: %s", e)

    def _poll_and_record(self, phase: str) -> None:
        lrn_ref, version_ref = self.learner.stats.remote(), self.store.get_version.remote()
        shards = ray.get([s.stats.remote() for s in self.shards])
        self._count_shard_restarts(shards, online=phase == "online")
        lrn, version = ray.get([lrn_ref, version_ref])
        self.sup.poll_stats()
        self.monitor.update(phase=phase, learner=lrn, shards=shards, workers=self.sup.last_stats(),
                            alive=self.sup.states(), store_version=version,
                            restarts=self.sup.restarts, dropped=self.c["dropped"],
                            workers_target=self.c["workers_target"], placement=self.sup.placement(),
                            rows_lost=self.c["rows_lost"], shard_restarts=self.c["shard_restarts"])
        self._stage_progress(phase)
        self.snapshot = self.monitor.snapshot()
        self._push_status()
        view, wall = self.monitor.view, self._wall()
        self.log.write("throughput", wall_time=wall, **self.monitor.throughput_record())
        if phase == "online" and view["env_steps"] >= self.c["next_log"] and view["losses"]:
            self.log.write("train", env_steps=view["env_steps"], critic_updates=view["critic_updates"],
                           wall_time=wall, **view["losses"])
            while self.c["next_log"] <= view["env_steps"]:
                self.c["next_log"] += self.cfg.run.log_every
        self._collect_evals()
        if phase == "online":
            # the eval at the last env step waits for the learner's last updates (run())
            if self.c["next_eval"] <= view["env_steps"] < self.plan.online_steps:
                self._start_eval("online")
                while self.c["next_eval"] <= view["env_steps"]:
                    self.c["next_eval"] += self.cfg.finetune.eval_every
            self._maybe_checkpoint(view["env_steps"])
            ft = self.cfg.finetune
            if ft.q_probe_every and self.next_probe <= view["env_steps"] <= ft.q_probe_until:
                self._start_probe("online")
                self.next_probe = (view["env_steps"] // ft.q_probe_every + 1) * ft.q_probe_every

    def _count_shard_restarts(self, shards: list[dict[str, Any]], online: bool) -> None:
        """Rows lost with restarted replay shards (stats of this tick) into the job's counters;
        online, the learner hands those env steps out again (learner.rows_lost)."""
        lost, restarts = (sum(int(s.get(k, 0)) for s in shards) for k in ("rows_lost", "restarts"))
        new_lost, new_restarts = lost - self.shards_seen[0], restarts - self.shards_seen[1]
        if new_lost <= 0 and new_restarts <= 0:
            return
        self.shards_seen = (lost, restarts)
        self.c["rows_lost"] += max(0, new_lost)
        self.c["shard_restarts"] += max(0, new_restarts)
        log.warning("replay shard restarted: %d rows lost since its last snapshot (%d in this job)",
                    new_lost, self.c["rows_lost"])
        if online and new_lost > 0:
            ray.get(self.learner.rows_lost.remote(new_lost))

    def _sync_shard_losses(self) -> None:
        """Count shard restarts now (online): call before any re-sync of the granted count to
        what the shards hold, or a loss counted after it would be handed out twice."""
        self._count_shard_restarts(ray.get([s.stats.remote() for s in self.shards]), online=True)

    def _progress(self) -> StageProgress:
        """The stage lines and fields of this job (runtime/progress.py); a seed group's lines say its seed."""
        if getattr(self, "_stage", None) is None:
            parent = getattr(self, "parent", None)
            label = f"seed {self.cfg.run.seed}" if parent is not None else ""
            self._stage = StageProgress(self.plan.warmup_steps, self.plan.online_steps,
                                        StageLines(label=label, enabled=self.cfg.run.progress),
                                        updates_total=self.plan.updates_total)
        return self._stage

    def _stage_progress(self, phase: str) -> None:
        """Stage fields into the monitor's view (status, metrics.jsonl, Prometheus) and the stage line.
        Build and pre-training run inside learner.prepare(): their counts come from learner.progress()
        (its own concurrency group) until the first tick after prepare returned."""
        sp = self._progress()
        rec = ray.get(self.learner.progress.remote()) if sp.learner_open else None
        fields = sp.update(phase, self.monitor.view, rec)
        self.monitor.view.update(fields)
        step = (rec or {}).get("loss_step")
        # the latest pre-training losses once per log step seen (local.py logs every run.log_every)
        if step and step != getattr(self, "_logged_pretrain", None):
            self._logged_pretrain = step
            self.log.write("pretrain", step=step, wall_time=self._wall(), **rec["losses"])

    def _push_status(self) -> None:
        self.controller.set_status.remote({**self.monitor.status(), "learner_node": self.learner_node})

    def _wall(self) -> float:
        return self.c["wall_time"] + time.time() - self.t0

    def _wait(self, refs: list, phase: str) -> None:
        """Run monitor ticks until every ref in `refs` is ready."""
        while refs:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=self.rt.monitor_interval)
            self._tick(phase)

    # ------------------------------------------------------------------ stages
    def _prepare(self) -> None:
        t0 = time.time()
        self.stages["pretrain"] = self._call(self.learner.prepare.remote(resume=self.resuming), "pretrain")
        self.stages["pretrain"]["wall_s"] = time.time() - t0
        if self.plan.pretrained:
            ray.get(self.learner.save_agent.remote(str(self.run_dir / "checkpoints" / "pretrained.pt")))
        ray.get(self.learner.publish.remote(wait=True))  # version 0: the policy the warmup acts with
        self._start_eval("pretrained" if self.plan.pretrained else "initial")

    def _call(self, ref: Any, phase: str) -> Any:
        self._wait([ref], phase)
        return ray.get(ref)

    def _warmup(self) -> None:
        """Workers split exactly K env steps; the learner is idle. Shares lost with a dead worker
        are handed out again until the shards hold K rows."""
        K, t0 = self.plan.warmup_steps, time.time()
        while True:  # process start-up: give every worker a share if it comes up within a minute
            states = [s.state for s in self.sup.slots.values()]
            if "idle" in states and ("starting" not in states or time.time() - t0 > 60):
                break
            time.sleep(0.1)
            self.sup.supervise()
            self._tick("warmup", every=self.rt.monitor_interval)
        self.stages["workers_start_s"], t0 = time.time() - t0, time.time()
        watchdog = Watchdog(self.rt.stall_timeout_s)
        while (left := K - self._env_steps()) > 0:
            watchdog.check(self, "warmup")
            refs = self.sup.collect(left)
            if not refs:  # every worker is still (re)starting
                time.sleep(self.rt.monitor_interval)
                self.sup.supervise()
                self._tick("warmup")
            while refs:
                _, refs = ray.wait(refs, num_returns=len(refs), timeout=self.rt.monitor_interval)
                self.sup.supervise()
                self._tick("warmup")
                watchdog.check(self, "warmup")
            self.sup.supervise()
        lrn = ray.get(self.learner.stats.remote())
        self.stages["warmup"] = {"env_steps": self._env_steps(), "critic_updates": lrn["critic_updates"],
                                 "wall_s": time.time() - t0}
        job.update_run_json(self.run_dir, stages=self.stages)
        if K > 0:
            self._start_eval("after_warmup")

    def _online(self) -> None:
        total, t0 = self.plan.online_steps, time.time()
        # rows lost in the warmup are counted, not handed out again: begin_online syncs to the shards
        self._count_shard_restarts(ray.get([s.stats.remote() for s in self.shards]), online=False)
        ray.get(self.learner.begin_online.remote(self._env_steps()))  # before any grant
        train_ref = self.learner.train.remote()
        self.sup.start_runs()
        watchdog = Watchdog(self.rt.stall_timeout_s)
        while True:
            check_learner_running(train_ref)
            watchdog.check(self, "online")  # lost grants back to the pool; no silent hang
            for n in scale_requests(self.controller):
                self.c["workers_target"] = n
                self.sup.scale(n)
            self.sup.supervise()
            if self._rollout_complete(total):
                break
            self._tick("online")
            time.sleep(self.rt.monitor_interval)
        self.learner.finish.remote()
        final = self._call(train_ref, "online")
        self.stages["online"] = {"wall_s": time.time() - t0, "bundles": final["bundles"],
                                 "bundle_groups": final["bundle_groups"],
                                 "offline_rows_per_bundle": final["offline_rows_per_bundle"]}

    def _rollout_complete(self, total: int) -> bool:
        """Once every worker has returned: True if the shards hold `total` env steps; otherwise
        the steps of chunks lost with killed workers are handed out again and the runs restarted."""
        if not self.sup.all_done():
            return False
        self._sync_shard_losses()  # before `held`: rows a restarted shard lost leave `granted` once
        held = self._env_steps()
        if held >= total:
            return True
        granted = ray.get(self.learner.stats.remote())["granted_env_steps"]
        self.c["dropped"] += granted - held
        ray.get(self.learner.begin_online.remote(held))
        self.sup.start_runs()
        return False

    def _finish_records(self) -> None:
        """After the online stage: last eval, last tick, last checkpoint, totals into run.json."""
        self._start_eval("online")
        self._collect_evals(wait=True)
        self._tick("done")
        self._checkpoint()
        lrn = ray.get(self.learner.stats.remote())
        job.update_run_json(
            self.run_dir, stages=self.stages, finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            env_steps=self._env_steps(), critic_updates=lrn["critic_updates"],
            weights_version=lrn["version"], worker_restarts=self.sup.restarts,
            learner_time_split_s=lrn["time_split_s"], learner_feed_split_s=lrn["feed_split_s"],
            workers=self.monitor.view["workers"],
            # is the learner device-bound? (runtime/bundletimer.py) and the host's weight-put share
            bundle_device_ms=lrn["bundle_device_ms"], learner_device_busy=lrn["device_busy"],
            weight_put_seconds=lrn["publish_hist"]["sum"], learner_process=lrn["process"],
            dropped_env_steps=self.c["dropped"], replay_rows_lost=self.c["rows_lost"],
            replay_shard_restarts=self.c["shard_restarts"], wall_time_s=self._wall())

    def run(self) -> Path:
        self.log = MetricsLog(self.run_dir)
        server = None
        try:
            self._create_actors()
            server = _start_metrics(lambda: self.snapshot, self.rt)
            job.update_run_json(self.run_dir, metrics_url=f"http://{server.host}:{server.port}/metrics",
                                controller=controller_name(str(self.run_dir)), ray_address=_ray_address())
            announce_metrics(f"http://{server.host}:{server.port}/metrics", note=_port_note(server, self.rt))
            if self.resume_from is not None:
                self.stage = "online"
                self._restore()
                self.sup.scale(self.c["workers_target"])
            else:
                self.stage = "pretrain"
                self._prepare()
                self.sup.scale(self.rt.num_workers)
                self.stage = "warmup"
                self._warmup()
            self.stage = "online"
            self._online()
            self._finish_records()
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through stop.signals_raise (launch)
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
            self.log.close()
        write_report(self.run_dir)
        job.sync_run_dir(self.cfg)
        return self.run_dir
