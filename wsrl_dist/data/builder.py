"""D4RL-recipe dataset builder: SAC behaviour policy -> rollouts -> D4RL-layout HDF5 in a cache.

Source of offline files where D4RL/Minari data cannot be downloaded: `build_dataset` -> `write_d4rl_hdf5`
-> `load_d4rl_hdf5` -> pre-training. Rewards are stored raw (docs/CONVENTIONS.md). The behaviour run
(the long part) checkpoints as it goes and a killed build resumes it (`train_behaviour_policy`).
Its per-step learners (host-replay reference, CUDA-graph fast path) are in data/behaviour.py; the
rollouts as parallel env streams in data/parallel_rollout.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
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
from wsrl_dist.data.d4rl import load_d4rl_hdf5, write_d4rl_hdf5
from wsrl_dist.data.parallel_rollout import env_stream, init_actor_weights, rollout_parallel
from wsrl_dist.data.ring import RingBuffer
from wsrl_dist.data.schema import COLUMN_NAMES, OfflineDataset, episode_bounds
from wsrl_dist.envs.make import make_env, obs_act_dims
from wsrl_dist.envs.tasks import TaskSpec, get_task
from wsrl_dist.evaluation import evaluate

RECIPES = ("random", "medium", "medium-replay", "expert", "medium-expert")
# 2: dataset rollouts from `rollout_envs` env streams (BuildSpec.rollout_envs)
BUILDER_VERSION = 2
DATASET_NOTE = "built by wsrl_dist's D4RL-recipe builder, not the original D4RL data"
# Families where "SAC to a return target" makes sense: dense rewards. AntMaze/Kitchen/Adroit data came
# from planners, demos and BC rollouts, which SAC from scratch on a sparse reward cannot stand in for.
BUILDABLE_FAMILIES = ("locomotion", "classic")
# Medium targets for tasks without D4RL reference scores: 1/3 of the way from a random policy's return
# to a solved one's. Pendulum-v1: random ~ -1230, solved ~ -150 (200-step episodes) -> -870.
DEFAULT_MEDIUM_TARGETS: dict[str, float] = {"pendulum-v1": -870.0}
# Progress events for callers that show or export build progress (the Ray learner, `launch`): called
# with {"stage": "build", "part": "behaviour" | "rollout", "done", "total", "eval_return",
# "target_return"} about every REPORT_EVERY steps or rows, at each behaviour eval and at each part's end.
BuildReport = Callable[[dict[str, Any]], None]
REPORT_EVERY = 1_000


def recipe_from_task(task_name: str) -> str:
    """The recipe word in a D4RL-style name ('hopper-medium-replay-v2' -> 'medium-replay'); 'medium'
    when there is none ('inverted-pendulum-v5'). Two-word recipes are matched before one-word ones."""
    padded = f"-{re.sub(r'-v[0-9]+$', '', task_name)}-"
    for recipe in sorted(RECIPES, key=len, reverse=True):
        if f"-{recipe}-" in padded:
            return recipe
    return "medium"


def behaviour_sac_config() -> SACConfig:
    """Plain SAC as D4RL's behaviour learner (rlkit SAC): clipped double Q (2 critics, target = min of
    both), entropy in the backup, lr 3e-4 everywhere, UTD 1, batch 256. WSRL's 10-member ensemble,
    LayerNorm and 1e-4 actor lr are fine-tuning choices (wsrl-reference), not needed to make data."""
    return SACConfig(critic_ensemble_size=2, critic_subsample_size=2, backup_entropy=True,
                     actor_lr=3e-4, critic_lr=3e-4, temperature_lr=3e-4, utd=1, batch_size=256,
                     ghost_adam_steps=False)


@dataclass
class BuildSpec:
    """What to build. None fields are filled by `resolved()`; `device` does not enter the cache key."""

    task: str
    recipe: str | None = None  # None -> recipe_from_task(task)
    # Rows written. medium-replay writes the whole buffer, capped to its last `transitions` rows.
    transitions: int = 1_000_000
    train_steps: int = 1_000_000  # SAC env-step budget of the behaviour run
    # medium / medium-replay stop here; medium-expert snapshots its medium half here; expert ignores it
    # (trains the whole budget). None -> ref_max_score / 3 (D4RL: 1/3 of expert), else DEFAULT_MEDIUM_TARGETS.
    target_return: float | None = None
    seed: int = 0
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    sac: SACConfig = field(default_factory=behaviour_sac_config)
    random_steps: int = 5_000  # uniform random actions, no updates, before SAC starts (as CleanRL's SAC)
    eval_every: int = 10_000
    eval_episodes: int = 10
    # Deviation: D4RL rolled its policy out in one env; here `rollout_envs` seeded envs each write a
    # contiguous stream (data/parallel_rollout.py), so the rows end in that many partial episodes
    # (timeouts) instead of one. The data depends on this number, not on the processes running it.
    rollout_envs: int = 16
    device: str = "cpu"

    def resolved(self) -> BuildSpec:
        """A validated copy with recipe and target_return filled in."""
        task = get_task(self.task)
        if task.family not in BUILDABLE_FAMILIES:
            raise ValueError(f"task {self.task!r}: family {task.family!r} cannot be built by SAC rollouts "
                             f"(buildable families: {BUILDABLE_FAMILIES})")
        recipe = self.recipe or recipe_from_task(self.task)
        if recipe not in RECIPES:
            raise ValueError(f"recipe {recipe!r} not in {RECIPES}")
        for name in ("transitions", "eval_every", "eval_episodes", "rollout_envs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if recipe != "random" and self.train_steps <= self.random_steps:
            raise ValueError(f"train_steps ({self.train_steps}) must exceed random_steps ({self.random_steps})")
        self.sac.validate()
        target = self.target_return
        if target is None and recipe != "random":
            target = medium_target(task)
        return dataclasses.replace(self, recipe=recipe, target_return=target, hidden=list(self.hidden),
                                   sac=dataclasses.replace(self.sac))

    def net_config(self) -> NetConfig:
        # Plain rlkit-style SAC nets, not WSRL's: no LayerNorm (the fine-tuning nets use it,
        # wsrl-reference "Networks"), two separate critics each with its own head, and the default
        # init on the critic's last hidden layer. Same initial weights as before the shared head.
        return NetConfig(actor_hidden=list(self.hidden), critic_hidden=list(self.hidden), layer_norm=False,
                         shared_q_head=False, critic_kernel_scale_final=None)

    def key(self) -> dict[str, Any]:
        """The fields that decide the file's content (device excluded; no training fields for random)."""
        d = dataclasses.asdict(self)
        d.pop("device")
        if d["recipe"] == "random":
            for k in ("train_steps", "target_return", "sac", "random_steps", "eval_every"):
                d.pop(k)
        return {"builder_version": BUILDER_VERSION, **d}

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:10]


