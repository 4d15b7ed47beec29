"""Evaluation, Q probes, checkpoints, restore and the stop/learner-death records of one seed's Job.

JobRecords is a mixin of seedjob.Job (and through it multiseed.SeedGroup): everything the monitor
loop and the stages write down or read back (eval and Q-probe Ray tasks and their results into
metrics.jsonl, online checkpoints and their restore, the checkpoint at a stop, the LearnerDied
error), kept apart from seedjob.py's actor set-up, monitor ticks and stage loop so each file reads
on its own. It uses the Job's attributes (cfg, cfg_dict, rt, plan, run_dir, store, learner, shards,
sup, monitor, log, c, evals, probes, ...) set by Job.__init__ / Job._create_actors / Job.run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from wsrl_dist import job
from wsrl_dist.config import from_dict
from wsrl_dist.envs.make import obs_act_dims
from wsrl_dist.errors import LearnerDied
from wsrl_dist.runtime import checkpoint as ckpt
from wsrl_dist.runtime import stop
from wsrl_dist.runtime.jobtools import _on_this_node, learner_died
from wsrl_dist.runtime.stop import JobStopped

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
def _evaluate(cfg: dict, weights: dict, version: int) -> dict[str, Any]:
    """Deterministic evaluation of one weights version (a Ray task, off the monitor loop)."""
    from wsrl_dist.algo.policy import Policy
    from wsrl_dist.evaluation import evaluate

    c = from_dict(cfg)
    task = c.task.spec()
    policy = Policy(*obs_act_dims(task), c.net, seed=c.run.seed)
    policy.load(weights, version)
    return evaluate(policy, task, c.finetune.eval_episodes, c.run.seed)


@ray.remote(num_cpus=0)
def _q_probe(cfg: dict, weights: dict, critic: dict, version: int) -> dict[str, Any]:
    """Q of the critic vs MC returns of the sampled policy (evaluation.q_probe; a Ray task)."""
    from wsrl_dist.algo.policy import Policy
    from wsrl_dist.evaluation import q_probe

    c = from_dict(cfg)
    task = c.task.spec()
    policy = Policy(*obs_act_dims(task), c.net, seed=c.run.seed + version)
    policy.load(weights, version)
    return q_probe(policy, critic, c, task, c.finetune.q_probe_episodes, c.run.seed)


class JobRecords:
    """Eval/probe/checkpoint/restore/stop methods of seedjob.Job (the module docstring says why apart)."""

    # ------------------------------------------------------------------ evaluation and checkpoints
    def _start_eval(self, phase: str) -> None:
        if self.cfg.finetune.eval_episodes <= 0:
            return
        version, refs = ray.get(self.store.latest.remote(-1))
        steps = self._env_steps()
        ref = _evaluate.options(scheduling_strategy=_on_this_node()).remote(self.cfg_dict, refs[0], version)
        self.evals.append((ref, steps, phase, version))
        self._start_probe(phase)

    def _start_probe(self, phase: str) -> None:
        """A Q-vs-MC probe (finetune.q_probe_every > 0) of the latest weights and the learner's
        critic now (the critic may be a few bundles ahead of the published actor)."""
        if not self.cfg.finetune.q_probe_every:
            return
        version, refs = ray.get(self.store.latest.remote(-1))
        critic = self.learner.critic_state.remote()
        ref = _q_probe.options(scheduling_strategy=_on_this_node()).remote(self.cfg_dict, refs[0], critic, version)
        self.probes.append((ref, self._env_steps(), phase, version))

    def _collect_evals(self, wait: bool = False) -> None:
        keep = []
        for ref, steps, phase, version in self.evals:
            if wait or ray.wait([ref], timeout=0)[0]:
                try:
                    res = ray.get(ref)
                except RayError as e:  # e.g. its node was lost: skip this point
                    log.error("evaluation at %d env steps failed: %s", steps, e)
                    continue
                self.log.write("eval", env_steps=steps, phase=phase, weights_version=version,
                               wall_time=self._wall(), **res)
                self._progress().last_eval = res.get("return_mean")
            else:
                keep.append((ref, steps, phase, version))
        self.evals = keep
        pending = []
        for ref, steps, phase, version in self.probes:
            if wait or ray.wait([ref], timeout=0)[0]:
                try:
                    self.log.write("q_probe", env_steps=steps, phase=phase, weights_version=version,
                                   wall_time=self._wall(), **ray.get(ref))
                except RayError as e:
                    log.error("Q probe at %d env steps failed: %s", steps, e)
            else:
                pending.append((ref, steps, phase, version))
        self.probes = pending

    def _checkpoint(self, learner_state: dict[str, Any] | None = None) -> Path:
        """Learner state first (or the one given), then the shards: the shards then hold at least the
        rows the saved learner had seen, so restored counters always satisfy the limiter."""
        if learner_state is None:
            learner_state = ray.get(self.learner.state_dict.remote())
        shard_states = ray.get([s.state_dict.remote() for s in self.shards])
        lim = learner_state["limiter"]
        counters = {**self.c, "env_steps": sum(st["ring"]["total_inserted"] for st in shard_states),
                    "critic_updates": lim["updates"], "version": learner_state["version"],
                    "bundles": learner_state["bundles"], "restarts": self.sup.restarts,
                    "wall_time": self._wall(), "config_hash": self.cfg.hash(), "stage": "online"}
        path = ckpt.save(self.run_dir, learner_state, shard_states, counters, self.rt.keep_checkpoints)
        self.last_checkpoint_t = time.time()
        job.sync_run_dir(self.cfg)  # a URI run.storage gets each checkpoint (storage.py)
        return path

    def _restore(self) -> dict[str, Any]:
        loaded = getattr(self, "loaded", None)  # resume(): already read and checked
        learner_state, shard_states, counters = loaded.states if loaded else ckpt.load(self.resume_from)
        if self.plan.offline_ratio > 0:  # retention baselines: the offline sampler again
            self._call(self.learner.prepare.remote(pretrain=False), "online")
        if len(shard_states) != len(self.shards):
            raise ValueError(f"checkpoint has {len(shard_states)} shards, runtime.num_shards is "
                             f"{len(self.shards)}: resume with the same runtime.num_shards")
        ray.get([s.load_state_dict.remote(st) for s, st in zip(self.shards, shard_states)]
                + [self.learner.load_state_dict.remote(learner_state)])
        for k in ("next_eval", "next_log", "next_checkpoint", "dropped", "wall_time", "workers_target"):
            self.c[k] = counters[k]
        for k in ("rows_lost", "shard_restarts"):  # checkpoints from before shard restarts lack them
            self.c[k] = counters.get(k, 0)
        self.sup.restarts = counters["restarts"]
        lrn = ray.get(self.learner.stats.remote())
        restored = {"env_steps": self._env_steps(), "critic_updates": lrn["critic_updates"],
                    "version": lrn["version"], "bundles": lrn["bundles"]}
        job.update_run_json(self.run_dir, resumed_from={
            "checkpoint": self.resume_from.name, "saved": {k: counters[k] for k in restored},
            "restored": restored})
        ray.get(self.learner.publish.remote(bump=False, wait=True))  # same version again, into the fresh store
        return restored

    def _maybe_checkpoint(self, env_steps: int) -> None:
        every_s = self.rt.checkpoint_every_s  # also by time: bounds what a dead learner loses
        if every_s and time.time() - self.last_checkpoint_t >= every_s:
            self._checkpoint()
        if env_steps >= self.c["next_checkpoint"]:
            self._checkpoint()
            while self.c["next_checkpoint"] <= env_steps:
                self.c["next_checkpoint"] += self.cfg.run.checkpoint_every

    # ------------------------------------------------------------------ stop and learner death
    def _stopped(self, exc: KeyboardInterrupt) -> JobStopped:
        """Interrupted: checkpoint what this stage can resume from; the JobStopped to raise. Online,
        a checkpoint now (the workers' chunks in flight are lost; resume hands those steps out
        again); in pre-training its partial checkpoint (every pretrain.checkpoint_every steps);
        in warmup, resume warms up again from checkpoints/pretrained.pt."""
        stage = getattr(self, "stage", "pretrain")
        with stop.shielded():
            try:
                if stage == "online":
                    path = self._checkpoint()
                    step = json.loads((path / "meta.json").read_text())["counters"]["env_steps"]
                elif stage == "warmup":
                    step = self._env_steps()
                else:
                    step = stop.pretrain_step(self.run_dir)
            except (RayError, OSError) as e:  # actors already gone: the newest checkpoint stands
                log.error("no checkpoint written at the stop: %s", e)
                latest = ckpt.latest(self.run_dir)
                step = json.loads((latest / "meta.json").read_text())["counters"]["env_steps"] if latest else 0
        return stop.JobStopped(stage, step, self.run_dir, stop.signum_of(exc))

    def _learner_died(self) -> LearnerDied | None:
        """After an actor error: LearnerDied if the learner is what died, else None."""
        if getattr(self, "learner", None) is None:
            return None
        try:
            env_steps = self._env_steps()
        except RayError:
            env_steps = self.monitor.view.get("env_steps")
        newest = ckpt.latest(self.run_dir)
        return learner_died(self.learner, self.run_dir, getattr(self, "stage", "pretrain"), env_steps,
                            self.monitor.view.get("critic_updates", 0), newest.name if newest else None)
