"""One seed's part of a job: its run dir, WeightStore, replay shards, rollout Supervisor, Monitor,
metrics.jsonl, counters, and the per-seed steps of the stages (pretrain -> warmup -> online).

stages.Job holds S >= 1 SeedGroups around ONE learner actor (learneractor.LearnerActor, reached
through the group's LearnerView) and runs the stages for all of them; with one seed the group's run
dir is the job's run dir (the layout local.py writes: config.yaml, run.json, metrics.jsonl,
checkpoints/, report), with several it is <run_dir>/seed-<s>/ (the same layout). A ~1 s monitor tick
polls the group's stats, writes metrics.jsonl and evaluates. Evaluation, Q probes, checkpoints and
restore are SeedRecords (runtime/orchestration/seedrecords.py).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from wsrl_dist import job
from wsrl_dist.config import RunConfig, from_dict
from wsrl_dist.envs.make import obs_act_dims
from wsrl_dist.errors import CheckpointError
from wsrl_dist.plan import RunPlan
from wsrl_dist.runtime.datapath.replay import ReplayShard
from wsrl_dist.runtime.instrumentation.monitor import Monitor
from wsrl_dist.runtime.instrumentation.progress import StageLines, StageProgress
from wsrl_dist.runtime.orchestration import checkpoint as ckpt
from wsrl_dist.runtime.orchestration.seedrecords import SeedRecords

log = logging.getLogger(__name__)


class SeedGroup(SeedRecords):
    """One seed of a job (module docstring). `job_` (stages.Job) creates its actors, runs its stages
    and ticks it; `label` names the seed on its stage lines ("" with one seed); `announce` prints
    the run dir (one seed: it is the job's)."""

    def __init__(self, cfg: RunConfig, command: str, job_: Any, plan: RunPlan, label: str = "",
                 announce: bool = False):
        self.cfg, self.rt, self.command, self.parent, self.label = cfg, cfg.runtime, command, job_, label
        self.plan = plan  # the job's plan for this seed (plan.py), handed to the learner and workers
        self.run_dir = job.prepare_run_dir(
            cfg, command, extra={"runtime": "ray", "utd_target": plan.updates_per_env_step}, announce=announce,
            plan=plan)
        self.resume_from: Path | None = None  # set by the Job on a resume from an online checkpoint
        self.loaded: Any = None  # that checkpoint, when the Job has read it already (one seed)
        # resumed without an online checkpoint: pre-training continues from its own (learner.prepare)
        self.resuming = False
        self.cfg_dict = cfg.to_dict()
        self.first_update = plan.first_update_step
        self.monitor = Monitor(plan.updates_per_env_step, self.first_update, cfg.task.spec())
        self.snapshot: dict[str, Any] = {}
        self.status_dict: dict[str, Any] = {}
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

    # ------------------------------------------------------------------ monitor loop
    def _env_steps(self, timeout: float | None = None) -> int:
        return sum(ray.get([s.env_steps.remote() for s in self.shards], timeout=timeout))

    @property
    def answer_s(self) -> float:
        """How long the driver's loops wait on an actor's answer before moving on (GetTimeoutError):
        half the stall timeout, at most 30 s, so that the watchdog still gets to name a hung actor."""
        return max(1.0, min(30.0, self.rt.stall_timeout_s / 2))

    def _tick(self, phase: str, every: float = 0.0) -> None:
        """Poll all stats once; `every` skips the tick if the last one is more recent than that.
        A transient ActorUnavailableError (e.g. while a node is being declared dead) skips a tick,
        and so does an actor that does not answer within half the stall timeout: a hung shard
        (SIGSTOPped, or deadlocked) held the tick, and with it the watchdog that names it, for good."""
        if time.time() - self.last_tick < every:
            return
        self.last_tick = time.time()
        try:
            self._poll_and_record(phase, timeout=self.answer_s)
        except (ActorUnavailableError, GetTimeoutError) as e:
            log.warning("monitor tick skipped: %s", e)

    def _poll_and_record(self, phase: str, timeout: float | None = None) -> None:
        lrn_ref, version_ref = self.learner.stats.remote(), self.store.get_version.remote()
        shards = ray.get([s.stats.remote() for s in self.shards], timeout=timeout)
        self._count_shard_restarts(shards, online=phase == "online")
        lrn, version = ray.get([lrn_ref, version_ref], timeout=timeout)
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

    def _sync_shard_losses(self, timeout: float | None = None) -> None:
        """Count shard restarts now (online): call before any re-sync of the granted count to
        what the shards hold, or a loss counted after it would be handed out twice."""
        self._count_shard_restarts(ray.get([s.stats.remote() for s in self.shards], timeout=timeout), online=True)

    def _progress(self) -> StageProgress:
        """The stage lines and fields of this seed (runtime/instrumentation/progress.py); with several seeds the lines say which."""
        if getattr(self, "_stage", None) is None:
            self._stage = StageProgress(self.plan.warmup_steps, self.plan.online_steps,
                                        StageLines(label=self.label, enabled=self.cfg.run.progress),
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

    def _push_status(self) -> None:  # the Job pushes every group's status as one (Job.status)
        self.status_dict = self.monitor.status()

    def _wall(self) -> float:
        return self.c["wall_time"] + time.time() - self.t0

    def _wait(self, refs: list, phase: str) -> None:
        """Run the Job's monitor ticks (every group's) until every ref in `refs` is ready."""
        while refs:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=self.rt.monitor_interval)
            self.parent._tick(phase)

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

    def _rollout_complete(self, total: int) -> bool:
        """Once every worker has returned: True if the shards hold `total` env steps; otherwise
        the steps of chunks lost with killed workers are handed out again and the runs restarted."""
        if not self.sup.all_done():
            return False
        try:
            return self._rollout_settled(total)
        except GetTimeoutError as e:  # a hung shard: the online loop's watchdog names it
            log.warning("the rollout's end not checked this tick: %s", e)
            return False

    def _rollout_settled(self, total: int) -> bool:
        """_rollout_complete once every worker has returned; GetTimeoutError before any change
        when a shard does not answer (the next look starts over)."""
        self._sync_shard_losses(self.answer_s)  # before `held`: rows a restarted shard lost leave `granted` once
        held = self._env_steps(self.answer_s)
        if held >= total:
            if self._rows_on_disk(total):
                return True
            held = self._env_steps(self.answer_s)  # a shard lost rows before its snapshot
        granted = ray.get(self.learner.stats.remote())["granted_env_steps"]
        self.c["dropped"] += granted - held
        ray.get(self.learner.begin_online.remote(held))
        self.sup.start_runs()
        return False

    def _rows_on_disk(self, total: int) -> bool:
        """The rollout is over with `total` rows held: the shards snapshot them now, so a shard
        killed from here to the end comes back with every row. Killed before that, the stage's last
        rows (up to runtime.replay_snapshot_s of rollout) went with it and, the rollout over, were
        lost for good (the kill soak's job ended 16 rows short of 5,000, and before the snapshot
        moved here from _finish_online, kills while the learner ran its owed updates did that).
        False if a shard restarted before its snapshot and lost rows: they are handed out again."""
        if self.rt.replay_snapshot_s <= 0:  # the user asked for no snapshots (a restart starts empty)
            return True
        # a whole ring's write: up to the stall timeout (a 1M-row ring: ~180 MB), not answer_s
        ray.get([s.snapshot.remote() for s in self.shards], timeout=self.rt.stall_timeout_s)
        self._sync_shard_losses(self.answer_s)
        return self._env_steps(self.answer_s) >= total

    def _finish_online(self) -> None:
        """After the online stage: last eval and a tick with phase "done", the status the Job
        publishes before any group's _finish_records (the shards hold every row on disk since
        _rows_on_disk)."""
        self._start_eval("online")
        self._collect_evals(wait=True)
        self._tick("done")

    def _finish_records(self) -> None:
        """Once the Job has published phase "done" (Job.run): last checkpoint, then the final tick,
        then run.json's totals from it. That tick is the job's last look at the shards, so every
        shard restart before it is counted, in run.json and in the last metrics.jsonl record alike.
        Counted before the checkpoint instead, a shard killed during it came back uncounted while
        the checkpoint and env steps came from it (the kill soak once saw 3 restarts for 4 kills).
        Not _tick: the final count is never skipped."""
        self._checkpoint()
        self._poll_and_record("done")
        lrn = ray.get(self.learner.stats.remote())
        job.update_run_json(
            self.run_dir, stages=self.stages, finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            env_steps=self.monitor.view["env_steps"], critic_updates=lrn["critic_updates"],
            weights_version=lrn["version"], worker_restarts=self.sup.restarts,
            learner_time_split_s=lrn["time_split_s"], learner_feed_split_s=lrn["feed_split_s"],
            workers=self.monitor.view["workers"],
            # is the learner device-bound? (runtime/instrumentation/bundletimer.py) and the host's weight-put share
            bundle_device_ms=lrn["bundle_device_ms"], learner_device_busy=lrn["device_busy"],
            weight_put_seconds=lrn["publish_hist"]["sum"], learner_process=lrn["process"],
            dropped_env_steps=self.c["dropped"], replay_rows_lost=self.c["rows_lost"],
            replay_shard_restarts=self.c["shard_restarts"], wall_time_s=self._wall())


# ---------------------------------------------------------------------- seed run dirs


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


def resume_points(cfg: RunConfig, seeds: list[int], force_config: bool) -> list[Any]:
    """Per seed, what a resume continues from; each checkpoint's config hash is checked unless
    `force_config` (checkpoint.check_config). One seed: checkpoint.load_newest's Loaded (the newest
    checkpoint that loads; a broken newer one is skipped) or None. Several: the paths of the newest
    step every seed has intact (common_steps, each seed's checked by checkpoint.verify: lock-step
    needs one step for all); a step where any seed's checkpoint is broken is skipped with the same
    one-line warning, and none left intact is a CheckpointError naming what is broken (a fresh start
    would later prune them). The paths are read by each group's restore, one at a time: S seeds'
    replay snapshots are not held at once."""
    if len(seeds) == 1:
        return [ckpt.load_newest(cfg.run.run_dir, cfg.hash(), force_config)]
    configs = seed_configs(cfg)
    steps = common_steps([c.run.run_dir for c in configs])
    errors = []
    for paths in steps:
        try:
            for path in paths:
                ckpt.verify(path)
        except CheckpointError as e:
            errors.append(str(e))
            log.warning("checkpoint skipped: %s; trying the step before that every seed has", e)
            continue
        for c, path in zip(configs, paths):
            ckpt.check_config(path, json.loads((path / "meta.json").read_text())["counters"], c.hash(),
                              force_config)
        return paths
    if errors:
        raise CheckpointError(f"{cfg.run.run_dir}: no checkpoint step that every seed has loads "
                                   f"({'; '.join(errors)})")
    return [None] * len(configs)


def common_checkpoints(run_dirs: list[Path]) -> list[Path | None]:
    """Per seed run dir, its newest checkpoint of the newest learner step every seed has one of
    (all None when a seed has none). Raises when every seed has some but they share no step."""
    steps = common_steps(run_dirs)
    return steps[0] if steps else [None] * len(run_dirs)


def common_steps(run_dirs: list[Path]) -> list[list[Path]]:
    """Per learner step every seed has a complete checkpoint of (checkpoint.problem: DONE marker,
    file sizes), newest first, each seed's checkpoint of it. [] when a seed has none; RuntimeError
    when every seed has some but they share no step."""
    found = []
    for d in run_dirs:
        points = {}
        for path in sorted((Path(d) / "checkpoints").glob("step_*")):
            why = ckpt.problem(path)
            if why is None:  # complete: DONE marker and file sizes
                points[json.loads((path / "meta.json").read_text())["counters"]["bundles"]] = path
            elif path.is_dir():  # e.g. truncated: its step is not one this seed has
                log.warning("checkpoint skipped: %s: %s", path, why)
        found.append(points)
    if not all(found):  # nothing saved, or killed inside the first multi-seed checkpoint (some seeds
        return []  # saved, not all): a fresh launch, as with none at all
    common = set.intersection(*(set(p) for p in found))
    if not common:
        raise RuntimeError(f"the seeds of {Path(run_dirs[0]).parent} have no checkpoint of the same "
                           f"step in common ({[sorted(p) for p in found]} bundles): cannot resume")
    return [[p[step] for p in found] for step in sorted(common, reverse=True)]


def summary(run_dir: Path) -> dict[str, Any]:
    """A finished seed's totals, for the top run.json of a multi-seed job."""
    info = json.loads((Path(run_dir) / "run.json").read_text())
    return {k: info.get(k) for k in ("env_steps", "critic_updates", "weights_version", "worker_restarts",
                                     "wall_time_s")}