def medium_target(task: TaskSpec) -> float:
    if task.ref_max_score is not None and task.ref_max_score > 0:
        return task.ref_max_score / 3.0
    if task.name in DEFAULT_MEDIUM_TARGETS:
        return DEFAULT_MEDIUM_TARGETS[task.name]
    raise ValueError(f"task {task.name!r} has no reference score: set BuildSpec.target_return")


@dataclass
class TrainHistory:
    """One behaviour run: periodic deterministic eval returns and the policies the recipes need."""

    env_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    train_steps_used: int = 0
    target_return: float | None = None
    target_reached_at: int | None = None  # env steps at the first eval >= target_return
    wall_s: float = 0.0
    medium_weights: dict[str, np.ndarray] | None = None  # actor at target_reached_at (exported)
    final_weights: dict[str, np.ndarray] | None = None  # actor at the end of the run

    def scalars(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if not k.endswith("_weights")}


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
                   disable=not progress, mininterval=1.0)
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


def _report(report: BuildReport | None, part: str, done: int, total: int,
            hist: TrainHistory | None = None) -> None:
    if report is None:
        return
    report({"stage": "build", "part": part, "done": int(done), "total": int(total),
            "eval_return": hist.eval_returns[-1] if hist is not None and hist.eval_returns else None,
            "target_return": hist.target_return if hist is not None else None})


def _run_mode(spec: BuildSpec) -> str:
    return "to-target" if spec.recipe in ("medium", "medium-replay") else "full-budget"


