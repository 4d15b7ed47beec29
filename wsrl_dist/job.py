"""Job setup shared by the single-process pipeline (local.py) and the Ray driver (runtime/orchestration/driver.py):
run directory, device, offline dataset resolution, agent construction, checkpoints of the agent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wsrl_dist.algo.agent import Agent, make_agent
from wsrl_dist.config import RunConfig
from wsrl_dist.data.schema import OfflineDataset
from wsrl_dist.envs.tasks import TaskSpec
from wsrl_dist.plan import RunPlan


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is visible; use run.device=cpu")
    return torch.device(name)


def configure_matmul(precision: str, device: torch.device) -> torch.dtype:
    """run.matmul_precision -> torch's float32 matmul mode for this process (learner side); returns
    the fused bundle's matmul input dtype (bf16 for bf16; the rest of the process runs as auto)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision in ("auto", "tf32", "bf16")
        torch.backends.cudnn.allow_tf32 = precision in ("auto", "tf32", "bf16")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def configure_compile_cache(setting: str) -> Path | None:
    """run.compile_cache -> where torch.compile keeps compiled graphs and kernels for this process
    (TORCHINDUCTOR_CACHE_DIR; Triton's kernels go under it too). The GPU bundle's compilation takes
    ~25-37 s on a cold cache and is paid again by every start and resume; Inductor's FX-graph and
    AOT-autograd caches skip most of it once warm (the fused_compile bundle on 2 CPU cores: 47 s cold,
    5.9 s warm). torch's own default is /tmp/torchinductor_<user>, which containers and reboots
    wipe, so `auto` keeps it beside the datasets: $TORCHINDUCTOR_CACHE_DIR when the user set it,
    else ~/.cache/wsrl_dist/inductor. Any other value is the directory to use. A directory that
    cannot be created or written (a read-only or missing home in a container) leaves torch's default
    in place with a warning rather than failing the first compilation; returns the directory in
    use, or None for torch's default."""
    path = setting if setting != "auto" else (os.environ.get("TORCHINDUCTOR_CACHE_DIR") or "~/.cache/wsrl_dist/inductor")
    resolved = Path(path).expanduser()
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        probe = resolved / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        warnings.warn(f"run.compile_cache: cannot use {resolved} ({e}); torch.compile keeps its "
                      f"default cache location", RuntimeWarning, stacklevel=2)
        if os.environ.get("TORCHINDUCTOR_CACHE_DIR") == str(path):
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]  # the unusable one must not reach Inductor
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(resolved)  # read by Inductor at each compile
    return resolved


def prepare_run_dir(cfg: RunConfig, command: str, extra: dict[str, Any] | None = None,
                    announce: bool = True, plan: RunPlan | None = None) -> Path:
    """Create the run dir; write the resolved config and run.json (command, config hash, ...).
    No run.run_dir: <run.storage>/<name> (storage.py; a URI storage: a local staging dir, uploaded
    at checkpoints and the end). The run dir is printed, absolute, at start (`announce`; a multi-seed
    job's seed-<s>/ dirs are not: the job prints its top dir once). `plan`: the job's RunPlan (its
    warmup and pre-training go into run.json); a caller with none (a test) gets its config's."""
    plan = plan if plan is not None else RunPlan.of(cfg)
    from wsrl_dist import storage

    storage.check_store(storage.root(cfg.run.storage))  # a bad URI fails now, not at the first upload
    if cfg.run.run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.run.run_dir = default_run_dir(cfg, f"{cfg.task.name}-{cfg.finetune.method}-s{cfg.run.seed}-{stamp}")
    run_dir = Path(cfg.run.run_dir).expanduser().absolute()
    cfg.run.run_dir = str(run_dir)
    if announce:
        print(f"run dir: {run_dir}" + (f" (uploaded to {upload_uri(cfg)})" if upload_uri(cfg) else ""),
              flush=True)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    cfg.dump(run_dir / "config.yaml")
    info = {
        "command": command, "config_hash": cfg.hash(), "task": cfg.task.name,
        "method": cfg.finetune.method, "warmup_steps": plan.warmup_steps, "seed": cfg.run.seed,
        "pretrain_algo": cfg.pretrain.algo if plan.pretrained else "none",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {}),
    }
    run_json = run_dir / "run.json"
    if run_json.exists():  # resuming: keep the first start's record, note the resume
        old = json.loads(run_json.read_text())
        info = {**old, "resumed": [*old.get("resumed", []), info["started"]]}
    run_json.write_text(json.dumps(info, indent=2))
    return run_dir


