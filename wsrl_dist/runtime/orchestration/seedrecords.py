"""Evaluation, Q probes, checkpoints and restore of one seed's group (runtime/orchestration/seedgroup.py).

SeedRecords is a mixin of seedgroup.SeedGroup: what the monitor tick and the stages write down or
read back (eval and Q-probe Ray tasks and their results into metrics.jsonl, online checkpoints and
their restore), kept apart from seedgroup.py's shards, monitor tick and stage steps so each file
reads on its own. It uses the group's attributes (cfg, cfg_dict, rt, plan, run_dir, store, learner,
shards, sup, monitor, log, c, evals, probes, ...) set by SeedGroup.__init__, stages.Job._create_actors
and stages.Job.run. The stop record and the learner's death are the Job's (stages.py): they concern
every seed at once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from wsrl_dist import job
from wsrl_dist.config import from_dict
from wsrl_dist.envs.make import obs_act_dims
from wsrl_dist.runtime.orchestration import checkpoint as ckpt
from wsrl_dist.runtime.orchestration.jobtools import _on_this_node

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


def eval_due_on_resume(next_eval: int, pending: list[int], every: int) -> int:
    """The next_eval a checkpoint saves. An evaluation started but not yet collected (`pending`: the
    env steps it started at) is lost if the job stops now, so a resume from this checkpoint must start
    it again: its scheduled step (the multiple of eval_every it was due at), not the next one. Before,
    a study stopped by SIGTERM while its 50k evaluation ran resumed with next_eval = 60k and had no
    50k point. A resume from a checkpoint whose pending eval did finish later redoes it; the report
    keeps the resumed timeline's row (ops/study_report.latest_timeline)."""
    if not pending or every <= 0:
        return next_eval
    return min(next_eval, min(pending) // every * every)


class SeedRecords:
    """Eval/probe/checkpoint/restore methods of seedgroup.SeedGroup (the module docstring says why apart)."""

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
        running = [steps for _, steps, phase, _ in self.evals if phase == "online"]
        counters = {**self.c, "next_eval": eval_due_on_resume(self.c["next_eval"], running, self.cfg.finetune.eval_every),
                    "env_steps": sum(st["ring"]["total_inserted"] for st in shard_states),
                    "critic_updates": lim["updates"], "version": learner_state["version"],
                    "bundles": learner_state["bundles"], "restarts": self.sup.restarts,
                    "wall_time": self._wall(), "config_hash": self.cfg.hash(), "stage": "online"}
        path = ckpt.save(self.run_dir, learner_state, shard_states, counters, self.rt.keep_checkpoints)
        self.last_checkpoint_t = time.time()
        job.sync_run_dir(self.cfg)  # a URI run.storage gets each checkpoint (storage.py)
        return path

    def _restore(self) -> dict[str, Any]:
        loaded = self.loaded  # read and checked already by the Job (one seed), else read now
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
