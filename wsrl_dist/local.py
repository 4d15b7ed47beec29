"""Single-process WSRL pipeline, the readable reference: pretrain -> warmup -> online, no Ray.

One env, one replay buffer, the same algo/ update bundles the distributed learner runs. Stage order
and step counting follow wsrl-reference-full 1.3-1.4: warmup steps count toward finetune.online_steps,
and no update happens while t <= max(K, min_steps_to_update) (t = 0-based online step index).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wsrl_dist import job
from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.fast import make_bundle_fn, offline_step_kind, resolve_mode
from wsrl_dist.algo.policy import Policy
from wsrl_dist.algo.types import Batch, batch_from_numpy
from wsrl_dist.algo.update import offline_step
from wsrl_dist.config import ConfigError, RunConfig
from wsrl_dist.data.returns import mc_returns_to_go
from wsrl_dist.data.ring import RingBuffer
from wsrl_dist.durable import replace_durably
from wsrl_dist.envs.make import make_env, obs_act_dims
from wsrl_dist.errors import CheckpointError
from wsrl_dist.evaluation import evaluate
from wsrl_dist.ops.bars import bar_options, note_setter
from wsrl_dist.ops.report import MetricsLog, write_report
from wsrl_dist.plan import RunPlan
from wsrl_dist.pretrain import (
    PARTIAL,
    DeviceSampler,
    pretrain_agent,
    pretrain_agents,
    training_arrays,
)


@dataclass
class Counters:
    env_steps: int = 0  # online env steps, warmup included
    updates: int = 0  # critic updates (UTD per env step once updates start)
    episodes: int = 0
    next_eval: int = 0
    next_checkpoint: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _policy_from(agent: Agent, cfg: RunConfig, seed: int) -> Policy:
    policy = Policy(agent.obs_dim, agent.act_dim, cfg.net, seed=seed)
    policy.load(agent.export_policy(), version=0)
    return policy


def _evaluate(agent: Agent, cfg: RunConfig, task, log: MetricsLog, c: Counters, phase: str,
              t0: float) -> dict[str, Any]:
    res = evaluate(_policy_from(agent, cfg, cfg.run.seed), task, cfg.finetune.eval_episodes, cfg.run.seed)
    log.write("eval", env_steps=c.env_steps, phase=phase, wall_time=time.time() - t0, **res)
    return res


def _save(run_dir: Path, agent: Agent, buffer: RingBuffer, c: Counters, rng: np.random.Generator) -> None:
    """Checkpoint, one atomic step: the replay rows go to a new replay-<env_steps>.npz (fsynced),
    then latest.pt (agent + Adam states + counters, naming that file) replaces the old one
    atomically; only then are older replay files removed. A kill at any moment leaves a latest.pt
    whose replay file matches it (before: replay.npz and latest.pt were replaced one after the
    other, and a kill between them paired new rows with old counters)."""
    ckpt = run_dir / "checkpoints"
    state = buffer.state_dict()
    arrays = state.pop("arrays")
    replay_name = f"replay-{c.env_steps:010d}.npz"
    # temp + rename: the same env-step count saved twice (last periodic and final) never truncates
    # the file the current latest.pt names
    replace_durably(ckpt / replay_name, lambda f: np.savez(f, **arrays))
    counters = {**c.__dict__, "replay": json.dumps(state), "rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(), "replay_file": replay_name}
    job.save_agent(ckpt / "latest.pt", agent, counters)  # the commit point
    for old in [*ckpt.glob("replay-*.npz"), ckpt / "replay.npz"]:
        if old.name != replay_name:
            old.unlink(missing_ok=True)


def replay_path(run_dir: Path) -> Path:
    """The replay file the run dir's latest.pt was saved with (replay.npz: older runs)."""
    ckpt = Path(run_dir) / "checkpoints"
    counters = torch.load(ckpt / "latest.pt", map_location="cpu", weights_only=True)["counters"]
    return ckpt / counters.get("replay_file", "replay.npz")


def _restore(run_dir: Path, agent: Agent, buffer: RingBuffer, rng: np.random.Generator) -> Counters:
    ckpt = run_dir / "checkpoints"
    saved = job.load_agent(ckpt / "latest.pt", agent)
    state = json.loads(saved.pop("replay"))
    replay = ckpt / saved.pop("replay_file", "replay.npz")
    try:
        with np.load(replay, allow_pickle=False) as z:
            state["arrays"] = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError: name the file
        raise CheckpointError(f"{replay}: does not load ({type(e).__name__}: {e})") from e
    buffer.load_state_dict(state)
    rng.bit_generator.state = json.loads(saved.pop("rng"))
    torch.set_rng_state(saved.pop("torch_rng"))
    return Counters(**saved)


