"""Smoke tests of the rollout and replay benchmarks: tiny flags on inverted-pendulum-v5, each table row
holds finite positive numbers. No timing is asserted (the machine is shared)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from wsrl_dist.bench import replay, rollout

TASK = "inverted-pendulum-v5"
NUM = re.compile(r"^-?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-?(nan|inf)$", re.IGNORECASE)


def table_rows(out: str, first: str) -> list[tuple[list[str], list[float]]]:
    """(words, numbers) of every printed line whose leading columns match `first` (a regex)."""
    rows = []
    for line in out.splitlines():
        if re.match(first, line):
            words = line.split()
            rows.append((words, [float(w) for w in words if NUM.match(w)]))
    return rows


def assert_finite_positive(rows: list[tuple[list[str], list[float]]]) -> None:
    for words, nums in rows:
        assert nums, words
        assert all(math.isfinite(x) and x > 0 for x in nums), words


def test_rollout_single_worker_table_has_every_path_for_every_env_count(capsys):
    assert rollout.main(["--task", TASK, "--parts", "single", "--seconds", "0.05", "--repeats", "1",
                         "--envs-per-worker", "1", "--sweep-envs", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# command: wsrl-dist bench rollout --task inverted-pendulum-v5")
    rows = table_rows(out, r"^\d+\s+(raw-env|policy|worker)\s")
    assert sorted((w[0], w[1]) for w, _ in rows) == sorted(
        (e, p) for e in ("1", "4") for p in ("raw-env", "policy", "worker"))
    assert_finite_positive(rows)
    assert re.search(r"# envs 1: policy-inference overhead -?[\d.]+%", out)


def test_replay_local_table_compares_wire_path_with_raw_ring(capsys):
    assert replay.main(["--task", TASK, "--parts", "local", "--seconds", "0.05", "--chunks", "64,256",
                        "--capacity", "4096"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# command: wsrl-dist bench replay --task inverted-pendulum-v5")
    rows = table_rows(out, r"^(insert|sample)\s")
    assert [(w[0], w[1], w[3]) for w, _ in rows] == [
        ("insert", "ring", "64"), ("insert", "shard", "64"), ("insert", "ring", "256"),
        ("insert", "shard", "256"), ("sample", "ring", "1024"), ("sample", "shard", "1024")]
    assert_finite_positive(rows)
    assert not table_rows(out, r"^(insert|sample)\s+ray-")


def test_ray_parts_report_scaling_and_sharded_replay_rates(capsys):
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        assert rollout.main(["--task", TASK, "--parts", "scaling", "--max-workers", "2", "--shards", "1",
                             "--seconds", "0.3", "--warmup", "0.2", "--collect-steps", "128"]) == 0
        assert replay.main(["--task", TASK, "--parts", "local,ray", "--seconds", "0.1", "--chunks", "64",
                            "--shards", "1,2", "--capacity", "4096", "--window", "2"]) == 0
        assert ray.is_initialized()  # the benchmarks leave a Ray they did not start running
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    scaling = table_rows(out, r"^\d+\s+\d+\s+[\d.]+\s")
    assert [w[:2] for w, _ in scaling] == [["1", "1"], ["2", "1"]]
    assert_finite_positive(scaling)
    sharded = table_rows(out, r"^(insert|sample)\s+ray-")
    assert sorted((w[1], w[2]) for w, _ in sharded) == sorted(
        (p, s) for p in ("ray-feeders", "ray-serial", "ray-window") for s in ("1", "2"))
    assert_finite_positive(sharded)


def test_learner_table_has_bundle_and_pretraining_rows(capsys):
    """CPU: eager and fused pre-training rows (IQL: eager only), each against its eager row."""
    from wsrl_dist.bench import learner

    assert learner.main(["--variants", "stacked-eager", "--pretrain", "iql,cql", "--seconds", "0.05",
                         "--sizes", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# command: wsrl-dist bench learner --variants stacked-eager")
    rows = table_rows(out, r"^tiny\s")
    assert [w[1] for w, _ in rows] == ["pretrain-iql-eager", "pretrain-cql-eager", "pretrain-cql-fused",
                                       "stacked-eager"]
    assert_finite_positive([(w, nums[:3]) for w, nums in rows])  # rates and ratio (setup may print 0.0 here)
    (_, pre), (_, cql), (_, fused), (_, bundle) = rows
    assert pre[0] == pre[1] and pre[2] == 1.0  # one step is one critic update; x its own eager row
    assert fused[2] == pytest.approx(fused[0] / cql[0], rel=0.05, abs=0.02)  # over CQL's eager row (.1f rates)
    assert abs(bundle[1] - 4 * bundle[0]) <= 0.25  # one bundle is UTD = 4 critic updates (printed .1f)


def test_learner_multi_seed_pretraining_rows_count_every_seeds_steps(capsys):
    """--seeds with --pretrain: an S-seed fused pre-training row (one call steps both seeds) whose
    rate is seed-steps/s, its ratio taken against the one-seed eager row."""
    from wsrl_dist.bench import learner

    assert learner.main(["--variants", "", "--pretrain", "cql", "--seeds", "2", "--seed-modes", "fused",
                         "--seconds", "0.05", "--sizes", "tiny"]) == 0
    rows = {w[1]: nums for w, nums in table_rows(capsys.readouterr().out, r"^tiny\s")}
    assert list(rows) == ["pretrain-cql-eager", "pretrain-cql-fused", "pretrain-cql-fused-S2", "seeds-fused-S2"]
    eager, s2 = rows["pretrain-cql-eager"], rows["pretrain-cql-fused-S2"]
    assert s2[0] > 0 and s2[2] == pytest.approx(s2[0] / eager[0], rel=0.05, abs=0.02)


def test_learner_pretrain_rows_compare_graph_with_their_eager_row(capsys, monkeypatch):
    """The GPU layout (eager and graph rows per algorithm) printed with fixed rates: each graph row
    is divided by its own algorithm's eager row (a KeyError here once lost a device run's table)."""
    from wsrl_dist.bench import learner

    rates = {("cql", "eager"): 50.0, ("cql", "cuda_graph"): 400.0, ("cql", "fused"): 100.0,
             ("cql", "fused_compile_graph"): 2500.0, ("iql", "eager"): 100.0, ("iql", "cuda_graph"): 300.0}

    def fake_time(size, algo, mode, device, sac, seconds, key=None, inductor=None, row_split=0, sampled=""):
        learner.SETUP_S[(size, key)] = 1.0
        assert row_split == 0  # the automatic split unless --row-split
        return rates[(algo, mode)] * (2 if inductor else 1)  # an --inductor set: its own row

    real = learner.pretrain_modes  # the GPU's rows
    monkeypatch.setattr(learner, "pretrain_modes", lambda device, algo: real(torch.device("cuda"), algo))
    monkeypatch.setattr(learner, "time_pretrain", fake_time)
    assert learner.main(["--variants", "", "--pretrain", "cql,iql", "--seconds", "0.01",
                         "--inductor", "default;max_autotune=1"]) == 0
    rows = {w[1]: nums for w, nums in table_rows(capsys.readouterr().out, r"^locomotion\s")}
    assert rows == {"pretrain-cql-eager": [50.0, 50.0, 1.0, 1.0],
                    "pretrain-cql-eager-graph": [400.0, 400.0, 8.0, 1.0],
                    "pretrain-cql-fused": [100.0, 100.0, 2.0, 1.0],
                    "pretrain-cql-fused-compile-graph": [2500.0, 2500.0, 50.0, 1.0],
                    "pretrain-cql-fused-compile-graph+max_autotune=1": [5000.0, 5000.0, 100.0, 1.0],
                    "pretrain-iql-eager": [100.0, 100.0, 1.0, 1.0], "pretrain-iql-eager-graph": [300.0, 300.0, 3.0, 1.0]}


def test_learner_row_split_rows_run_the_fused_step_with_each_split(capsys, monkeypatch):
    """--row-split 1,4 with --pretrain-modes: one fused row per cql.fused_row_split value (the sweep
    that picks fused_nets.row_split's rule on a GPU), the eager baseline once, other modes left out."""
    from wsrl_dist.algo import fused_nets
    from wsrl_dist.bench import learner

    seen = []
    real = fused_nets.row_split
    monkeypatch.setattr("wsrl_dist.algo.fused_offline.row_split",
                        lambda mats, rows, asked=0: seen.append(asked) or real(mats, rows, asked))
    assert learner.main(["--variants", "", "--pretrain", "cql", "--pretrain-modes", "eager,fused",
                         "--row-split", "1,4", "--seeds", "2", "--seed-modes", "fused", "--seconds", "0.05",
                         "--sizes", "tiny"]) == 0
    rows = {w[1]: nums for w, nums in table_rows(capsys.readouterr().out, r"^tiny\s") if w[1].startswith("pretrain")}
    assert list(rows) == ["pretrain-cql-eager", "pretrain-cql-fused-split1", "pretrain-cql-fused-split4",
                          "pretrain-cql-fused-split1-S2", "pretrain-cql-fused-split4-S2"]
    assert all(v[0] > 0 for v in rows.values())
    assert set(seen) == {1, 4}


def test_learner_profile_prints_where_the_bundle_time_goes(capsys):
    """--profile on CPU: op time per bundle split by category, the matmuls among the costliest ops."""
    from wsrl_dist.bench import learner

    assert learner.main(["--variants", "fused-eager", "--seconds", "0.05", "--profile", "1"]) == 0
    out = capsys.readouterr().out
    head = re.search(r"# profile locomotion/fused-eager: (\d+) ops, (\d+) us per call \((.*)\)", out)
    assert head, out
    assert int(head.group(1)) > 100 and int(head.group(2)) > 0
    cats = {name: int(us) for name, us in re.findall(r"(\w+) (\d+) us / \d+", head.group(3))}
    assert {"gemm", "other"} <= set(cats), head.group(3)
    assert sum(cats.values()) == pytest.approx(int(head.group(2)), abs=len(cats))  # the split adds up
    assert re.search(r"#\s+[\d.]+ us\s+[\d.]+x\s+gemm\s+aten::(bmm|baddbmm)", out), out


def test_gpu_profile_line_says_how_busy_the_device_was_per_call(capsys):
    """On a GPU the profile also compares the kernel time with the timed wall time per call."""
    from wsrl_dist.bench import learner

    rows = [("sm90_xmma_gemm_f32f32_tf32f32", 4.0, 300.0), ("triton_per_fused_layer_norm_0", 10.0, 500.0)]
    learner.print_profile(rows, "locomotion/x", "kernels", wall_us=1000.0)
    out = capsys.readouterr().out
    assert "14 kernels, 800 us per call (fused 500 us / 10, gemm 300 us / 4)" in out
    assert "wall 1000 us per call: device busy 80%" in out


def test_learner_inductor_sets_run_each_compiled_row_once_per_set(capsys, monkeypatch):
    """--inductor: every compiled row runs once per option set (labelled by its keys, with Dynamo's
    compiled code dropped before each, so a set is never served an earlier set's compile); rows that
    do not compile run once."""
    from wsrl_dist.bench import learner

    calls, resets = [], []

    def fake_time(size, variant, device, sac, seconds, dtype, key=None, inductor=None):
        calls.append((key, inductor))
        return 10.0

    monkeypatch.setattr(learner, "time_variant", fake_time)
    monkeypatch.setattr(learner, "_fresh_compile", lambda: resets.append(1))
    argv = ["--variants", "fused-compile,fused-eager", "--seconds", "0.01",
            "--inductor", "default;combo_kernels=False,max_autotune_gemm_backends=TRITON"]
    assert learner.main(argv) == 0
    assert calls == [("fused-compile", {}),
                     ("fused-compile+combo_kernels=False+max_autotune_gemm_backends=TRITON",
                      {"combo_kernels": False, "max_autotune_gemm_backends": "TRITON"}),
                     ("fused-eager", {})]
    assert len(resets) == 3
    rows = [w[1] for w, _ in table_rows(capsys.readouterr().out, r"^locomotion\s")]
    assert rows == [c[0] for c in calls]


def test_learner_inductor_set_with_an_unknown_key_is_refused_by_name():
    from wsrl_dist.bench import learner

    with pytest.raises(ValueError, match="'no_such_knob=1'"):
        learner.inductor_sets("default;no_such_knob=1", compiled=True)
    with pytest.raises(ValueError, match="'combo_kernels'"):
        learner.inductor_sets("combo_kernels", compiled=True)
    assert learner.inductor_sets("combo_kernels=1", compiled=False) == [("", {})]
    assert learner.inductor_sets("max_autotune=True", compiled=True) == [("+max_autotune", {"max_autotune": True})]


def test_replay_rows_print_a_tiny_ratio_as_a_positive_number(capsys):
    """A ray path crawling on a loaded machine (402 rows/s against a ring's millions) once printed
    'x ring 0.00' and failed the positivity check of the table above: ratios keep 3 digits."""
    replay.print_rows([("insert", "ray-feeders", 1, 64, 402.0, None, 402.0 / 3.1e6, [1e-3, 2e-3])])
    (words, nums), = table_rows(capsys.readouterr().out, r"^insert\s")
    assert_finite_positive([(words, nums)])
    assert 1.2e-4 < nums[3] < 1.4e-4


def test_publish_table_compares_inline_and_threaded_publishing_with_none(capsys):
    from wsrl_dist.bench import publish

    assert publish.main(["--task", TASK, "--seconds", "0.2", "--repeats", "1", "--work-ms", "0.5"]) == 0
    rows = {w[0]: nums for w, nums in table_rows(capsys.readouterr().out, r"^(none|inline|thread)\s")}
    assert set(rows) == {"none", "inline", "thread"}
    assert rows["none"][1:] == [1.0, 0.0]  # the baseline against itself
    assert all(math.isfinite(x) and x > 0 for m in ("inline", "thread") for x in rows[m][:2])


def test_job_table_runs_the_same_job_under_each_variant(capsys):
    from wsrl_dist.bench import job

    assert job.main(["finetune.warmup_steps=200", "finetune.online_steps=700", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith("runtime.grant_wait_s="):
            rows[cells[0]] = cells[1:]
    assert set(rows) == {"runtime.grant_wait_s=0 (baseline)", "runtime.grant_wait_s=0.1"}
    assert float(rows["runtime.grant_wait_s=0 (baseline)"][2]) == 1.0  # x base: itself
    for cells in rows.values():  # seeds, env steps/s, x base, updates/s, 4 x ms, grant calls/s, refused %, cores
        nums = [float(c.replace(",", "").rstrip("%")) for c in cells]
        assert len(nums) == 11 and all(math.isfinite(x) and x >= 0 for x in nums), cells
        assert nums[0] == 1 and all(nums[i] > 0 for i in (1, 3, 4, 6, 8, 10)), cells  # ran, the loop took time
    assert out.count("# measured [") == 2


def test_job_refuses_a_bad_variant_before_running_anything():
    from wsrl_dist.bench import job
    from wsrl_dist.config import ConfigError

    with pytest.raises(ConfigError, match="runtime.grant_wait_s must be in"):
        job.main(["--variants", "runtime.grant_wait_s=0; runtime.grant_wait_s=-3"])
    with pytest.raises(SystemExit, match="at least two"):
        job.main(["--variants", "runtime.grant_wait_s=0"])


def test_learner_group_rows_time_several_bundles_per_call(capsys):
    from wsrl_dist.bench import learner

    assert learner.main(["--variants", "fused-eager,stacked-eager", "--group", "2", "--seconds", "0.05"]) == 0
    rows = table_rows(capsys.readouterr().out, r"^locomotion\s")
    # a group row for the fused variant only (the others have no groups)
    assert [w[1] for w, _ in rows] == ["fused-eager", "fused-eager-x2", "stacked-eager"]
    assert_finite_positive(rows)


def test_builder_table_times_behaviour_paths_and_rollouts_against_their_baselines(capsys):
    from wsrl_dist.bench import builder

    assert builder.main(["--task", TASK, "--hidden", "16,16", "--steps", "30", "--random", "300", "--warmup", "5",
                         "--rows", "600", "--serial-rows", "300", "--envs", "2", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# command: wsrl-dist bench builder --task inverted-pendulum-v5")
    behaviour = {w[1]: nums for w, nums in table_rows(out, r"^behaviour\s")}
    rollout = {w[1]: nums for w, nums in table_rows(out, r"^rollout\s")}
    assert list(behaviour) == ["eager", "env", "ops", "fused"] and list(rollout) == ["serial", "2envs/1w"]
    assert_finite_positive(table_rows(out, r"^(behaviour|rollout)\s"))
    assert behaviour["eager"][2] == 1.0 and rollout["serial"][2] == 1.0  # the baselines against themselves
    assert rollout["2envs/1w"][0] == 600  # rows, rows/s, x serial, s per 1M


def test_builder_rows_print_as_timed_the_eager_baseline_is_short_and_a_failing_path_is_named(capsys, monkeypatch):
    """--eager-steps times the slow eager baseline on fewer steps; a path that fails prints one line
    naming why while the rows before and after it are still printed."""
    from wsrl_dist.bench import builder

    asked = {}

    def fake_rate(spec, path, steps, random_rows, warmup):
        asked[path] = steps
        if path == "ops":
            raise RuntimeError("capture broke")
        return {"env": 4000.0, "eager": 100.0, "fused": 2500.0}[path]

    monkeypatch.setattr(builder, "behaviour_rate", fake_rate)
    assert builder.main(["--task", TASK, "--parts", "behaviour", "--steps", "3000", "--eager-steps", "40"]) == 0
    out = capsys.readouterr().out
    assert asked == {"env": 3000, "eager": 40, "ops": 3000, "fused": 3000}
    rows = {w[1]: nums for w, nums in table_rows(out, r"^behaviour\s")}
    assert rows["eager"][2] == 1.0 and rows["fused"][2] == 25.0
    assert "behaviour ops      failed: RuntimeError: capture broke" in out



def test_learner_pretrain_sampled_rows_draw_batches_as_the_job_loop_does(capsys, monkeypatch):
    """--pretrain-sampled: each one-seed pre-training row again with its batches drawn from a dataset
    on the device, a chunk of 256 steps per draw (the loop's way) and one draw per step (before)."""
    from wsrl_dist import pretrain
    from wsrl_dist.bench import learner

    draws = []
    real = pretrain.DeviceSampler.sample
    monkeypatch.setattr(pretrain.DeviceSampler, "sample", lambda self, n: draws.append(n) or real(self, n))
    assert learner.main(["--variants", "", "--pretrain", "cql", "--pretrain-modes", "eager,fused",
                         "--pretrain-sampled", "--seconds", "0.05", "--sizes", "tiny"]) == 0
    rows = {w[1]: nums for w, nums in table_rows(capsys.readouterr().out, r"^tiny\s")}
    assert list(rows) == ["pretrain-cql-eager", "pretrain-cql-eager-sampled-chunked", "pretrain-cql-eager-sampled-perstep",
                          "pretrain-cql-fused", "pretrain-cql-fused-sampled-chunked", "pretrain-cql-fused-sampled-perstep"]
    assert all(v[0] > 0 for v in rows.values())
    assert set(draws) == {256, pretrain.CHUNK_ROWS}  # per step, and 256 steps at once
