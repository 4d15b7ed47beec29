"""D4RL-recipe dataset builder: SAC behaviour policy -> rollouts -> D4RL-layout HDF5 in a cache.

Source of offline files where D4RL/Minari data cannot be downloaded: `build_dataset` -> `write_d4rl_hdf5`
-> `load_d4rl_hdf5` -> pre-training. Rewards are stored raw (docs/CONVENTIONS.md). The behaviour run
(the long part) checkpoints as it goes and a killed build resumes it (`train_behaviour_policy`).
Its per-step learners (host-replay reference, CUDA-graph fast path) are in data/behaviour.py; the
rollouts as parallel env streams in data/parallel_rollout.py; recipes, BuildSpec and the run's key
in data/buildspec.py (re-exported here); the behaviour run's checkpoint file in data/buildpartial.py.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wsrl_dist.algo import sac as sac_lib
from wsrl_dist.algo.agent import Agent, make_agent
from wsrl_dist.algo.nets import NetConfig
from wsrl_dist.algo.policy import Policy
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch
from wsrl_dist.algo.update import polyak, sac_actor_temperature_step
from wsrl_dist.data.behaviour import make_learner
from wsrl_dist.data.buildpartial import _end_last_episode, _load_build_partial, _save_build_partial
from wsrl_dist.data.buildspec import (  # noqa: F401 (the builder's API: callers and tests import it here)
    BUILDABLE_FAMILIES,
    BUILDER_VERSION,
    DATASET_NOTE,
    DEFAULT_MEDIUM_TARGETS,
    RECIPES,
    REPORT_EVERY,
    BuildReport,
    BuildSpec,
    TrainHistory,
    _report,
    _run_hash,
    _run_mode,
    behaviour_sac_config,
    medium_target,
    recipe_from_task,
)
from wsrl_dist.data.d4rl import load_d4rl_hdf5, write_d4rl_hdf5
from wsrl_dist.data.parallel_rollout import env_stream, init_actor_weights, rollout_parallel
from wsrl_dist.data.ring import RingBuffer
from wsrl_dist.data.schema import COLUMN_NAMES, OfflineDataset, episode_bounds
from wsrl_dist.envs.make import make_env, obs_act_dims
from wsrl_dist.envs.tasks import TaskSpec, get_task
from wsrl_dist.evaluation import evaluate
from wsrl_dist.ops.bars import bar_options


def _critic_target(agent: Agent, batch: Batch, cfg: SACConfig) -> torch.Tensor:
    """y = r + gamma * mask * (min Q_targ(s', a') - [alpha * logp]) [B]. When the subsample is the whole
    ensemble the min is taken over all members (clipped double Q): sac.subsampled_min draws members WITH
    replacement (WSRL's REDQ rule), which for 2 of 2 would use a single critic half of the time."""
    with torch.no_grad():
        a2, logp2 = agent.actor(batch.next_observations)
        tq = agent.target_critic(batch.next_observations, a2)  # [E, B]
        if cfg.critic_subsample_size == cfg.critic_ensemble_size:
            tmin = tq.min(0).values
        else:
            tmin = sac_lib.subsampled_min(tq, cfg.critic_subsample_size)
        if cfg.backup_entropy:
            tmin = tmin - agent.temperature() * logp2
        return batch.rewards + cfg.discount * batch.masks * tmin


def sac_update(agent: Agent, batch: Batch, cfg: SACConfig) -> None:
    """One plain-SAC step on `batch` [B]: critic + Polyak, then actor and temperature (algo/update.py)."""
    y = _critic_target(agent, batch, cfg)
    loss = sac_lib.critic_td_loss(agent.critic(batch.observations, batch.actions), y)
    agent.critic_opt.zero_grad(set_to_none=False)
    loss.backward()
    agent.critic_opt.step()
    polyak(agent.target_critic, agent.critic, cfg.soft_target_update_rate)
    sac_actor_temperature_step(agent, batch)


def policy_from_weights(task: TaskSpec, net: NetConfig, weights: dict[str, np.ndarray] | None,
                        seed: int) -> Policy:
    """A CPU `Policy`; weights None -> a freshly (seeded) initialised actor: D4RL's "random" policy."""
    obs_dim, act_dim = obs_act_dims(task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = Policy(obs_dim, act_dim, net, seed=seed)
    if weights is not None:
        policy.load(weights, version=0)
    return policy


def _eval_return(policy: Policy, task: TaskSpec, episodes: int, seed: int) -> float:
    """Mean raw return of the deterministic policy (evaluation.evaluate: eval env, seeded episodes).
    Serial: stepping the episodes together in a SyncVectorEnv measured slower on CPU (hopper, 10
    random-init episodes: 0.70-0.80 s vs 0.45-0.62 s; lock-step waits for the longest episode). At
    most 10k env steps per eval, every eval_every (10k) behaviour steps."""
    return float(evaluate(policy, task, episodes, seed)["return_mean"])


def behaviour_step(env, learner, rng: np.random.Generator, act_dim: int, obs: np.ndarray,
                   action: np.ndarray | None, learning: bool, store: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """One env step of the behaviour SAC's loop (the builder's, and `wsrl-dist bench builder`'s).

    Before learning starts the action is uniform-random and the row is stored (`store`); once
    learning, `action` is the policy's action for `obs` from the previous step (None: ask the policy)
    and the learner inserts the row, makes one update and returns the next action. Returns the next
    observation (after a reset where the episode ended) and the action for it (None when not learning)."""
    if not learning:
        action = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
    elif action is None:
        action = learner.act(obs)
    next_obs, reward, terminated, truncated, _ = env.step(action)
    t = (obs, action, reward, next_obs, terminated, truncated)
    obs = env.reset()[0] if (terminated or truncated) else next_obs
    if learning:  # insert, one update, and the action for the next step
        return obs, learner.step(t, obs)
    if store:
        learner.insert(t)
    return obs, None


def train_behaviour_policy(spec: BuildSpec, progress: bool = True, *, partial: Path | None = None,
                           checkpoint_every: int = 50_000, report: BuildReport | None = None,
                           fast: bool | None = None) -> tuple[Agent, dict[str, np.ndarray], TrainHistory]:
    """SAC from scratch on make_env(task): `random_steps` uniform actions first, then one update per env
    step; deterministic eval every `eval_every` steps. medium / medium-replay stop at the first eval
    >= target_return; other recipes train the whole budget (medium-expert keeps the actor at that
    point). Returns (agent, replay columns [N rows, raw rewards, oldest first], history).

    `fast` (None: on a CUDA device): data/behaviour.py's FastLearner (replay on the device, a step as
    two CUDA graphs, the next action from the actor before the step's update: its Deviation note);
    else its EagerLearner (host replay, numpy-drawn batches, acting after the update), the CPU path.
    `partial`: a checkpoint file written every `checkpoint_every` env steps (agent, optimizers, replay,
    history, RNG states) and resumed from when present, so a killed build loses at most that many
    steps. A resumed run is not bitwise the uninterrupted one: the environment's episode in progress
    cannot be restored, so its last stored row is marked a timeout (an episode end, as D4RL marks a
    cut) and a fresh episode starts (reset seeded with seed + step)."""
    spec = spec.resolved()
    task, net, cfg = get_task(spec.task), spec.net_config(), spec.sac
    obs_dim, act_dim = obs_act_dims(task)
    stop_at_target = spec.recipe in ("medium", "medium-replay")
    hist = TrainHistory(target_return=spec.target_return)
    t0 = time.perf_counter()
    env = make_env(task, seed=spec.seed)
    rng = np.random.default_rng(spec.seed)
    buf = RingBuffer(spec.train_steps, obs_dim, act_dim)
    device = torch.device(spec.device)
    fast = device.type == "cuda" if fast is None else fast
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's torch RNG
        torch.manual_seed(spec.seed)
        agent = make_agent(obs_dim, act_dim, net, cfg, device=device, capturable=fast and device.type == "cuda")
        # looked up here, not imported into behaviour.py: tests wrap this module's sac_update
        learner = make_learner(agent, cfg, buf, rng, sac_update, fast)
        step = 0
        if partial is not None and partial.is_file():
            step, wall_before = _load_build_partial(partial, spec, agent, buf, hist, rng)
            t0 -= wall_before
            obs, _ = env.reset(seed=spec.seed + step)
        else:
            obs, _ = env.reset()
        bar = tqdm(total=spec.train_steps, initial=step, desc=f"SAC {spec.task} ({spec.recipe})",
                   disable=not progress, **bar_options())
        if step:
            bar.set_postfix(resumed_at=step)
        action = None  # the policy's action for `obs`, computed by the previous learner step
        try:
            while step < spec.train_steps:
                step += 1
                obs, action = behaviour_step(env, learner, rng, act_dim, obs, action,
                                             learning=step > spec.random_steps)
                bar.update(1)
                evaluated = step % spec.eval_every == 0 or step == spec.train_steps
                if evaluated:
                    policy = policy_from_weights(task, net, agent.export_policy(), spec.seed)
                    ret = _eval_return(policy, task, spec.eval_episodes, spec.seed)
                    hist.env_steps.append(step)
                    hist.eval_returns.append(ret)
                    bar.set_postfix(eval_return=f"{ret:.1f}", target=f"{spec.target_return:.1f}")
                    if hist.target_reached_at is None and ret >= spec.target_return:
                        hist.target_reached_at = step
                        hist.medium_weights = agent.export_policy()
                        if stop_at_target:
                            _report(report, "behaviour", step, spec.train_steps, hist)
                            break
                if report is not None and (evaluated or step % REPORT_EVERY == 0):
                    _report(report, "behaviour", step, spec.train_steps, hist)
                if partial is not None and checkpoint_every > 0 and step % checkpoint_every == 0 \
                        and step < spec.train_steps:
                    _save_build_partial(partial, spec, agent, learner.replay(), hist, rng, step,
                                        time.perf_counter() - t0)
        finally:
            bar.close()
            env.close()
    hist.train_steps_used = step
    hist.final_weights = agent.export_policy()
    hist.wall_s = time.perf_counter() - t0
    replay = learner.replay().export()
    _end_last_episode(replay)
    return agent, replay, hist


def rollout_dataset(policy: Policy, task: str | TaskSpec, n_transitions: int, seed: int,
                    deterministic: bool = False, *, progress: bool = False,
                    report: BuildReport | None = None) -> OfflineDataset:
    """`n_transitions` rows of `policy` acting in make_env(task, seed): D4RL columns, raw rewards,
    timeouts at TimeLimit truncation and on the last row (a partial episode) unless it terminated.
    One env stream in this process: D4RL's way and the benchmark's baseline; build_dataset runs
    `rollout_parallel` (data/parallel_rollout.py: many such streams over worker processes)."""
    task = task if isinstance(task, TaskSpec) else get_task(task)
    n = int(n_transitions)
    bar = tqdm(total=n, desc=f"rollout {task.name}", disable=not progress, **bar_options())

    class Progress:
        done = 0

        def put(self, rows: int) -> None:
            bar.update(rows)
            self.done += rows
            _report(report, "rollout", self.done, n)

    try:
        cols = env_stream(policy, task, n, seed, deterministic, Progress())
    finally:
        bar.close()
    return OfflineDataset.from_columns(cols, metadata={"task_name": task.name, "env_id": task.env_id},
                                       source=f"rollout:{task.name}")


def episode_returns(ds: OfflineDataset) -> np.ndarray:
    """Sum of raw rewards per episode [E] (the last, possibly partial, episode included)."""
    starts, stops = episode_bounds(ds.terminals, ds.timeouts)
    return np.add.reduceat(ds.rewards.astype(np.float64), starts) if len(ds) else np.zeros(0)


def default_cache_dir() -> Path:
    return Path(os.environ.get("WSRL_DIST_CACHE") or "~/.cache/wsrl_dist/datasets").expanduser()


def dataset_path(spec: BuildSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """<cache>/<task>-<recipe>-n<transitions>-seed<seed>-<spec hash>.hdf5"""
    spec = spec.resolved()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"{spec.task}-{spec.recipe}-n{spec.transitions}-seed{spec.seed}-{spec.hash()}.hdf5"


def _load_cached(path: Path, spec: BuildSpec) -> OfflineDataset | None:
    """The cached dataset if `path` loads cleanly and was built from this spec, else None."""
    if not path.is_file():
        return None
    try:
        ds = load_d4rl_hdf5(path)
    except Exception as e:  # truncated/corrupt/foreign file: rebuild it
        warnings.warn(f"rebuilding {path}: cached file does not load ({e})", stacklevel=3)
        return None
    meta = ds.metadata
    if meta.get("spec_hash") != spec.hash() or meta.get("builder_version") != BUILDER_VERSION:
        warnings.warn(f"rebuilding {path}: it was built from another spec", stacklevel=3)
        return None
    return ds


def _train_cached(spec: BuildSpec, root: Path, progress: bool, checkpoint_every: int = 50_000,
                  report: BuildReport | None = None) -> tuple[dict[str, np.ndarray], TrainHistory]:
    """train_behaviour_policy with its result (replay columns + history with actor weights) kept in
    <cache>/runs/: medium and medium-replay share one run, expert and medium-expert another. While it
    trains, <that file>.partial.pt is its checkpoint (every `checkpoint_every` env steps), resumed from
    by the next build of the same spec and removed once the run is stored."""
    mode, digest = _run_mode(spec), _run_hash(spec)
    path = root / "runs" / f"{spec.task}-{mode}-seed{spec.seed}-{digest}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                hist = TrainHistory(**json.loads(str(z["history"])))
                for part in ("medium", "final"):
                    w = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{part}/")}
                    setattr(hist, f"{part}_weights", w or None)
                replay = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("replay/")}
            return replay, hist
        except Exception as e:
            warnings.warn(f"retraining: cached run {path} does not load ({e})", stacklevel=3)
    partial = path.with_name(path.stem + ".partial.pt")  # resumed from if a build was killed
    _, replay, hist = train_behaviour_policy(spec, progress, partial=partial, checkpoint_every=checkpoint_every,
                                             report=report)
    arrays = {"history": np.array(json.dumps(hist.scalars()))}
    arrays.update({f"replay/{k}": v for k, v in replay.items()} if mode == "to-target" else {})
    for part in ("medium", "final"):
        arrays.update({f"{part}/{k}": v for k, v in (getattr(hist, f"{part}_weights") or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    partial.unlink(missing_ok=True)
    return replay, hist


def _behaviour(spec: BuildSpec, root: Path, progress: bool, checkpoint_every: int = 50_000,
               report: BuildReport | None = None
               ) -> tuple[dict[str, dict | None], dict[str, np.ndarray], TrainHistory]:
    """({part name: actor weights (None = random init)}, replay columns, history) for the recipe."""
    if spec.recipe == "random":
        return {"random": None}, {}, TrainHistory()
    replay, hist = _train_cached(spec, root, progress, checkpoint_every, report)
    reached = hist.target_reached_at is not None
    if not reached and spec.recipe != "expert":
        warnings.warn(f"{spec.task}: behaviour run never reached target_return {spec.target_return:.1f} "
                      f"in {hist.train_steps_used} steps (last evals {hist.eval_returns[-3:]}); "
                      "using its final policy as the medium one", stacklevel=3)
    medium = hist.medium_weights if reached else hist.final_weights
    if spec.recipe == "medium-expert":
        return {"medium": medium, "expert": hist.final_weights}, replay, hist
    return {spec.recipe: hist.final_weights if spec.recipe == "expert" else medium}, replay, hist


def build_dataset(spec: BuildSpec, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True, checkpoint_every: int = 50_000,
                  report: BuildReport | None = None) -> Path:
    """Build (or find in the cache) the D4RL-layout HDF5 for `spec`; returns its path.

    medium-expert = transitions/2 rows of the medium policy then the rest of the expert's (D4RL
    concatenated two 1M files). The behaviour eval return in the metadata is a fresh deterministic
    eval (other episodes than the ones that stopped training), one value per part.
    `checkpoint_every`: env steps between the behaviour run's checkpoints (0: none; `_train_cached`).
    `report`: progress events (BuildReport) for a caller that shows them somewhere other than tqdm.
    """
    path = dataset_path(spec, cache_dir)
    spec = spec.resolved()
    if _load_cached(path, spec) is not None:
        return path
    task, net, t0 = get_task(spec.task), spec.net_config(), time.perf_counter()
    weights, replay, hist = _behaviour(spec, path.parent, progress, checkpoint_every, report)
    parts, evals = [], []
    for i, (name, w) in enumerate(weights.items()):
        w = init_actor_weights(task, net, spec.seed + 1 + i) if w is None else w  # "random": seeded init
        policy = policy_from_weights(task, net, w, spec.seed + 1 + i)
        evals.append(_eval_return(policy, task, spec.eval_episodes, spec.seed + 100))
        if name == "medium-replay":  # the buffer itself, its last `transitions` rows at most
            parts.append({k: v[-spec.transitions:] for k, v in replay.items()})
        else:
            n = spec.transitions // len(weights) + (i < spec.transitions % len(weights))
            parts.append(rollout_parallel(w, net, task, n, spec.seed + 1 + i, spec.rollout_envs, progress=progress,
                                        report=lambda done, total: _report(report, "rollout", done, total),
                                        report_every=10 * REPORT_EVERY))
    ds = OfflineDataset.from_columns({k: np.concatenate([p[k] for p in parts]) for k in COLUMN_NAMES})
    rets = episode_returns(ds)
    one = len(evals) == 1
    meta: dict[str, Any] = dict(
        env_id=task.env_id, task_name=spec.task, recipe=spec.recipe, builder_version=BUILDER_VERSION,
        seed=spec.seed, spec_hash=spec.hash(), spec_json=json.dumps(spec.key(), sort_keys=True),
        algorithm="SAC", dataset_note=DATASET_NOTE, transitions=len(ds),
        behaviour_parts=list(weights), behaviour_eval_return=evals[0] if one else evals,
        train_steps_used=int(hist.train_steps_used), train_wall_s=float(hist.wall_s),
        dataset_episodes=len(rets), dataset_return_mean=float(rets.mean()),
    )
    if task.has_ref_scores:
        score = task.normalized_score(np.asarray(evals))
        meta["behaviour_normalized_score"] = float(score[0]) if one else score
    if spec.recipe != "random":
        meta.update(target_return=float(spec.target_return),
                    target_reached=hist.target_reached_at is not None,
                    target_reached_at=int(hist.target_reached_at or -1),
                    eval_history_steps=np.asarray(hist.env_steps, np.int64),
                    eval_history_returns=np.asarray(hist.eval_returns, np.float64))
    if len(ds) < spec.transitions:  # medium-replay: the buffer is all there is (D4RL's size varies too)
        meta["transitions_requested"] = spec.transitions
    meta["build_wall_s"] = time.perf_counter() - t0
    write_d4rl_hdf5(path, ds, meta)
    return path


def load_or_build(spec: BuildSpec, cache_dir: str | os.PathLike | None = None, *,
                  progress: bool = True) -> OfflineDataset:
    """The dataset for `spec` from the cache, built first if needed."""
    path = dataset_path(spec, cache_dir)
    ds = _load_cached(path, spec.resolved())
    if ds is None:
        ds = load_d4rl_hdf5(build_dataset(spec, cache_dir, progress))
    return ds