def _run_hash(spec: BuildSpec) -> str:
    """What decides a behaviour run (not the rows later written): recipes that share a run share it."""
    key = {**spec.key(), "recipe": _run_mode(spec), "transitions": None}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def _save_build_partial(path: Path, spec: BuildSpec, agent: Agent, buf: RingBuffer, hist: TrainHistory,
                        rng: np.random.Generator, step: int, wall_s: float) -> None:
    """Atomically (temp file + rename): a kill while writing leaves the previous checkpoint. Tensors
    and plain types only, so it loads with torch.load(weights_only=True)."""
    ring = buf.state_dict()
    state = {
        "run_hash": _run_hash(spec), "step": step, "wall_s": wall_s, "agent": agent.state_dict(),
        "ring": {**{k: v for k, v in ring.items() if k != "arrays"},
                 "extra_fields": json.dumps(ring["extra_fields"]),
                 "arrays": {k: torch.from_numpy(v) for k, v in ring["arrays"].items()}},
        "history": json.dumps(hist.scalars()),
        "medium_weights": {k: torch.from_numpy(np.asarray(v)) for k, v in (hist.medium_weights or {}).items()},
        "rng": json.dumps(rng.bit_generator.state), "torch_cpu": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_build_partial(path: Path, spec: BuildSpec, agent: Agent, buf: RingBuffer, hist: TrainHistory,
                        rng: np.random.Generator) -> tuple[int, float]:
    """Restore a _save_build_partial checkpoint into fresh objects; returns (step, wall seconds so far)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: the dataset builder's checkpoint does not load ({type(e).__name__}: {e}); "
                         "remove it to train the behaviour policy from scratch") from e
    # the run's key, not the dataset's: medium and medium-replay resume the same interrupted run
    if state.get("run_hash") != _run_hash(spec):
        raise ValueError(f"{path}: written for behaviour run {state.get('run_hash')}, this build's is "
                         f"{_run_hash(spec)}; remove it to train the behaviour policy from scratch")
    step = int(state["step"])
    if not 0 < step < spec.train_steps:
        raise ValueError(f"{path}: step {step} is outside this build's 1..{spec.train_steps - 1}")
    ring = dict(state["ring"])
    ring["extra_fields"] = json.loads(ring["extra_fields"])
    ring["arrays"] = {k: v.numpy() for k, v in ring["arrays"].items()}
    cols = ring["arrays"]
    if len(cols["terminals"]) != step:
        raise ValueError(f"{path}: {len(cols['terminals'])} replay rows for step {step}")
    _end_last_episode(cols)  # the episode it was in cannot be continued (see train_behaviour_policy)
    buf.load_state_dict(ring)
    agent.load_state_dict(state["agent"])
    for k, v in json.loads(state["history"]).items():
        setattr(hist, k, v)
    hist.medium_weights = {k: v.numpy() for k, v in state["medium_weights"].items()} or None
    rng.bit_generator.state = json.loads(state["rng"])
    torch.set_rng_state(state["torch_cpu"])
    return step, float(state["wall_s"])


def _end_last_episode(cols: dict[str, np.ndarray]) -> None:
    """Mark the final row a timeout unless it terminated: the data stops mid-episode there (D4RL)."""
    if len(cols["terminals"]) and not cols["terminals"][-1]:
        cols["timeouts"][-1] = 1.0


def rollout_dataset(policy: Policy, task: str | TaskSpec, n_transitions: int, seed: int,
                    deterministic: bool = False, *, progress: bool = False,
                    report: BuildReport | None = None) -> OfflineDataset:
    """`n_transitions` rows of `policy` acting in make_env(task, seed): D4RL columns, raw rewards,
    timeouts at TimeLimit truncation and on the last row (a partial episode) unless it terminated.
    One env stream in this process: D4RL's way and the benchmark's baseline; build_dataset runs
    `rollout_parallel` (data/parallel_rollout.py: many such streams over worker processes)."""
    task = task if isinstance(task, TaskSpec) else get_task(task)
    n = int(n_transitions)
    bar = tqdm(total=n, desc=f"rollout {task.name}", disable=not progress, mininterval=1.0)

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
