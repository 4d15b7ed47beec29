"""One config system: section dataclasses composed into RunConfig, layered from YAML and overrides.

Layering: dataclass defaults -> configs/wsrl.yaml -> configs/tasks/<family>.yaml (picked from the task
name) -> user YAML files -> `--set a.b=c` overrides. Unknown keys and wrong types fail naming the dotted
key (and the nearest valid name). Section dataclasses live beside the code they configure. The strict
merge of layers and overrides (and ConfigError) is in config_merge.py, re-exported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wsrl_dist.algo.cql import CQLConfig
from wsrl_dist.algo.fast import FUSED_MODES
from wsrl_dist.algo.fast import MODES as FAST_MODES
from wsrl_dist.algo.iql import IQLConfig
from wsrl_dist.algo.nets import NetConfig
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.config_merge import (  # callers import them here
    ConfigError,
    _read_yaml,
    merge,
    parse_override,
)
from wsrl_dist.envs.tasks import TaskConfig
from wsrl_dist.runtime_config import RuntimeConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
FINETUNE_METHODS = (
    "wsrl",  # pre-trained policy + Q, K-step warmup, SAC on online data only (the paper's method)
    "wsrl_no_warmup",  # ablation: same without the warmup stage
    "sac_scratch",  # no pre-training; random-init policy collects the first K steps
    "rlpd",  # SAC from scratch with offline data retained (offline_ratio 0.5)
    "offline_continued",  # keep the pre-training loss online, no offline data (no retention)
    "offline_retained",  # keep the pre-training loss online with offline data retained
)


@dataclass
class DatasetConfig:
    """Where offline data comes from: a D4RL HDF5 file, a Minari dataset, or our own builder."""

    source: str = "auto"  # auto (d4rl file if present, else built) | d4rl | minari | built
    path: str | None = None  # explicit HDF5 path (d4rl source)
    root: str | None = None  # D4RL / Minari root override
    minari_id: str | None = None  # None -> the task registry's Minari id
    build_transitions: int = 1_000_000  # builder: rows written (D4RL: 1M per file; medium-replay: the buffer)
    build_train_steps: int | None = None  # builder: SAC env steps for the behaviour policy (None: recipe)
    build_target_return: float | None = None  # builder: stop training at this return (None: recipe)
    build_hidden: list[int] = field(default_factory=lambda: [256, 256])  # behaviour policy nets
    build_random_steps: int = 5_000  # builder: uniform-random actions before SAC updates start
    build_eval_every: int = 10_000  # builder: env steps between behaviour-policy evaluations
    # builder: env steps between checkpoints of the behaviour run (0 = none); a killed build resumes
    # from the last one (<cache>/runs/*.partial.pt) when run again
    build_checkpoint_every: int = 50_000
    # builder: the seed of the behaviour run and its rollouts (None: run.seed, one dataset per seed).
    # A study fixes it so that every seed learns from the same dataset, as with a D4RL file
    build_seed: int | None = None


@dataclass
class PretrainConfig:
    algo: str = "calql"  # calql | cql | iql | none
    steps: int = 250_000
    batch_size: int = 256
    checkpoint: str | None = None  # load a pre-trained agent instead of training
    # write <run_dir>/checkpoints/pretrain-partial.pt every this many steps (0 = never), so that a
    # resumed run (`--resume RUN_DIR`) killed during pre-training continues from there instead of
    # starting its 250k steps over (~8 h on 2 CPU cores; ~10 min on a GPU)
    checkpoint_every: int = 25_000
    # Inductor's GEMM autotuning for the compiled pre-training step (fused_compile_graph): it times
    # Triton GEMM configs for each matmul shape of the step and keeps the fastest. On an H100 the CQL
    # step went 1,924 -> 2,207 steps/s (+15%, BENCHMARKS.md), but the first compilation took
    # 126-191 s instead of ~25 s. Off by default: at 250k steps it saves ~15-20 s, far less than it
    # costs on a cold cache. For longer or repeated runs: run.compile_cache keeps Inductor's cache,
    # from which a later run of the same shapes should compile without tuning again (not yet
    # measured). No effect on steps that are not compiled.
    max_autotune_gemm: bool = False
    cql: CQLConfig = field(default_factory=CQLConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)


@dataclass
class FinetuneConfig:
    method: str = "wsrl"
    warmup_steps: int = 5_000  # K (counted inside online_steps, as the reference does)
    online_steps: int = 500_000
    offline_ratio: float = 0.0  # fraction of each batch from offline data (retention baselines)
    replay_capacity: int = 2_000_000
    eval_every: int = 20_000
    eval_episodes: int = 20
    # Q-vs-Monte-Carlo probes (evaluation.q_probe; `launch` only): every this many online env steps
    # up to q_probe_until, and beside every evaluation, q_probe_episodes episodes of the sampled policy
    # set the critic's Q against their discounted returns-to-go ("q_probe" rows in metrics.jsonl: the
    # onset of Q divergence after the switch to online). 0 = off. Off the training path.
    q_probe_every: int = 0
    q_probe_until: int = 25_000
    q_probe_episodes: int = 2


@dataclass
class RunSection:
    seed: int = 0  # a multi-seed run ignores it
    # Several seeds of this config trained by ONE learner (`wsrl-dist launch` only): each seed gets its
    # own rollout worker group, replay shards, weights and UTD limiter, and <run_dir>/seed-<s>/ holds
    # what a single-seed run dir holds (runtime/orchestration/stages.py). Empty (default) or one entry: a plain
    # single-seed run with run.seed (one entry replaces run.seed).
    seeds: list[int] = field(default_factory=list)
    # where run dirs go (wsrl_dist/storage.py): auto = $WSRL_DIST_STORAGE or ~/wsrl_dist/runs (made
    # absolute, so `ray job submit`'s temporary working dir never holds results), a path, or a URI
    # (s3://, gs://: staged locally, copied there at checkpoints and the end; needs fsspec or pyarrow)
    storage: str = "auto"
    run_dir: str | None = None  # None -> <storage>/<task>-<method>-s<seed>-<timestamp>; explicit wins
    device: str = "auto"  # auto | cpu | cuda
    # auto (fused_compile_graph on GPU, eager on CPU) | eager | compile | cuda_graph | compile_graph, and the
    # same four over algo/fused.py's formulation: fused | fused_compile | fused_graph | fused_compile_graph
    fast_path: str = "auto"
    # GPU float32 matmuls: auto = tf32, which is what the official JAX code ran with (JAX computes
    # float32 dots in TF32 on recent GPUs by default) | tf32 | fp32 (full precision, slower) | bf16:
    # the online bundle's matmuls take bf16 inputs with fp32 sums (fp32 weights, Adam, LayerNorm and
    # losses; algo/fused.py `_mm`). Fused fast paths only (auto runs `fused` on CPU); the other
    # float32 matmuls of the learner (pre-training) run as auto
    matmul_precision: str = "auto"
    # where torch.compile caches compiled bundles (job.configure_compile_cache): auto =
    # $TORCHINDUCTOR_CACHE_DIR or ~/.cache/wsrl_dist/inductor (kept across restarts, unlike torch's
    # /tmp default), or a directory; a warm cache turns the ~30 s compilation at start into seconds
    compile_cache: str = "auto"
    log_every: int = 1_000
    checkpoint_every: int = 50_000
    progress: bool = True


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    net: NetConfig = field(default_factory=NetConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    run: RunSection = field(default_factory=RunSection)

    def validate(self) -> RunConfig:
        try:  # section checks raise ValueError; the CLI reports ConfigError cleanly, not as a traceback
            self.net.validate()
            self.sac.validate()
            self.pretrain.cql.validate()
            self.pretrain.iql.validate()
            self.runtime.validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from e
        _check_choice("pretrain.algo", self.pretrain.algo, ("calql", "cql", "iql", "none"))
        _check_choice("finetune.method", self.finetune.method, FINETUNE_METHODS)
        _check_choice("dataset.source", self.dataset.source, ("auto", "d4rl", "minari", "built"))
        _check_choice("run.device", self.run.device, ("auto", "cpu", "cuda"))
        _check_choice("run.fast_path", self.run.fast_path, ("auto", *FAST_MODES))
        _check_choice("run.matmul_precision", self.run.matmul_precision, ("auto", "tf32", "fp32", "bf16"))
        if self.pretrain.checkpoint_every < 0:
            raise ConfigError(f"pretrain.checkpoint_every must be >= 0 (0 = never), got {self.pretrain.checkpoint_every}")
        if self.dataset.build_checkpoint_every < 0:
            raise ConfigError("dataset.build_checkpoint_every must be >= 0 (0 = never), got "
                              f"{self.dataset.build_checkpoint_every}")
        if self.dataset.build_seed is not None and self.dataset.build_seed < 0:
            raise ConfigError(f"dataset.build_seed must be >= 0 (or null: run.seed), got {self.dataset.build_seed}")
        if not str(self.run.compile_cache).strip():
            raise ConfigError("run.compile_cache: empty; use auto or a directory for torch.compile's cache")
        if self.run.matmul_precision == "bf16":
            _check_bf16(self.run.fast_path, self.finetune.method)
        if not 0.0 <= self.finetune.offline_ratio < 1.0:
            raise ConfigError(f"finetune.offline_ratio must be in [0, 1), got {self.finetune.offline_ratio}")
        ft = self.finetune
        if ft.q_probe_every < 0 or ft.q_probe_until < 0 or ft.q_probe_episodes < 1:
            raise ConfigError("finetune.q_probe_every and finetune.q_probe_until must be >= 0 (0 = off) and "
                              f"finetune.q_probe_episodes >= 1, got {ft.q_probe_every}, {ft.q_probe_until}, "
                              f"{ft.q_probe_episodes}")
        if self.finetune.warmup_steps < 0 or self.finetune.online_steps < 0:
            raise ConfigError("finetune.warmup_steps and finetune.online_steps must be >= 0")
        _check_sizes(self)
        _check_seeds(self.run.seeds)
        if self.runtime.replay_groups:
            _check_replay_groups(self)
        if len(self.run.seeds) == 1:  # one seed is a plain run: every code path reads run.seed
            self.run.seed, self.run.seeds = self.run.seeds[0], []
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short content hash of the resolved config. Settings that cannot change the numbers a run
        produces are left out (where it writes, progress bars, caches, how often pre-training
        checkpoints), so configs hash as they did before those settings existed."""
        d = self.to_dict()
        d["run"] = {k: v for k, v in d["run"].items() if k not in ("run_dir", "storage", "progress", "compile_cache")}
        d["pretrain"] = {k: v for k, v in d["pretrain"].items() if k not in ("checkpoint_every", "max_autotune_gemm")}
        d["pretrain"]["cql"] = {k: v for k, v in d["pretrain"]["cql"].items() if k != "fused_row_split"}
        # Q-vs-MC probes only read the critic (evaluation.q_probe): the training numbers are the same
        d["finetune"] = {k: v for k, v in d["finetune"].items() if not k.startswith("q_probe_")}
        d["dataset"] = {k: v for k, v in d["dataset"].items() if k != "build_checkpoint_every"
                        and not (k == "build_seed" and v is None)}  # configs from before it hash the same
        # how a refused rollout worker waits for its next grant (in the learner, or polling); how long
        # the driver's watchdog waits before it calls the job stuck; the tests' slow-learner delay;
        # how replay shards survive a kill (restarts, snapshot interval) and the timed checkpoints:
        # the same numbers when nothing dies
        d["runtime"] = {k: v for k, v in d["runtime"].items()
                        if k not in ("grant_wait_s", "stall_timeout_s", "test_learner_delay_s",
                                     "shard_max_restarts", "replay_snapshot_s", "checkpoint_every_s")}
        if not d["run"]["seeds"]:  # single-seed configs hash as they did before run.seeds existed
            del d["run"]["seeds"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _check_replay_groups(cfg: RunConfig) -> None:
    """runtime.replay_groups runs a sample request's bundles as one call on the feed's own buffers:
    SAC bundles of one seed on online rows alone (a fast path other than fused_* runs the group's
    bundles one by one: no gain, same math)."""
    why = None
    if cfg.finetune.method in ("rlpd", "offline_continued", "offline_retained"):
        why = f"finetune.method={cfg.finetune.method} (offline rows or a kept pre-training loss per step)"
    elif len(cfg.run.seeds) > 1:
        why = "run.seeds (several seeds already step in one call)"
    if why:
        raise ConfigError(f"runtime.replay_groups=true does not work with {why}; set it false")


# Intervals and sizes that drive loops (`next += every`, `step % every`) or allocations: 0 or a
# negative value spun the driver forever (run.checkpoint_every=0), divided by zero in pre-training
# (run.log_every=0) or crashed deep inside a buffer with a traceback naming no key (issue 17).
_POSITIVE = (
    ("run.log_every", 1), ("run.checkpoint_every", 1), ("finetune.eval_every", 1),
    ("finetune.replay_capacity", 1), ("pretrain.batch_size", 1), ("dataset.build_transitions", 1),
    ("dataset.build_eval_every", 1), ("task.max_episode_steps", 1),
)
# 0 is meaningful here: no steps / no evaluation episodes (the eval is skipped) / no random steps
_NON_NEGATIVE = ("pretrain.steps", "finetune.eval_episodes", "dataset.build_random_steps")


def _get(cfg: RunConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _check_sizes(cfg: RunConfig) -> None:
    for key, low in _POSITIVE:
        value = _get(cfg, key)
        if value is not None and value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    for key in _NON_NEGATIVE:
        value = _get(cfg, key)
        if value is not None and value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")


def _check_seeds(seeds: list[int]) -> None:
    """run.seeds: distinct non-negative integers (types were checked by merge already)."""
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"run.seeds[{i}]: expected a non-negative integer, got {s!r}")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"run.seeds: each seed may appear once, repeated: {dup}")