def _sample(buffer: RingBuffer, n: int, rng, device, offline: DeviceSampler | None, ratio: float) -> Batch:
    """n rows: online rows first, then offline rows (the reference's concatenation order)."""
    n_off = int(round(n * ratio)) if offline is not None else 0
    batch = batch_from_numpy(buffer.sample(n - n_off, rng), device)
    if n_off == 0:
        return batch
    off = offline.sample(n_off)
    return Batch(*(None if a is None or b is None else torch.cat([a, b]) for a, b in zip(batch, off)))


def run(cfg: RunConfig, command: str = "", resume: bool = False) -> Path:
    """Run the whole pipeline; returns the run directory (config, metrics, checkpoints, report)."""
    if len(cfg.run.seeds) > 1:
        raise ConfigError(f"run.seeds={cfg.run.seeds}: several seeds in one job need the Ray learner "
                          "(`wsrl-dist launch`); `wsrl-dist run` trains run.seed only")
    plan = RunPlan.of(cfg)  # the stages, UTD and rows of this run, derived once (plan.py)
    run_dir = job.prepare_run_dir(cfg, command, plan=plan)  # prints the run dir first: where to look meanwhile
    log = MetricsLog(run_dir)
    task = cfg.task.spec()
    seed = cfg.run.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = job.resolve_device(cfg.run.device)
    matmul_dtype = job.configure_matmul(cfg.run.matmul_precision, device)
    job.configure_compile_cache(cfg.run.compile_cache)
    mode = resolve_mode(cfg.run.fast_path, device, matmul_dtype)
    obs_dim, act_dim = obs_act_dims(task)
    # every graph mode needs capturable Adam: the pre-training step is captured with plain Adam
    # (fast.make_offline_step_fn), and so is the online bundle in cuda_graph / compile_graph
    agent = job.build_agent(cfg, obs_dim, act_dim, device, capturable=mode.endswith("graph"))
    ft, sac = cfg.finetune, cfg.sac
    online_loss = plan.online_loss
    need_mc = plan.mc_returns  # Cal-QL online inserts whole episodes with MC returns (gotcha 14)
    buffer = RingBuffer(ft.replay_capacity, obs_dim, act_dim,
                        {"mc_returns": ((), np.float32)} if need_mc else None)
    ratio = plan.offline_ratio
    t0 = time.time()

    # ---- stage 1: offline pre-training (or loading a pre-trained agent)
    offline = None
    needs_data = plan.needs_offline_data
    resuming = resume and (run_dir / "checkpoints" / "latest.pt").exists()
    if needs_data:
        dataset = job.load_offline_dataset(cfg, task, progress=cfg.run.progress)
        job.update_run_json(run_dir, dataset=dataset.source, dataset_note=dataset.metadata.get(
            "dataset_note", "D4RL/Minari dataset"))
        offline = DeviceSampler(training_arrays(dataset, task, sac.discount), device, seed)
    if resuming:
        c = _restore(run_dir, agent, buffer, rng)
    else:
        c = Counters()
        if plan.pretrained:
            pretrained = run_dir / "checkpoints" / "pretrained.pt"
            if cfg.pretrain.checkpoint:
                job.load_agent(cfg.pretrain.checkpoint, agent)
            elif resume and pretrained.is_file():  # killed after pre-training, before an online checkpoint
                job.load_agent(pretrained, agent)
            else:  # a resumed run continues from checkpoints/pretrain-partial.pt when there is one
                bar = tqdm(total=cfg.pretrain.steps, desc=f"pretrain {cfg.pretrain.algo}",
                           disable=not cfg.run.progress, **bar_options())
                timing: dict[str, float] = {}
                first = pretrain_agent(agent, offline, cfg, progress=bar.update, on_log=lambda s, info: log.write(
                    "pretrain", step=s, wall_time=time.time() - t0, **info), mode=mode,
                    partial=run_dir / "checkpoints" / PARTIAL, resume=resume, timing=timing, note=note_setter(bar))
                bar.close()
                job.update_run_json(run_dir, pretrain_step=offline_step_kind(cfg.pretrain.algo, mode),
                                    **{f"pretrain_{k}": v for k, v in timing.items()},
                                    **({"pretrain_resumed_at_step": first} if first > 1 else {}))
            job.save_agent(pretrained, agent, {"pretrain_steps": cfg.pretrain.steps})
        _evaluate(agent, cfg, task, log, c, "pretrained" if plan.pretrained else "initial", t0)
        c.next_eval, c.next_checkpoint = ft.eval_every, cfg.run.checkpoint_every
    if ratio == 0:
        offline = None  # no retention: the offline data is dropped here (WSRL)

    # ---- stages 2+3: warmup (K steps, no updates) then online updates, one env step at a time
    K = plan.warmup_steps
    per_step_rows = plan.rows_per_env_step
    first_update_after = plan.first_update_step - 1  # t is 0-based: the update at t > this
    bundle = None  # built on first use (CUDA-graph capture needs a real batch)
    env = make_env(task, seed=seed + c.episodes)
    obs, _ = env.reset()
    episode: list[dict[str, np.ndarray]] = []
    ep_return, info = 0.0, {}
    def stage_bar(warmup: bool) -> tqdm:  # one line per stage: warmup (K env steps), then online
        return tqdm(total=K if warmup else plan.online_steps, initial=c.env_steps, desc="warmup" if warmup
                    else "online", disable=not cfg.run.progress or plan.online_steps == 0,  # `pretrain`: no stage 2/3
                    **bar_options())

    bar = stage_bar(c.env_steps < K)
    last_log = (time.time(), c.env_steps, c.updates)
    while c.env_steps < plan.online_steps:
        with torch.no_grad():
            action, _ = agent.actor(torch.as_tensor(obs, device=device).unsqueeze(0))
        action = action[0].cpu().numpy()  # CPU-GPU sync once per env step (acting)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        ep_return += float(reward)
        row = {"observations": obs[None], "actions": action[None].astype(np.float32),
               "rewards": np.asarray([task.scale_reward(reward)], np.float32),
               "next_observations": next_obs[None], "terminals": np.asarray([terminated], np.float32),
               "timeouts": np.asarray([truncated and not terminated], np.float32)}
        if need_mc:
            episode.append(row)
        else:
            buffer.insert(row, source="env")
        t = c.env_steps
        c.env_steps += 1
        bar.update(1)
        obs = next_obs
        if terminated or truncated:
            if need_mc:
                ep = {k: np.concatenate([r[k] for r in episode]) for k in episode[0]}
                ep["mc_returns"] = mc_returns_to_go(ep["rewards"], ep["terminals"], ep["timeouts"],
                                                    sac.discount, sparse_negative_reward=task.sparse_negative_reward
                                                    if task.sparse_reward else None).astype(np.float32)
                buffer.insert(ep, source="env")
                episode = []
            # our clock, as for every other record here (MetricsLog's own started earlier)
            log.write("episode", env_steps=c.env_steps, episode_return=ep_return,
                      wall_time=time.time() - t0)
            c.episodes += 1
            obs, _ = env.reset()
            ep_return = 0.0
        if t > first_update_after and len(buffer) > 0:
            batch = _sample(buffer, per_step_rows, rng, device, offline, ratio)
            if online_loss == "sac":
                if bundle is None:
                    bundle = make_bundle_fn(agent, sac, mode, example=batch, matmul_dtype=matmul_dtype)
                info = bundle(batch)
                c.updates += plan.updates_per_env_step
            else:
                info = offline_step(agent, batch, online_loss, sac, cfg.pretrain.cql, cfg.pretrain.iql)
                c.updates += plan.updates_per_env_step  # 1: one step of the kept loss
        if c.env_steps % cfg.run.log_every == 0:  # throughput in warmup too; losses once updating
            now = time.time()
            dt = max(now - last_log[0], 1e-9)
            log.write("throughput", env_steps=c.env_steps, wall_time=now - t0,
                      env_steps_per_second=(c.env_steps - last_log[1]) / dt,
                      critic_updates_per_second=(c.updates - last_log[2]) / dt,
                      utd_actual=(c.updates - last_log[2]) / max(c.env_steps - last_log[1], 1))
            if info:
                vals = {k: float(v) for k, v in info.items()}  # CPU-GPU sync once per log interval
                log.write("train", env_steps=c.env_steps, critic_updates=c.updates, wall_time=now - t0,
                          **vals)
                bar.set_postfix(critic=f"{vals.get('critic_loss', 0):.3g}", q=f"{vals.get('q_mean', 0):.3g}")
            last_log = (now, c.env_steps, c.updates)
        warmup_done = K > 0 and c.env_steps == K
        if warmup_done and c.env_steps < plan.online_steps:
            bar.close()
            bar = stage_bar(False)
        last = c.env_steps == plan.online_steps  # the reference also evaluates at the end
        if warmup_done or last or c.env_steps >= c.next_eval:  # one eval per step
            _evaluate(agent, cfg, task, log, c, "after_warmup" if warmup_done else "online", t0)
            while c.next_eval <= c.env_steps:
                c.next_eval += ft.eval_every
        if c.env_steps >= c.next_checkpoint:
            _save(run_dir, agent, buffer, c, rng)
            c.next_checkpoint += cfg.run.checkpoint_every
    bar.close()
    env.close()
    _save(run_dir, agent, buffer, c, rng)
    job.update_run_json(run_dir, finished=time.strftime("%Y-%m-%dT%H:%M:%S"), env_steps=c.env_steps,
                        critic_updates=c.updates, wall_time_s=time.time() - t0)
    log.close()
    write_report(run_dir)
    job.sync_run_dir(cfg)
    return run_dir


