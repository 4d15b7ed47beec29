"""LearnerActor: THE learner actor of every job, holding S >= 1 seeds' learner state (one seed: S = 1).

Each seed keeps what it needs alone (agent, UTD limiter, replay shards, WeightStore, weight versions):
a `learner.Learner`, held as a plain object inside this actor. `train()` is the one training loop for
any S: each step runs one bundle for every seed. With one seed the step is that Learner's own update
fn (and runtime.replay_groups' G bundles per call); with several, `algo.fast.make_multiseed_fn` steps
all agents in one call per env step's worth of bundles (the seeds overlapping on a GPU), or, for the
methods that keep the pre-training loss online, `make_offline_multiseed_fn` (one step of that loss
per seed per env step). `LearnerView(handle, group)` is one seed's face of the actor, shaped like a
Learner handle, so rollout workers, the supervisor and the per-seed driver code (runtime/orchestration/seedgroup.py)
run the same for any S.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import torch

from wsrl_dist import job
from wsrl_dist.algo.fast import make_multiseed_fn, make_offline_multiseed_fn, offline_step_kind
from wsrl_dist.algo.fused_offline import FUSED_OFFLINE_ALGOS
from wsrl_dist.plan import RunPlan
from wsrl_dist.pretrain import PARTIAL, pretrain_agents
from wsrl_dist.runtime.datapath.grants import GRANTS
from wsrl_dist.runtime.datapath.learner import Learner
from wsrl_dist.runtime.instrumentation.progress import PROGRESS


class LearnerActor:
    """Learner actor for S >= 1 seeds; per-seed methods take the seed's group index (0..S-1) first.

    `cfgs[i]` is seed i's single-seed config dict (run.seed = that seed), `stores[i]` its WeightStore.
    """

    def __init__(self, cfgs: list[dict], stores: list, plans: list[RunPlan] | None = None):
        if len(cfgs) != len(stores) or not cfgs or (plans is not None and len(plans) != len(cfgs)):
            raise ValueError("one config, one weight store (and one plan, if given) per seed")
        self.learners: list[Learner] = []
        self._rng: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for cfg, store, plan in zip(cfgs, stores, plans or [None] * len(cfgs)):
            # Learner() seeds torch with its run.seed and builds that seed's agent: the same init a
            # single-seed job of this seed gets. Its RNG stream is kept for its own prepare().
            lrn = Learner(cfg, store, plan=plan)
            self.learners.append(lrn)
            self._rng.append(_rng_state(lrn.device))
        first = self.learners[0]
        self.cfg, self.device, self.mode = first.cfg, first.device, first.mode
        self._fn = None  # make_multiseed_fn, built on the first step (graph capture needs batches)
        self._together_out: list[dict[str, Any]] | None = None  # _pretrain_together's, per seed
        self._step_lock = threading.Lock()  # one whole multi-seed step, or one state_dicts() call
        self.steps = 0  # steps of train()'s loop (each: one bundle, or one group of G, per seed)

    def _one(self, group: int) -> Learner:
        return self.learners[int(group)]

    @contextlib.contextmanager
    def _seed_rng(self, group: int) -> Iterator[None]:
        """Run with seed `group`'s own torch RNG stream (pre-training draws the same numbers a
        single-seed learner of that seed draws). The online step shares one stream: the seeds'
        bundles run inside one make_multiseed_fn call."""
        cpu, cuda = self._rng[group]
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        try:
            yield
        finally:
            self._rng[group] = _rng_state(self.device)

    # ------------------------------------------------------------------ per seed (Learner's API)
    def set_shards(self, group: int, shards: list) -> None:
        self._one(group).set_shards(shards)

    def prepare(self, group: int, pretrain: bool = True, resume: bool = False) -> dict[str, Any]:
        """Seed `group`'s Learner.prepare. Where every seed pre-trains CQL / Cal-QL on a fused fast
        path (the GPU default), the first call pre-trains ALL seeds together in one S-seed fused
        step (`_pretrain_together`) and each call then prepares its seed without pre-training;
        otherwise each seed pre-trains on its own, exactly as a single-seed learner of that seed."""
        if pretrain and self._together():
            if self._together_out is None:
                with self._seed_rng(0):  # the joint step's noise: one stream for all seeds
                    self._together_out = self._pretrain_together(resume)
            with self._seed_rng(group):
                out = self._one(group).prepare(False, resume)  # the offline sampler (retention) only
            out.update(self._together_out[group])
            return out
        with self._seed_rng(group):
            return self._one(group).prepare(pretrain, resume)

    @ray.method(concurrency_group=PROGRESS)
    def progress(self, group: int) -> dict[str, Any]:
        return self._one(group).progress()

    def _together(self) -> bool:
        c = self.cfg
        return (len(self.learners) > 1 and self.mode.startswith("fused") and self.learners[0].plan.pretrains
                and c.pretrain.algo in FUSED_OFFLINE_ALGOS)

    def _pretrain_together(self, resume: bool) -> list[dict[str, Any]]:
        """Every seed's dataset and sampler as its Learner.prepare makes them, then
        pretrain.pretrain_agents over all seeds. A seed whose pre-training had finished before a
        resume (checkpoints/pretrained.pt) is loaded, and then all are (a lock-step job saves them
        together)."""
        t0, lrns = time.time(), self.learners
        ckpts = [Path(lrn.cfg.run.run_dir) / "checkpoints" for lrn in lrns]
        if resume and all((d / "pretrained.pt").is_file() for d in ckpts):
            for lrn, d in zip(lrns, ckpts):
                job.load_agent(d / "pretrained.pt", lrn.agent)
            return [{"loaded": str(d / "pretrained.pt"), "pretrain_steps": 0} for d in ckpts]
        # one load (and one device copy) of the dataset the seeds share
        pairs = job.seed_samplers([lrn.cfg for lrn in lrns], lrns[0].task, self.device,
                                  report=lambda i: lrns[i].stage.build_event)
        samplers = [sampler for sampler, _ in pairs]
        sources = [dataset.source for _, dataset in pairs]
        for lrn in lrns:  # every seed's progress shows the shared loop's steps
            lrn.stage.start("pretrain", self.cfg.pretrain.steps)

        def progress(n: int) -> None:
            for lrn in lrns:
                lrn.stage.add(n)

        timing: dict[str, float] = {}
        with contextlib.ExitStack() as held:
            for lrn in lrns:
                held.enter_context(lrn._agent_lock)
            first = pretrain_agents([lrn.agent for lrn in lrns], samplers, self.cfg, self.mode,
                                    partials=[d / PARTIAL for d in ckpts], resume=resume, progress=progress,
                                    on_log=lambda s, infos: [lrn.stage.pretrain_log(s, i) for lrn, i in zip(lrns, infos)],
                                    timing=timing, note=lambda text: [lrn.stage.set(note=text) for lrn in lrns])
        out = {"pretrain_steps": self.cfg.pretrain.steps, "seconds": time.time() - t0,
               "pretrain_step": f"{offline_step_kind(self.cfg.pretrain.algo, self.mode)}, {len(lrns)} seeds together",
               **{f"pretrain_{k}": v for k, v in timing.items()}}  # pretrain.StepClock's times
        return [{**out, "dataset": src, **({"resumed_at_step": first} if first > 1 else {})} for src in sources]

    def save_agent(self, group: int, path: str) -> None:
        self._one(group).save_agent(path)

    def critic_state(self, group: int) -> dict[str, Any]:
        with self._step_lock:  # between two multi-seed steps
            return self._one(group).critic_state()

    def publish(self, group: int, bump: bool = True, wait: bool = False) -> int:
        return self._one(group).publish(bump, wait)

    @ray.method(concurrency_group=GRANTS)
    def acquire_env_steps(self, group: int, n: int, multiple: int = 1, blocked_s: float = 0.0) -> int:
        return self._one(group).acquire_env_steps(n, multiple, blocked_s)

    @ray.method(concurrency_group=GRANTS)
    def wait_for_env_steps(self, group: int, n: int, multiple: int = 1, wait_s: float = 0.1) -> list:
        return self._one(group).wait_for_env_steps(n, multiple, wait_s)

    def begin_online(self, group: int, env_steps: int) -> None:
        self._one(group).begin_online(env_steps)

    def rows_lost(self, group: int, n: int) -> None:
        self._one(group).rows_lost(n)

    def stats(self, group: int) -> dict[str, Any]:
        out = self._one(group).stats()
        out.update(seed=self._one(group).cfg.run.seed, learner_steps=self.steps)
        return out

    def state_dict(self, group: int) -> dict[str, Any]:
        return self._one(group).state_dict()

    def state_dicts(self) -> list[dict[str, Any]]:
        """Every seed's state_dict() from between two steps: a lock-step job's checkpoints must
        agree on the step count (resume runs the seeds in lock-step again)."""
        with self._step_lock:
            return [lrn.state_dict() for lrn in self.learners]

    def load_state_dict(self, group: int, state: dict[str, Any]) -> None:
        self._one(group).load_state_dict(state)
        self._fn = None

    # ------------------------------------------------------------------ all seeds
    def finish(self) -> None:
        """Every group's rollout is over: run the updates still owed, then return from train()."""
        for lrn in self.learners:
            lrn.finish()

    def train(self) -> list[dict[str, Any]]:
        """Run bundles within every seed's limiter until finish() and every owed update is done;
        returns stats per seed. One step runs a bundle for EVERY seed, and only once every seed's
        own limiter allows one (lock-step: the slowest worker group gates the others; each seed
        still stays inside its own UTD band, none runs ahead of its data). One seed steps with its
        own update fn (_make_step_fn), and with runtime.replay_groups (one seed only: config.py
        refuses it with run.seeds) a whole sample request's G bundles run as one call whenever the
        limiter allows all G."""
        lrns, first = self.learners, self.learners[0]
        t_start = time.perf_counter()
        for lrn in lrns:
            lrn.begin_train(t_start)  # each seed samples its own shards, requests in flight
        groups = first.cfg.runtime.replay_groups and first.feed.group > 1
        delay = first.cfg.runtime.test_learner_delay_s  # tests only: a deliberately slow learner
        t_wait = time.perf_counter()
        # all() stops at the first seed with nothing owed: lock-step gives every seed the same count
        while all(lrn._wait_for_room() for lrn in lrns):
            t_prev, t0 = t_wait, time.perf_counter()
            before = [(lrn.time_split["sample_wait"], lrn.time_split["assemble_to_device"]) for lrn in lrns]
            group = first.next_group() if groups else None
            batches = [group[0]] if group else [lrn.next_batch() for lrn in lrns]
            n = len(group) if group else 1
            t2 = time.perf_counter()
            # bundles, counters and publish under every lock: a checkpoint sees a whole step or none
            # (taken by hand, not with an ExitStack: ~2 us less per step, the loop is host-bound)
            self._step_lock.acquire()
            for lrn in lrns:
                lrn._agent_lock.acquire()
            try:
                if self._fn is None:
                    self._fn = self._make_step_fn(batches)
                for lrn in lrns:  # the step is shared: every seed times the same device work
                    lrn.bundle_timer.start(n)
                infos = [first.run_group(group)] if group else self._fn(batches)
                for lrn in lrns:
                    lrn.bundle_timer.stop()
                self.steps += 1
                for lrn, info in zip(lrns, infos):
                    lrn.after_bundle(info, n)
                t3 = time.perf_counter()
                for lrn in lrns:
                    lrn.publish_due(n)
            finally:
                for lrn in lrns:
                    lrn._agent_lock.release()
                self._step_lock.release()
            t_wait = time.perf_counter()
            # the step is shared: each seed reports the whole step's time split and step time
            # (sampling: the sum over seeds of what next_batch() / next_group() measured for each)
            wait = sum(lrn.time_split["sample_wait"] for lrn in lrns) - sum(b[0] for b in before)
            assemble = sum(lrn.time_split["assemble_to_device"] for lrn in lrns) - sum(b[1] for b in before)
            for lrn, (w, a) in zip(lrns, before):
                split = lrn.time_split
                split["limiter_wait"] += t0 - t_prev
                split["sample_wait"], split["assemble_to_device"] = w + wait, a + assemble
                split["update_launch"] += t3 - t2
                split["publish"] += t_wait - t3
                lrn.step_hist.observe(t_wait - t0)
            if delay:
                time.sleep(delay)
        for lrn in lrns:
            lrn.end_train(t_start)
        return [self.stats(i) for i in range(len(lrns))]

    def _make_step_fn(self, examples: list) -> Any:
        """One step, `examples[i]` seed i's batch. One seed: its Learner's own update fn (a SAC
        bundle or a step of the kept loss: what a one-seed learner always ran). Several: every
        seed's SAC bundle in one call, or every seed's step of the pre-training loss kept online
        (offline_continued / offline_retained: CQL and Cal-QL as ONE S-seed fused step on the fused
        paths, as pre-training runs them; otherwise the seeds' steps one after another)."""
        if len(self.learners) == 1:
            bundle = self.learners[0].update_fn(examples[0])
            return lambda batches: [bundle(batches[0])]
        agents, c, loss = [lrn.agent for lrn in self.learners], self.cfg, self.learners[0].online_loss
        if loss == "sac":
            return make_multiseed_fn(agents, c.sac, self.mode, examples=examples,
                                     matmul_dtype=self.learners[0].matmul_dtype)
        return make_offline_multiseed_fn(agents, loss, c.sac, c.pretrain.cql, c.pretrain.iql, self.mode,
                                         examples)

    def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


class LearnerView:
    """Seed group `group`'s handle on a LearnerActor: `view.m.remote(*a)` calls
    `actor.m.remote(group, *a)`. Picklable (it travels to rollout workers inside their arguments)."""

    def __init__(self, handle: Any, group: int):
        self._handle, self._group = handle, int(group)

    def __getattr__(self, name: str) -> _GroupMethod:
        if name.startswith("_"):  # also what pickle asks for before __dict__ is restored
            raise AttributeError(name)
        return _GroupMethod(getattr(self._handle, name), self._group)


class _GroupMethod:
    def __init__(self, method: Any, group: int):
        self._method, self._group = method, group

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._method.remote(self._group, *args, **kwargs)