def default_run_dir(cfg: RunConfig, name: str) -> str:
    """<run.storage>/<name> on this machine (storage.py)."""
    from wsrl_dist import storage

    return str(storage.local_dir(storage.root(cfg.run.storage), name))


def upload_uri(cfg: RunConfig) -> str | None:
    """Where a URI run.storage wants this run dir copied (None for a local storage)."""
    from wsrl_dist import storage

    root = storage.root(cfg.run.storage)
    if not storage.is_uri(root) or cfg.run.run_dir is None:
        return None
    return f"{root}/{Path(cfg.run.run_dir).name}"


def sync_run_dir(cfg: RunConfig) -> None:
    """Copy the run dir to a URI run.storage (a no-op for a local one)."""
    from wsrl_dist import storage

    uri = upload_uri(cfg)
    if uri is not None:
        storage.upload(Path(cfg.run.run_dir), uri)


def update_run_json(run_dir: Path, **fields: Any) -> None:
    path = Path(run_dir) / "run.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(fields)
    path.write_text(json.dumps(data, indent=2))


def load_offline_dataset(cfg: RunConfig, task: TaskSpec, progress: bool = True,
                         report: Callable[[dict[str, Any]], None] | None = None) -> OfflineDataset:
    """The offline dataset named by cfg.dataset: a D4RL HDF5 file, a Minari dataset, or one built by
    the project's D4RL-recipe builder (cached). `auto` uses the D4RL file when present, else builds.
    `report`: the builder's progress events (data.builder.BuildReport), when it builds."""
    from wsrl_dist.data import d4rl
    from wsrl_dist.envs.make import obs_act_dims

    obs_dim, act_dim = obs_act_dims(task)
    src = cfg.dataset.source
    if src == "auto":
        found = cfg.dataset.path or d4rl.d4rl_dataset_path(task.name, cfg.dataset.root)
        src = "d4rl" if (Path(found).exists() and task.family != "antmaze") else "built"
    if src == "d4rl":
        if task.family == "antmaze":
            # D4RL's antmaze files live in another frame (offset x, y; medium/large mirrored in y)
            # than the gymnasium-robotics mazes; same 29-d shape, so they would load and silently
            # pretrain on a mirrored maze (see envs/wrappers.py). Refuse instead.
            raise ValueError(
                f"{task.name}: original D4RL antmaze files use another maze frame than the "
                "gymnasium-robotics envs; use dataset.source=minari or dataset.source=built")
        if cfg.dataset.path:
            return d4rl.load_d4rl_hdf5(cfg.dataset.path, expected_obs_dim=obs_dim, expected_act_dim=act_dim)
        return d4rl.load_d4rl(task.name, cfg.dataset.root, expected_obs_dim=obs_dim,
                              expected_act_dim=act_dim)
    if src == "minari":
        return _load_minari(cfg, task, obs_dim, act_dim)
    from wsrl_dist.data import builder

    path = builder.build_dataset(build_spec(cfg, task.name), progress=progress,
                                 checkpoint_every=cfg.dataset.build_checkpoint_every, report=report)
    return d4rl.load_d4rl_hdf5(path, expected_obs_dim=obs_dim, expected_act_dim=act_dim)


def _load_minari(cfg: RunConfig, task: TaskSpec, obs_dim: int, act_dim: int) -> OfflineDataset:
    """Minari dataset(s) in the env's observation layout; antmaze rewards relabelled against the
    task's fixed goal (Minari's play/diverse data were collected with per-episode random goals)."""
    import numpy as np

    from wsrl_dist.data.minari import load_minari
    from wsrl_dist.data.schema import OfflineDataset as Dataset
    from wsrl_dist.envs.make import dataset_obs_transform

    ids = [cfg.dataset.minari_id] if cfg.dataset.minari_id else (
        [task.minari_id, *task.minari_concat] if task.minari_id else [])
    if not ids:
        raise ValueError(f"task {task.name!r} has no Minari dataset; set dataset.minari_id")
    parts = [load_minari(i, cfg.dataset.root, obs_transform=dataset_obs_transform(task),
                         obs_transform_batched=True, expected_obs_dim=obs_dim, expected_act_dim=act_dim)
             for i in ids]
    cols = {k: np.concatenate([p.columns()[k] for p in parts]) for k in parts[0].columns()}
    if task.family == "antmaze":
        from wsrl_dist.envs.wrappers import antmaze_reward

        cols["rewards"] = antmaze_reward(cols["next_observations"][:, :2], task.make_kwargs()["maze_map"])
    return Dataset.from_columns(cols, metadata={**parts[0].metadata, "minari_ids": ",".join(ids)},
                                source=",".join(p.source for p in parts))