def pretrain_seeds(cfgs: list[RunConfig], command: str = "", resume: bool = False) -> list[Path]:
    """`wsrl-dist pretrain` of several seeds in ONE process and one loop (the study's pre-training of
    a task, study.py): cfgs[i] is seed i's pretrain-only config (finetune.online_steps=0, its own
    run dir). Each seed gets what `run` gives it (its agent initialised from its run.seed, its
    own sampler, pretrained.pt, an eval, run.json `finished`), but the steps are
    pretrain.pretrain_agents': on the fused paths (the GPU default) ONE S-seed fused step per batch,
    where S single-seed runs would pay S loops of latency-bound steps. The seeds' policy noise
    comes from one stream, so a seed's weights differ from a run of that seed alone; the result is
    still a function of the seeds. A killed run resumes from every seed's pretrain-partial.pt."""
    first_cfg = cfgs[0]
    shared = {k: v for k, v in first_cfg.to_dict().items() if k not in ("run",)}
    for c in cfgs:
        if {k: v for k, v in c.to_dict().items() if k not in ("run",)} != shared or RunPlan.of(c).online_steps:
            raise ConfigError("pretrain_seeds: the seeds' configs must differ in run.* only, with "
                              "finetune.online_steps=0 (a pre-training alone)")
    device = job.resolve_device(first_cfg.run.device)
    matmul_dtype = job.configure_matmul(first_cfg.run.matmul_precision, device)
    job.configure_compile_cache(first_cfg.run.compile_cache)
    mode = resolve_mode(first_cfg.run.fast_path, device, matmul_dtype)
    task = first_cfg.task.spec()
    obs_dim, act_dim = obs_act_dims(task)
    t0 = time.time()
    dirs, logs, agents = [], [], []
    for cfg in cfgs:
        plan = RunPlan.of(cfg)
        run_dir = job.prepare_run_dir(cfg, command, plan=plan)
        torch.manual_seed(cfg.run.seed)  # the agent `run` builds for this seed (same order of draws)
        agents.append(job.build_agent(cfg, obs_dim, act_dim, device, capturable=mode.endswith("graph")))
        dirs.append(run_dir)
        logs.append(MetricsLog(run_dir))
    pairs = job.seed_samplers(cfgs, task, device, progress=first_cfg.run.progress)  # one load per dataset
    samplers = [sampler for sampler, _ in pairs]
    for run_dir, (_, dataset) in zip(dirs, pairs):
        job.update_run_json(run_dir, dataset=dataset.source, dataset_note=dataset.metadata.get(
            "dataset_note", "D4RL/Minari dataset"))
    pcfg = first_cfg.pretrain
    bar = tqdm(total=pcfg.steps, desc=f"pretrain {pcfg.algo} x {len(cfgs)} seeds",
               disable=not first_cfg.run.progress, **bar_options())

    def on_log(step: int, infos: list[dict[str, float]]) -> None:
        for log, info in zip(logs, infos):
            log.write("pretrain", step=step, wall_time=time.time() - t0, **info)

    timing: dict[str, float] = {}
    first = pretrain_agents(agents, samplers, first_cfg, mode, partials=[d / "checkpoints" / PARTIAL for d in dirs],
                            resume=resume, progress=bar.update, on_log=on_log, timing=timing,
                            note=note_setter(bar))
    bar.close()
    kind = f"{offline_step_kind(pcfg.algo, mode)}, {len(cfgs)} seeds together"
    for cfg, run_dir, agent, log in zip(cfgs, dirs, agents, logs):
        job.save_agent(run_dir / "checkpoints" / "pretrained.pt", agent, {"pretrain_steps": pcfg.steps})
        _evaluate(agent, cfg, task, log, Counters(), "pretrained", t0)
        job.update_run_json(run_dir, finished=time.strftime("%Y-%m-%dT%H:%M:%S"), env_steps=0, critic_updates=0,
                            wall_time_s=time.time() - t0, pretrain_step=kind,
                            **{f"pretrain_{k}": v for k, v in timing.items()},
                            **({"pretrain_resumed_at_step": first} if first > 1 else {}))
        log.close()
        write_report(run_dir)
        job.sync_run_dir(cfg)
    return dirs
