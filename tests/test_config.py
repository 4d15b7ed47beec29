"""Config system (wsrl_dist.config): YAML layering by task family, strict overrides, round trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wsrl_dist import config
from wsrl_dist.config import ConfigError, RunConfig

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- layering


def test_defaults_come_from_wsrl_yaml_reference_values():
    cfg = config.load()
    assert cfg.sac.critic_ensemble_size == 10 and cfg.sac.critic_subsample_size == 2
    assert cfg.sac.utd == 4 and cfg.sac.batch_size == 256
    assert (cfg.sac.actor_lr, cfg.sac.critic_lr, cfg.sac.temperature_lr) == (1e-4, 3e-4, 1e-4)
    assert cfg.sac.backup_entropy is False and cfg.finetune.warmup_steps == 5000
    assert cfg.net.layer_norm is True
    # official nets: one Q head shared by the ensemble, last hidden layers of both nets at gain 1e-2
    assert cfg.net.shared_q_head is True
    assert cfg.net.kernel_scale_final == 0.01 and cfg.net.critic_kernel_scale_final == 0.01


def test_antmaze_task_layers_the_antmaze_family_yaml():
    cfg = config.load(overrides=["task.name=antmaze-large-diverse-v2"])
    assert cfg.net.critic_hidden == [256] * 4 and cfg.net.actor_hidden == [256, 256]
    assert cfg.net.std_parameterization == "uniform"
    assert cfg.sac.max_target_backup is True
    assert cfg.pretrain.algo == "calql" and cfg.pretrain.steps == 1_000_000
    assert cfg.pretrain.cql.cql_autotune_alpha is True and cfg.pretrain.cql.cql_target_action_gap == 0.8


def test_locomotion_task_layers_the_locomotion_family_yaml():
    cfg = config.load(overrides=["task.name=walker2d-medium-replay-v2"])
    assert cfg.net.critic_hidden == [256, 256] and cfg.net.std_parameterization == "exp"
    assert cfg.sac.max_target_backup is False
    assert cfg.pretrain.algo == "cql" and cfg.pretrain.cql.cql_alpha == 5.0
    assert cfg.pretrain.cql.cql_autotune_alpha is False and cfg.pretrain.steps == 250_000


def test_kitchen_and_adroit_family_values():
    kitchen = config.load(overrides=["task.name=kitchen-partial-v0"])
    assert kitchen.net.critic_hidden == [512] * 3 and kitchen.net.kernel_scale_final is None
    assert kitchen.net.critic_kernel_scale_final is None  # official kitchen: no kernel_scale_final at all
    assert kitchen.pretrain.cql.cql_importance_sample is False and kitchen.pretrain.cql.cql_alpha == 5.0
    adroit = config.load(overrides=["task.name=pen-binary-v0"])
    assert adroit.net.actor_hidden == [512, 512] and adroit.pretrain.steps == 20_000
    assert adroit.pretrain.cql.cql_alpha == 1.0


def test_task_name_in_a_user_yaml_picks_the_family(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("task:\n  name: antmaze-umaze-v2\n")
    assert config.load([user]).net.std_parameterization == "uniform"


def test_user_yaml_overrides_the_family_and_set_overrides_the_user_yaml(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("net:\n  critic_hidden: [32, 32]\nsac:\n  utd: 8\n  critic_lr: 1.0e-3\n")
    cfg = config.load([user], ["task.name=antmaze-large-play-v2", "sac.utd=2"])
    assert cfg.net.critic_hidden == [32, 32]  # user file beat antmaze.yaml's 4x256
    assert cfg.sac.utd == 2  # --set beat the user file
    assert cfg.sac.critic_lr == 1e-3
    assert cfg.net.std_parameterization == "uniform"  # untouched family value survives


# ---------------------------------------------------------------- --set overrides


@pytest.mark.parametrize("text, path, want", [
    ("sac.utd=8", ("sac", "utd"), 8),
    ("sac.actor_lr=1e-3", ("sac", "actor_lr"), 1e-3),  # YAML 1.1 reads this as a string: still a float
    ("sac.critic_lr=0.002", ("sac", "critic_lr"), 0.002),
    ("sac.discount=1", ("sac", "discount"), 1.0),  # int accepted where a float is declared
    ("sac.backup_entropy=true", ("sac", "backup_entropy"), True),
    ("net.critic_hidden=[64, 32]", ("net", "critic_hidden"), [64, 32]),
    ("net.kernel_scale_final=null", ("net", "kernel_scale_final"), None),
    ("sac.target_entropy=-2.5", ("sac", "target_entropy"), -2.5),
    ("run.run_dir=/tmp/x=y", ("run", "run_dir"), "/tmp/x=y"),  # split at the first '=' only
])
def test_set_overrides_are_parsed_by_type(text, path, want):
    cfg = config.load(overrides=[text])
    got = getattr(getattr(cfg, path[0]), path[1])
    assert got == want and type(got) is type(want)


def test_later_overrides_win():
    assert config.load(overrides=["sac.utd=3", "sac.utd=5"]).sac.utd == 5


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        config.parse_override("sac.utd")


# ---------------------------------------------------------------- errors name the key


@pytest.mark.parametrize("text, key, suggestion", [
    ("sac.critc_lr=1.0", "sac.critc_lr", "sac.critic_lr"),
    ("finetune.warmup_step=10", "finetune.warmup_step", "finetune.warmup_steps"),
    ("pretrain.cql.cql_alpah=1.0", "pretrain.cql.cql_alpah", "pretrain.cql.cql_alpha"),
])
def test_unknown_key_error_names_the_dotted_path_and_the_nearest_key(text, key, suggestion):
    with pytest.raises(ConfigError) as e:
        config.load(overrides=[text])
    assert f"'{key}'" in str(e.value) and f"'{suggestion}'" in str(e.value)


def test_unknown_section_lists_the_valid_sections():
    with pytest.raises(ConfigError, match="'zzz'.*sac"):
        config.load(overrides=["zzz.a=1"])


@pytest.mark.parametrize("text, key", [
    ("sac.utd=abc", "sac.utd"),
    ("sac.utd=2.5", "sac.utd"),
    ("sac.utd=true", "sac.utd"),  # bool is not an int here
    ("sac.actor_lr=fast", "sac.actor_lr"),
    ("sac.backup_entropy=1", "sac.backup_entropy"),
    ("net.critic_hidden=256", "net.critic_hidden"),
    ("net.critic_hidden=[256, wide]", "net.critic_hidden[1]"),
    ("task.name=5", "task.name"),
    ("sac=3", "sac"),
])
def test_wrong_type_names_the_key(text, key):
    with pytest.raises(ConfigError) as e:
        config.load(overrides=[text])
    assert str(e.value).startswith(f"{key}:")


def test_section_checks_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="sac.critic_subsample_size"):
        config.load(overrides=["sac.critic_subsample_size=11"])
    with pytest.raises(ConfigError, match="net.std_parameterization"):
        config.load(overrides=["net.std_parameterization=softplus"])
    with pytest.raises(ConfigError, match="finetune.offline_ratio"):
        config.load(overrides=["finetune.offline_ratio=1.0"])


def test_unknown_task_is_a_config_error_naming_close_tasks():
    with pytest.raises(ConfigError) as e:
        config.load(overrides=["task.name=hoper-medium-v2"])
    msg = str(e.value)
    assert msg.startswith("task.name:") and "hopper-medium-v2" in msg


@pytest.mark.parametrize("text, key", [
    ("finetune.method=wsrl_plus", "finetune.method"),
    ("pretrain.algo=bcq", "pretrain.algo"),
    ("dataset.source=s3", "dataset.source"),
    ("run.fast_path=jit", "run.fast_path"),
    ("run.matmul_precision=fp8", "run.matmul_precision"),
])
def test_bad_choice_values_name_the_key_and_the_choices(text, key):
    with pytest.raises(ConfigError) as e:
        config.load(overrides=[text])
    assert str(e.value).startswith(f"{key}:")


@pytest.mark.parametrize("fast_path", ["auto", "fused", "fused_compile", "fused_graph", "fused_compile_graph"])
def test_bf16_matmuls_are_accepted_on_the_fused_fast_paths(fast_path):
    cfg = config.load(overrides=["run.matmul_precision=bf16", f"run.fast_path={fast_path}"])
    assert cfg.run.matmul_precision == "bf16"


@pytest.mark.parametrize("override, names", [
    ("run.fast_path=eager", ["run.fast_path=eager", "fused_compile_graph"]),
    ("run.fast_path=compile_graph", ["run.fast_path=compile_graph", "fused"]),
    ("finetune.method=offline_continued", ["finetune.method=offline_continued"]),
])
def test_bf16_matmuls_elsewhere_are_refused_naming_the_setting(override, names):
    """bf16 exists only in the fused online SAC bundle: no silent fp32 run under a bf16 config."""
    with pytest.raises(ConfigError) as e:
        config.load(overrides=["run.matmul_precision=bf16", override])
    assert str(e.value).startswith("run.matmul_precision: bf16")
    assert all(n in str(e.value) for n in names)


@pytest.mark.parametrize("body", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_file_that_is_not_a_mapping_is_rejected(tmp_path, body):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match="bad.yaml.*mapping"):
        config.load([path])


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("sac: {utd: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        config.load([path])


def test_section_given_a_scalar_in_a_yaml_file_names_the_section(tmp_path):
    path = tmp_path / "flat.yaml"
    path.write_text("task: hopper-medium-v2\n")
    with pytest.raises(ConfigError, match="^task: expected a mapping"):
        config.load([path])


def test_empty_yaml_file_changes_nothing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert config.load([path]) == config.load()


# ---------------------------------------------------------------- round trips and hashes


def test_from_dict_of_to_dict_round_trips():
    cfg = config.load(overrides=["task.name=antmaze-medium-play-v2", "sac.utd=7", "sac.actor_lr=2e-4"])
    again = config.from_dict(cfg.to_dict())
    assert again == cfg and again.hash() == cfg.hash()
    assert again.net.critic_hidden == [256] * 4


def test_dumped_config_yaml_reloads_to_the_same_config(tmp_path):
    cfg = config.load(overrides=["task.name=kitchen-mixed-v0", "sac.target_entropy=-3.0",
                                 "net.kernel_scale_final=1e-3"])
    cfg.dump(tmp_path / "config.yaml")
    again = config.load([tmp_path / "config.yaml"])
    assert again == cfg and again.hash() == cfg.hash()


def test_from_dict_is_strict():
    data = RunConfig().to_dict()
    data["sac"]["utd_ratio"] = 4
    with pytest.raises(ConfigError, match="sac.utd_ratio"):
        config.from_dict(data)


def test_hash_tracks_hyperparameters_but_not_run_dir_or_progress():
    base = config.load()
    assert config.load(overrides=["run.run_dir=/somewhere", "run.progress=false"]).hash() == base.hash()
    # nor caches and checkpoint intervals: they change no number the run produces
    assert config.load(overrides=["run.compile_cache=/tmp/c", "pretrain.checkpoint_every=7",
                                  "dataset.build_checkpoint_every=9"]).hash() == base.hash()
    with pytest.raises(ConfigError, match=r"dataset\.build_checkpoint_every must be >= 0"):
        config.load(overrides=["dataset.build_checkpoint_every=-1"])
    assert config.load(overrides=["runtime.grant_wait_s=0"]).hash() == base.hash()  # how workers wait
    # the fused CQL step's split-K: the order of a sum, not the math (algo/fused_nets.py row_split)
    assert config.load(overrides=["pretrain.cql.fused_row_split=8"]).hash() == base.hash()
    assert config.load(overrides=["pretrain.cql.fused_row_split=8"]).pretrain.cql.fused_row_split == 8
    with pytest.raises(ConfigError, match=r"fused_row_split must be >= 0"):
        config.load(overrides=["pretrain.cql.fused_row_split=-2"])
    with pytest.raises(ConfigError, match=r"runtime\.grant_wait_s must be in \[0, 10\] seconds, got -1"):
        config.load(overrides=["runtime.grant_wait_s=-1"])
    assert config.load(overrides=["sac.critic_lr=0.0003000001"]).hash() != base.hash()
    assert config.load(overrides=["run.seed=1"]).hash() != base.hash()
    assert len(base.hash()) == 12 and int(base.hash(), 16) >= 0


def test_hash_is_stable_across_interpreters():
    code = "from wsrl_dist import config; print(config.load(overrides=['sac.utd=3']).hash())"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                           env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout.strip()
            for seed in ("1", "2")}
    assert outs == {config.load(overrides=["sac.utd=3"]).hash()}


# ---------------------------------------------------------------- run.seeds


@pytest.mark.parametrize("value, message", [
    ("[0, -1]", r"run\.seeds\[1\]: expected a non-negative integer, got -1"),
    ("[0, 1, 0]", r"run\.seeds: each seed may appear once, repeated: \[0\]"),
    ("[0, 1.5]", r"run\.seeds\[1\]: expected an integer, got 1\.5"),
    ("[true, 2]", r"run\.seeds\[0\]: expected an integer, got True"),
    ("[a, b]", r"run\.seeds\[0\]: expected an integer, got 'a'"),
    ("3", r"run\.seeds: expected a list, got int 3"),
])
def test_bad_run_seeds_fail_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        config.load(overrides=[f"run.seeds={value}"])


def test_run_seeds_default_empty_one_entry_is_run_seed_and_single_seed_hash_is_unchanged():
    plain = config.load(overrides=["run.seed=3"])
    assert plain.run.seeds == []
    one = config.load(overrides=["run.seeds=[3]"])
    assert (one.run.seed, one.run.seeds) == (3, [])
    assert one.hash() == plain.hash()
    d = plain.to_dict()
    del d["run"]["seeds"]  # a config.yaml written before run.seeds existed still loads
    assert config.from_dict(d).hash() == plain.hash()
    many = config.load(overrides=["run.seeds=[4, 0, 9]"])
    assert many.run.seeds == [4, 0, 9] and many.hash() != plain.hash()


def test_wsrl_dist_run_refuses_several_seeds(tmp_path):
    out = subprocess.run([sys.executable, "-m", "wsrl_dist.cli", "run", "run.seeds=[0,1]",
                          f"run.run_dir={tmp_path / 'r'}"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "run.seeds=[0, 1]" in out.stderr and "launch" in out.stderr
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- intervals and sizes (issue 17)


@pytest.mark.parametrize("override, message", [
    # each of these spun a loop forever, divided by zero, or crashed naming no key
    ("run.checkpoint_every=0", r"run\.checkpoint_every must be >= 1, got 0"),
    ("run.log_every=0", r"run\.log_every must be >= 1, got 0"),
    ("finetune.eval_every=0", r"finetune\.eval_every must be >= 1, got 0"),
    ("finetune.replay_capacity=0", r"finetune\.replay_capacity must be >= 1, got 0"),
    ("finetune.replay_capacity=-3", r"finetune\.replay_capacity must be >= 1, got -3"),
    ("pretrain.batch_size=0", r"pretrain\.batch_size must be >= 1, got 0"),
    ("pretrain.steps=-1", r"pretrain\.steps must be >= 0, got -1"),
    ("finetune.eval_episodes=-2", r"finetune\.eval_episodes must be >= 0, got -2"),
    ("dataset.build_transitions=0", r"dataset\.build_transitions must be >= 1, got 0"),
    ("task.max_episode_steps=0", r"task\.max_episode_steps must be >= 1, got 0"),
    ("runtime.max_frame_bytes=0", r"runtime\.max_frame_bytes must be >= 1048576"),
    ("runtime.max_restarts=-5", r"runtime\.max_restarts must be >= 0, got -5"),
    ("runtime.restart_timeout=0", r"runtime\.restart_timeout must be > 0 seconds, got 0"),
    ("runtime.stall_timeout_s=-1", r"runtime\.stall_timeout_s must be > 0 seconds, got -1"),
    ("runtime.worker_cpus=-1", r"runtime\.worker_cpus must be >= 0, got -1"),
    ("runtime.metrics_port=70000", r"runtime\.metrics_port must be in \[0, 65535\]"),
    ("runtime.shard_max_restarts=-1", r"runtime\.shard_max_restarts must be >= 0, got -1"),
    ("runtime.replay_snapshot_s=-1", r"runtime\.replay_snapshot_s must be >= 0 seconds \(0 = off\), got -1"),
    ("runtime.checkpoint_every_s=-5", r"runtime\.checkpoint_every_s must be >= 0 seconds \(0 = off\), got -5"),
])
def test_zero_or_negative_intervals_and_sizes_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load(overrides=[override])


def test_zero_where_it_means_off_is_accepted():
    cfg = config.load(overrides=["finetune.eval_episodes=0", "pretrain.steps=0", "runtime.max_restarts=0",
                                 "pretrain.checkpoint_every=0", "runtime.metrics_port=0"])
    assert (cfg.finetune.eval_episodes, cfg.pretrain.steps, cfg.runtime.max_restarts) == (0, 0, 0)
    # the watchdog's timeout changes no number a run produces: resuming with another one is allowed
    assert config.load(overrides=["runtime.stall_timeout_s=30"]).hash() == config.load().hash()
    # nor do the replay shards' restarts and snapshots, or timed checkpoints; 0 turns each off
    off = ["runtime.shard_max_restarts=0", "runtime.replay_snapshot_s=0", "runtime.checkpoint_every_s=0"]
    assert config.load(overrides=off).hash() == config.load().hash()


def test_cli_prints_one_line_for_a_zero_checkpoint_interval(tmp_path):
    out = subprocess.run([sys.executable, "-m", "wsrl_dist.cli", "launch", "configs/runtime/smoke.yaml",
                          "run.checkpoint_every=0", f"run.run_dir={tmp_path / 'r'}"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "wsrl-dist: config error: run.checkpoint_every must be >= 1, got 0"
    assert not (tmp_path / "r").exists()
