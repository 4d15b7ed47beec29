"""What a person who launches a job sees (runtime/instrumentation/progress.py): the run dir and metrics URL first, then
one progress line per stage that ran (build, pretrain, warmup, online) ending at the stage's total,
stage fields in metrics.jsonl and the status while the learner is still inside prepare(), the
`wsrl-dist status` summary and `--json`, the choice among several running jobs, and the metrics URL
when the configured port is taken."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.runtime.conftest import BackgroundJob, read_records, run_json, tiny_config
from wsrl_dist.runtime.instrumentation.progress import StageLines, StageProgress, StageRecord

K, TOTAL, PRE, BEHAVIOUR, ROWS = 100, 400, 150, 600, 1000
WSRL_DIST = str(Path(sys.executable).with_name("wsrl-dist"))


@pytest.fixture(scope="module")
def ray_cache(tmp_path_factory):
    """A local Ray whose workers build datasets into a cache of this module's own (so the build runs)."""
    import ray

    old = os.environ.get("WSRL_DIST_CACHE")
    os.environ["WSRL_DIST_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # the learner inherits it
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if old is None:
        os.environ.pop("WSRL_DIST_CACHE")
    else:
        os.environ["WSRL_DIST_CACHE"] = old


@pytest.fixture(scope="module")
def launched(ray_cache, tmp_path_factory):
    """A job that builds its dataset, pre-trains, warms up and runs online, its stdout captured
    (not a terminal: the plain-line mode `ray job submit` gets); its status read during pre-training."""
    from wsrl_dist.runtime.orchestration.control import status_command

    cfg = tiny_config(
        tmp_path_factory.mktemp("progress") / "job", "finetune.method=wsrl", "pretrain.algo=cql",
        f"pretrain.steps={PRE}", "pretrain.batch_size=64", "dataset.source=built",
        f"dataset.build_transitions={ROWS}", f"dataset.build_train_steps={BEHAVIOUR}",
        "dataset.build_random_steps=300", "dataset.build_eval_every=300", "dataset.build_hidden=[32,32]",
        f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=200",
        "runtime.num_workers=1", "run.checkpoint_every=100000", "run.progress=true", "run.log_every=50",
    )
    out, got = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        bg = BackgroundJob(cfg)
        got["pretraining"] = bg.wait_for(
            lambda s: s.get("stage") == "pretrain" and s.get("stage_done", 0) > 0, timeout=300)
        for as_json in (False, True):
            buf = io.StringIO()
            got[f"code_{as_json}"] = status_command(None, cfg.run.run_dir, as_json, out=buf)
            got[f"status_{as_json}"] = buf.getvalue()
        run_dir = bg.join(timeout=600)
    return cfg, run_dir, out.getvalue().splitlines(), got


def _last_line(lines: list[str], desc: str) -> re.Match:
    found = [m for m in (re.match(rf"{desc}: (\d+)/(\d+) \((\d+)%\)", x) for x in lines) if m]
    assert found, f"no {desc!r} progress line in {lines}"
    return found[-1]


def test_launch_prints_run_dir_and_metrics_url_first_then_a_line_per_stage_ending_at_its_total(launched):
    _, run_dir, lines, _ = launched
    assert lines[0] == f"run dir: {run_dir}"
    assert lines[1] == f"metrics: {run_json(run_dir)['metrics_url']}"
    firsts = []
    for desc, total in (("build behaviour", BEHAVIOUR), ("build rollout", ROWS), ("pretrain", PRE),
                        ("warmup", K), ("online", TOTAL)):
        m = _last_line(lines, desc)
        assert (int(m[1]), int(m[2]), m[3]) == (total, total, "100"), m[0]
        firsts.append(next(i for i, x in enumerate(lines) if x.startswith(f"{desc}: ")))
    assert firsts == sorted(firsts), lines  # the stages in the order they ran
    # one live line per stage: a plain line every PLAIN_EVERY s, not one per tick (ticks are 0.5 s)
    assert len([x for x in lines if x.startswith("online: ")]) <= 4, lines
    assert re.search(r"loss|critic", next(x for x in lines if x.startswith(f"pretrain: {PRE}/"))), lines


def test_metrics_rows_and_status_during_pretraining_carry_real_pretraining_counts(launched):
    _, run_dir, _, got = launched
    rows = [r for r in read_records(run_dir, "throughput") if r["stage"] == "pretrain"]
    assert rows and max(r["pretrain_steps"] for r in rows) > 0, rows[:3]
    assert all(r["stage_total"] == PRE and r["phase"] == "pretrain" for r in rows)
    assert any(r["stage"] == "build" and r["stage_done"] > 0 for r in read_records(run_dir, "throughput"))
    assert [r["step"] for r in read_records(run_dir, "pretrain")][-1] == PRE  # losses, as `run` logs them
    st = got["pretraining"]
    assert 0 < st["stage_done"] <= PRE and st["stage_total"] == PRE and 0 < st["stage_progress"] <= 1


def test_status_summary_and_json_of_a_job_in_pre_training(launched):
    cfg, run_dir, _, got = launched
    assert got["code_False"] == 0 and got["code_True"] == 0
    text = got["status_False"]
    assert f"run dir:   {run_dir}" in text and re.search(rf"stage: +pretrain \d+/{PRE} \(\d+%\)", text), text
    for field in ("env steps:", "UTD:", "policy lag:", "workers:", "replay:"):
        assert field in text, text
    raw = json.loads(got["status_True"])
    assert raw["stage"] == "pretrain" and raw["stage_total"] == PRE and raw["run_dir"] == str(run_dir)
    assert raw["job"] == Path(run_dir).name


def test_status_lists_several_running_jobs_instead_of_picking_one(launched, ray_cache, tmp_path):
    """Two controllers on the cluster (the launched job has ended): `wsrl-dist status` with none named
    names both and exits 2; `wsrl-dist status RUN_DIR --json` reaches the named one at the Ray address
    its run.json records, with no --address."""
    import ray

    from wsrl_dist.runtime.orchestration.control import make_controller

    dirs = [tmp_path / "job-a", tmp_path / "job-b"]
    ctrls = [make_controller(d) for d in dirs]
    try:
        ray.get(ctrls[1].set_status.remote({"phase": "warmup", "stage": "warmup", "env_steps": 7}))
        dirs[1].mkdir()
        (dirs[1] / "run.json").write_text(json.dumps({"ray_address": ray_cache}))
        env = {**os.environ, "RAY_ADDRESS": ""}
        several = subprocess.run([WSRL_DIST, "status", "--address", ray_cache], capture_output=True,
                                 text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)
        assert several.returncode == 2, several.stderr[-2000:]
        assert "job-a" in several.stderr and "job-b" in several.stderr
        one = subprocess.run([WSRL_DIST, "status", str(dirs[1]), "--json"], capture_output=True,
                             text=True, timeout=120, env=env)
        assert one.returncode == 0, one.stderr[-2000:]
        st = json.loads(one.stdout)
        assert (st["stage"], st["env_steps"], st["job"]) == ("warmup", 7, "job-b")
    finally:
        for c in ctrls:
            ray.kill(c)


def test_a_taken_metrics_port_says_which_url_serves_instead(caplog):
    from wsrl_dist.config import RuntimeConfig
    from wsrl_dist.runtime.instrumentation.progress import announce_metrics
    from wsrl_dist.runtime.orchestration.driver import _port_note, _start_metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rt = RuntimeConfig(metrics_port=taken.getsockname()[1])
        with caplog.at_level(logging.WARNING):
            server = _start_metrics(lambda: {}, rt)
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            assert server.port != rt.metrics_port
            assert f"metrics port {rt.metrics_port} unavailable" in caplog.text and url in caplog.text
            out = io.StringIO()
            announce_metrics(url, out, note=_port_note(server, rt))
            assert out.getvalue().splitlines()[0] == f"metrics: {url}  (port {rt.metrics_port} was taken)"
        finally:
            server.stop()


def test_stage_lines_print_plain_lines_rarely_and_always_the_last_count():
    out = io.StringIO()
    lines = StageLines(out, plain_every=3600)
    for n in range(0, 101, 10):
        lines.show("pretrain", "", n, 100, "x")
    lines.show("pretrain", "", 100, 100)  # a closed line stays closed
    lines.show("warmup", "", 20, 50)
    lines.close(50)  # the stage ended between two polls: its true last count
    assert out.getvalue().splitlines() == ["pretrain: 0/100 (0%)  x", "pretrain: 100/100 (100%)  x",
                                           "warmup: 20/50 (40%)", "warmup: 50/50 (100%)"]


def test_a_build_part_that_ends_between_two_polls_still_gets_its_final_line():
    rec, out = StageRecord(), io.StringIO()
    prog = StageProgress(0, 10, StageLines(out, plain_every=3600))
    rec.build_event({"part": "behaviour", "done": 100, "total": 400, "eval_return": 5.0, "target_return": 9.0})
    prog.update("pretrain", {}, rec.read(), now=0.0)
    rec.build_event({"part": "behaviour", "done": 300, "total": 400, "eval_return": 9.5, "target_return": 9.0})
    rec.build_event({"part": "rollout", "done": 50, "total": 50})  # stopped at its target, then rows
    rec.start("pretrain", 20)
    rec.add(20)
    fields = prog.update("pretrain", {}, rec.read(), now=1.0)
    assert out.getvalue().splitlines() == [
        "build behaviour: 100/400 (25%)  eval 5 / target 9",
        "build behaviour: 300/400 (75%)  eval 9.5 / target 9, 200 steps/s, budget ETA 00:00",
        "build rollout: 50/50 (100%)", "pretrain: 20/20 (100%)"]
    assert fields["stage"] == "pretrain" and fields["pretrain_steps"] == 20 and fields["stage_progress"] == 1.0
    assert prog.update("warmup", {"env_steps": 0}, None, now=2.0)["stage"] == "warmup"
    assert len(out.getvalue().splitlines()) == 4  # no warmup (K = 0): it prints nothing


def test_the_pretrain_line_says_it_is_compiling_while_its_count_cannot_move():
    """The first pre-training step compiles (minutes with pretrain.max_autotune_gemm): the line says
    so instead of a bare 0/N, and drops it once steps are counted (pretrain.StepClock's note)."""
    from wsrl_dist.pretrain import StepClock

    rec, out = StageRecord(), io.StringIO()
    prog = StageProgress(0, 10, StageLines(out, plain_every=0))
    rec.start("pretrain", 20)
    clock = StepClock(torch.device("cpu"), 1, lambda text: rec.set(note=text), "compiling the step")
    prog.update("pretrain", {}, rec.read(), now=0.0)
    clock.stepped(1)
    rec.add(1)
    prog.update("pretrain", {}, rec.read(), now=1.0)
    first, second = out.getvalue().splitlines()[-2:]
    assert first == "pretrain: 0/20 (0%)  compiling the step"
    assert second.startswith("pretrain: 1/20 (5%)") and "compiling" not in second


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_each_stage_is_one_tqdm_bar_that_ends_at_its_total():
    term = _Terminal()
    lines = StageLines(term)
    for n in (0, 40, 100):
        lines.show("pretrain", "", n, 100, "critic 0.5")
    lines.show("online", "", 60, 80)
    lines.close(80)
    # tqdm redraws its line in place (\r); the last drawing of each bar is its final count
    finals = [seg.split("\n")[0] for seg in term.getvalue().split("\r") if seg.strip()]
    pre = [s for s in finals if s.startswith("pretrain:")]
    onl = [s for s in finals if s.startswith("online:")]
    assert "100/100" in pre[-1] and "critic 0.5" in pre[-1], finals
    assert "80/80" in onl[-1] and "100%" in onl[-1], finals
    assert term.getvalue().count("\n") == 2  # two bars, each closed once


def test_updates_the_learner_still_owes_after_the_last_env_step_get_a_line_of_their_own():
    out = io.StringIO()
    behind = StageProgress(0, 10, StageLines(out, plain_every=3600), updates_total=40)
    fields = behind.update("online", {"env_steps": 10, "critic_updates": 12}, None, now=0.0)
    assert (fields["stage_part"], fields["stage_done"], fields["stage_total"]) == ("updates", 12, 40)
    behind.update("online", {"env_steps": 10, "critic_updates": 30}, None, now=1.0)
    assert behind.update("done", {"env_steps": 10, "critic_updates": 40}, None, now=2.0)["stage"] == "done"
    assert out.getvalue().splitlines() == ["online: 10/10 (100%)", "online updates: 12/40 (30%)",
                                           "online updates: 40/40 (100%)  14 updates/s"]  # (40 - 12) / 2 s
    out = io.StringIO()
    kept_up = StageProgress(0, 10, StageLines(out, plain_every=3600), updates_total=40)
    kept_up.update("online", {"env_steps": 10, "critic_updates": 40}, None, now=0.0)
    kept_up.update("done", {"env_steps": 10, "critic_updates": 40}, None, now=1.0)
    assert out.getvalue().splitlines() == ["online: 10/10 (100%)"]


def test_a_plain_line_is_not_repeated_while_its_count_stands_still():
    out = io.StringIO()
    lines = StageLines(out, plain_every=0.0)  # every poll may print: only a new count does
    for n in (5, 5, 5, 7, 7, 10):
        lines.show("build", "behaviour", n, 10)
    assert out.getvalue().splitlines() == ["build behaviour: 5/10 (50%)", "build behaviour: 7/10 (70%)",
                                           "build behaviour: 10/10 (100%)"]


def _pretrain_bar_on_a_fake_clock(total: int):
    """local.py's pre-training bar (tqdm + note_setter) on a clock the test moves: (bar, note, out, now)."""
    from tqdm import tqdm

    from wsrl_dist.ops.bars import note_setter

    now = [0.0]
    out = io.StringIO()
    bar = tqdm(total=total, file=out, mininterval=0, miniters=1, smoothing=0.3, ascii=True)
    bar._time = lambda: now[0]
    bar.start_t = bar.last_print_t = 0.0
    return bar, note_setter(bar), out, now


def test_the_local_pretrain_bar_gives_the_steady_eta_once_the_compiling_first_step_is_done():
    """local.py's bar: a 100 s first step (compilation) then 1,000 steps/s. tqdm alone averages the first
    step into its rate (an ETA of hours); note_setter restarts the rate when the note clears."""
    bar, note, out, now = _pretrain_bar_on_a_fake_clock(100_000)
    note("compiling the step")
    assert "compiling the step" in out.getvalue().split("\r")[-1]
    now[0] = 100.0  # the first step returns after compilation
    note("")
    bar.update(1)
    for _ in range(10):  # then 1,000 steps a second
        now[0] += 1.0
        bar.update(1000)
    last = out.getvalue().split("\r")[-1]
    assert "10001/100000" in last and "compiling" not in last, last
    eta = re.search(r"<(\d+):(\d+)", last)  # "[elapsed<remaining, rate]"
    assert eta and 85 <= int(eta[1]) * 60 + int(eta[2]) <= 95, last  # ~90 s left at 1,000/s
    assert "01:50<" in last, last  # elapsed stays the stage's whole time (100 s + 10 s)


def test_a_resumed_pretrain_bar_shows_no_rate_from_its_jump_to_the_checkpoint_step():
    """A resumed pre-training moves its bar to the checkpoint's step in one update, then sets the
    "compiling the step" note: that line read "225000/250000 [00:00<00:00, 1015246.58it/s, ...]"."""
    bar, note, out, now = _pretrain_bar_on_a_fake_clock(250_000)
    now[0] = 0.2
    bar.update(225_000)  # progress(start - 1) of a resume
    note("compiling the step")
    line = out.getvalue().split("\r")[-1]
    assert "225000/250000" in line and "compiling the step" in line, line
    assert "?it/s" in line and "<?" in line, line  # no rate and no ETA until steady steps come
    now[0] = 20.0
    note("")
    for _ in range(5):
        now[0] += 1.0
        bar.update(700)
    line = out.getvalue().split("\r")[-1]
    eta = re.search(r"<(\d+):(\d+), *([\d.]+)it/s", line)
    assert eta and 650 <= float(eta[3]) <= 750, line
    assert 30 <= int(eta[1]) * 60 + int(eta[2]) <= 34, line  # 21,500 steps left at 700/s


def test_a_stage_bar_inside_the_study_bar_writes_no_cursor_moves_into_a_log_file():
    """`wsrl-dist study > log`: the stage bars (builder, pre-training) open inside the study's job bar;
    tqdm placed them at line 1 and wrote "\\x1b[A" after every redraw, which a log file shows as "[A"."""
    from tqdm import tqdm

    from wsrl_dist.ops.bars import bar_options

    out = io.StringIO()
    study = tqdm(total=2, desc="study", **bar_options(out))
    stage = tqdm(total=3, desc="pretrain", **bar_options(out))
    for _ in range(3):
        stage.update(1)
    stage.close()
    study.update(1)
    study.close()
    text = out.getvalue()
    assert "\x1b[" not in text
    assert "pretrain: 100%|" in text and "1/2 [" in text, text