def _check_bf16(fast_path: str, method: str) -> None:
    """bf16 matmuls exist in the fused online SAC bundle only (algo/fused.py): refuse the rest."""
    if fast_path not in ("auto", *FUSED_MODES):
        raise ConfigError(f"run.matmul_precision: bf16 runs only on the fused fast paths (auto or one of "
                          f"{list(FUSED_MODES)}), not run.fast_path={fast_path}")
    if method.startswith("offline_"):
        raise ConfigError(f"run.matmul_precision: bf16 is for the online SAC bundle; finetune.method="
                          f"{method} keeps the offline loss online, in fp32 only")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")


def family_config_path(task_name: str) -> Path:
    from wsrl_dist.envs.tasks import UnknownTaskError, get_task

    try:
        family = get_task(task_name).family
    except UnknownTaskError as e:
        raise ConfigError(f"task.name: {e.args[0] if e.args else e}") from e
    return CONFIG_DIR / "tasks" / f"{family}.yaml"


def load(paths: list[str | Path] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Resolve a RunConfig: defaults, wsrl.yaml, the task family's YAML, `paths`, then overrides."""
    user = [_read_yaml(Path(p)) for p in (paths or [])]
    sets = [parse_override(o) for o in (overrides or [])]
    # the task name decides which family YAML to layer, so find it before merging
    task_name = "hopper-medium-v2"
    for layer in [_read_yaml(CONFIG_DIR / "wsrl.yaml"), *user, *sets]:
        task = layer.get("task")
        if isinstance(task, dict) and isinstance(task.get("name"), str):
            task_name = task["name"]  # other shapes and types fail in merge() below, naming the key
    layers = [_read_yaml(CONFIG_DIR / "wsrl.yaml"), _read_yaml(family_config_path(task_name))]
    cfg = RunConfig()
    for layer in [*layers, *user, *sets]:
        merge(cfg, layer)
    return cfg.validate()


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from `to_dict()` output (checkpoints, Ray job arguments)."""
    cfg = RunConfig()
    merge(cfg, data)
    return cfg.validate()