def dataset_key(cfg: RunConfig, task: TaskSpec) -> tuple:
    """What decides the dataset load_offline_dataset(cfg, task) returns: the task and cfg.dataset, and
    run.seed where a built dataset takes its seed from it (dataset.build_seed unset)."""
    d = cfg.dataset
    seeded = d.source in ("auto", "built") and d.build_seed is None
    return task.name, json.dumps(dataclasses.asdict(d), sort_keys=True, default=str), cfg.run.seed if seeded else None


def seed_samplers(cfgs: list[RunConfig], task: TaskSpec, device: torch.device,
                  report: Callable[[int], Callable[[dict[str, Any]], None] | None] = lambda i: None,
                  progress: bool = False) -> list[tuple[Any, OfflineDataset]]:
    """(DeviceSampler seeded with run.seed, dataset) per config, for S seeds pre-training together:
    seeds whose dataset_key and discount agree (a study's, one dataset per task) share ONE load, one
    training_arrays and one device copy of the columns (S reads of a 1M-row file and S device copies
    before); each sampler keeps its own generator. `report(i)`: config i's builder progress callback."""
    from wsrl_dist.pretrain import DeviceSampler, training_arrays

    loaded: dict[tuple, tuple[Any, OfflineDataset]] = {}  # key -> (columns, dataset)
    out = []
    for i, cfg in enumerate(cfgs):
        key = (*dataset_key(cfg, task), cfg.sac.discount)
        if key not in loaded:
            dataset = load_offline_dataset(cfg, task, progress=progress, report=report(i))
            loaded[key] = (training_arrays(dataset, task, cfg.sac.discount), dataset)
        cols, dataset = loaded[key]
        sampler = DeviceSampler(cols, device, cfg.run.seed)
        loaded[key] = (sampler.cols, dataset)  # the next seed's sampler reuses these device tensors
        out.append((sampler, dataset))
    return out


def build_spec(cfg: RunConfig, task_name: str):
    """The builder's BuildSpec from cfg.dataset (recipe read off the task name, e.g. 'medium')."""
    from wsrl_dist.data import builder

    d = cfg.dataset
    return builder.BuildSpec(
        task=task_name, recipe=builder.recipe_from_task(task_name),
        transitions=d.build_transitions, seed=cfg.run.seed if d.build_seed is None else d.build_seed,
        hidden=list(d.build_hidden),
        random_steps=d.build_random_steps, eval_every=d.build_eval_every,
        device=str(resolve_device(cfg.run.device)),  # the behaviour SAC trains where the learner would
        **({"train_steps": d.build_train_steps} if d.build_train_steps else {}),
        **({"target_return": d.build_target_return} if d.build_target_return is not None else {}),
    )


def build_agent(cfg: RunConfig, obs_dim: int, act_dim: int, device: torch.device,
                capturable: bool = False) -> Agent:
    algo = cfg.pretrain.algo
    cql = cfg.pretrain.cql
    return make_agent(
        obs_dim, act_dim, cfg.net, cfg.sac,
        with_value=algo == "iql",
        lagrange_init=cql.cql_alpha_lagrange_init if (cql.cql_autotune_alpha and algo != "iql") else None,
        lagrange_lr=cql.cql_alpha_lagrange_lr,
        device=device, capturable=capturable,
    )


def save_agent(path: Path, agent: Agent, counters: dict[str, Any]) -> None:
    """torch.save of the agent state + counters, atomically (loadable with weights_only=True)."""
    from wsrl_dist.durable import replace_durably

    state = {"agent": agent.state_dict(), "counters": counters}
    replace_durably(Path(path), lambda f: torch.save(state, f))  # fsynced before the rename


def load_agent(path: str | Path, agent: Agent) -> dict[str, Any]:
    """Restore an agent saved by save_agent; SAC may load a CQL/IQL checkpoint (extras skipped)."""
    from wsrl_dist.errors import CheckpointError

    try:
        state = torch.load(path, map_location=agent.device, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no such checkpoint file") from e
    except Exception as e:  # a truncated file: PytorchStreamReader's traceback named no path
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: does not load ({type(e).__name__}: {first})") from e
    agent.load_state_dict(state["agent"], skip_missing=True)
    return state["counters"]
