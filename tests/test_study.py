"""`wsrl-dist study` (wsrl_dist/study.py) and `wsrl-dist report --study` (ops/study_report.py).

The end-to-end test runs configs/studies/smoke.yaml as README writes it, mirrored to a store
(`--sync-to file://...`), kills the study with SIGKILL (its whole process group: the driver and the Ray
it started) once the first cell is done and the next one has checkpointed, deletes the study dir (the
machine is lost), reruns the same command, which pulls the store's copy, and checks that the finished
work was left as it was, the killed cell resumed from its checkpoint and completed, a plain rerun
touches nothing, the seeds pre-trained once (together, in one loop: the fused path the
GPU runs) and every cell loaded them, and that the report re-renders the same table from its CSVs
alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wsrl_dist import config
from wsrl_dist.ops.study_report import latest_timeline, nearest_score
from wsrl_dist.study import load_spec

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "wsrl_dist.cli"]


def _snapshot(root: Path) -> dict[str, tuple[float, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _contents(root: Path) -> dict[str, str]:
    return {k: digest for k, (_, digest) in _snapshot(root).items()}


def _run(args: list[str], cwd: Path, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    # one torch thread, as conftest.py gives in-process tests: on 2 shared cores two OpenMP threads per
    # process make the tiny CQL steps many times slower
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def _manifest(study: Path) -> dict:
    try:
        return json.loads((study / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.mark.timeout(1800)  # three study runs and two reports; far slower on busy shared cores
def test_study_smoke_killed_and_resumed(tmp_path: Path) -> None:
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the README command, from a scratch cwd
    study = tmp_path / "studies" / "smoke"
    task = "inverted-pendulum-v5"
    # 1) run, mirrored to a store (--sync-to), until wsrl (both seeds, one learner) is done and
    # offline_continued (both seeds, one learner, the CQL loss kept online) has checkpointed, as the
    # store's copy shows, then kill: the machine is lost, its disk with it
    remote = tmp_path / "bucket" / "smoke"
    sync = ["--sync-to", f"file://{remote}", "--sync-every", "0.5"]
    proc = _run(["study", "configs/studies/smoke.yaml", *sync], tmp_path)
    deadline = time.time() + 1200
    killed_cell = study / "runs" / task / "offline_continued"
    kept_cell = remote / "runs" / task / "offline_continued"
    while time.time() < deadline and proc.poll() is None:
        cells = _manifest(remote).get("cells", {})
        if (cells.get(f"{task}/wsrl", {}).get("status") == "done"
                and all(list((kept_cell / f"seed-{s}" / "checkpoints").glob("step_*/DONE")) for s in (0, 1))):
            # mid-cell, after its first multi-seed checkpoint reached the store
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the study ended before it could be killed:\n{proc.stdout.read()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    m = _manifest(remote)
    assert m["cells"][f"{task}/wsrl"]["status"] == "done"
    assert m["cells"][f"{task}/offline_continued"]["status"] == "running"
    assert "finished" not in json.loads((kept_cell / "run.json").read_text())
    done_before = {p: _contents(remote / p) for p in (f"runs/{task}/wsrl", "pretrain")}
    status = _run(["status", "--study", "studies/smoke"], tmp_path).communicate(timeout=120)[0]  # as README
    rows = {line.split()[0]: line for line in status.splitlines()}
    assert rows[f"{task}/wsrl"].split()[1:3] == ["done", "1"], status
    assert re.search(r"started\s+1\s+(warmup|online): [\d,]+ / 700 env steps", rows[f"{task}/offline_continued"]), status
    dataset = Path(json.loads((remote / "pretrain" / f"{task}-s0" / "run.json").read_text())["dataset"])
    assert (remote / "datasets" / dataset.name).read_bytes() == dataset.read_bytes()
    shutil.rmtree(study)

    # 2) the same command on a fresh disk (an empty dataset cache too): pulls the store's copy and
    # the dataset, skips the finished work, resumes the killed cell from its checkpoint in the copy
    # (reading the pulled dataset, not a rebuild), runs the rest, and leaves the copy whole
    fresh_cache = tmp_path / "fresh-cache"
    proc = _run(["study", "configs/studies/smoke.yaml", *sync], tmp_path, {"WSRL_DIST_CACHE": str(fresh_cache)})
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out
    assert "files pulled from file://" in out and f"dataset: {fresh_cache / dataset.name} pulled" in out, out
    assert (fresh_cache / dataset.name).read_bytes() == dataset.read_bytes()
    assert sorted(p.name for p in fresh_cache.iterdir()) == [dataset.name]  # no behaviour run: nothing built
    for p, snap in done_before.items():
        assert _contents(study / p) == snap, f"{p} was touched by the rerun"
    assert {k: v for k, v in _contents(remote).items() if not k.startswith("datasets/")} == _contents(study)
    status = _run(["status", "--study", "studies/smoke"], tmp_path).communicate(timeout=120)[0]
    assert status.splitlines()[-1].startswith("3 done, 0 started"), status
    m = _manifest(study)
    assert {k: v["status"] for k, v in m["cells"].items()} == {
        f"{task}/wsrl": "done", f"{task}/offline_continued": "done"}
    assert m["cells"][f"{task}/offline_continued"]["attempts"] == 2
    assert m["cells"][f"{task}/wsrl"]["attempts"] == 1
    run = json.loads((killed_cell / "run.json").read_text())
    # continued from the newest checkpoint step both seeds have
    assert set(run["resumed_from"]) == {"0", "1"} and run["resumed_from"]["0"].startswith("step_")

    # the seeds pre-trained once, together, each into its own dir, and loaded (not re-trained) by
    # every cell of that seed
    assert sorted(m["pretrain"]) == [f"{task}/s0+1"] and m["pretrain"][f"{task}/s0+1"]["attempts"] == 1
    for seed in (0, 1):
        pre = study / "pretrain" / f"{task}-s{seed}" / "checkpoints" / "pretrained.pt"
        info = json.loads((pre.parent.parent / "run.json").read_text())
        assert info["pretrain_step"].startswith("fused") and info["pretrain_step"].endswith("2 seeds together")
        critic = torch.load(pre, weights_only=True)["agent"]["critic"]
        for method in ("wsrl", "offline_continued"):
            d = study / "runs" / task / method / f"seed-{seed}"
            run = json.loads((d / "run.json").read_text())
            if method != "offline_continued":  # a resumed job's run.json keeps the resumed attempt's stages only
                assert (tmp_path / run["stages"]["pretrain"]["loaded"]).resolve() == pre.resolve()  # cwd-relative
                assert run["stages"]["pretrain"]["pretrain_steps"] == 0
            start = torch.load(d / "checkpoints" / "pretrained.pt", weights_only=True)["agent"]["critic"]
            assert all(torch.equal(critic[k], start[k]) for k in critic)
            rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            probes = [r for r in rows if r["kind"] == "q_probe"]
            assert probes and all(r["q_probe_states"] > 0 and r["q_probe_mc_mean"] > 0 for r in probes)
            assert {r["phase"] for r in probes} >= {"pretrained", "online"}
            # the critic the probes read is the learner's: it moves once updates start
            assert probes[-1]["q_probe_q_mean"] != probes[0]["q_probe_q_mean"]

    # 3) the report: CSVs, figures and the table; a third run changes nothing
    res = study / "results"
    table = (res / "table.md").read_text()
    for name in ("runs.csv", "evals.csv", "train.csv", "q_probe.csv", "onset.png",
                 f"score_{task}.png", "score_aggregate.png"):
        assert (res / name).stat().st_size > 0, name
    lines = [line for line in table.splitlines() if line.startswith(f"| {task} |")]
    assert len(lines) == 2 and all("| 2 |" in line for line in lines)
    assert lines[0].split("|")[-2].strip() == "—"  # 1000 steps: past every run's end
    assert all(c.strip() != "—" for line in lines for c in line.split("|")[4:-2])
    assert sum(p.stat().st_size for p in res.glob("*.csv")) < 2_000_000
    runs_snap = _snapshot(study / "runs")
    proc = _run(["study", "configs/studies/smoke.yaml"], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert _snapshot(study / "runs") == runs_snap
    assert (res / "table.md").read_text() == table
    (res / "table.md").unlink()
    proc = _run(["report", "--study", "studies/smoke"], tmp_path)  # as README writes it
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert (res / "table.md").read_text() == table

    # 4) re-render from the CSVs alone (no run dirs)
    alone = tmp_path / "copy"
    shutil.copytree(res, alone / "results")
    (alone / "results" / "table.md").unlink()
    (alone / "results" / "onset.png").unlink()
    proc = _run(["report", "--study", str(alone)], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert (alone / "results" / "table.md").read_text() == table
    assert (alone / "results" / "onset.png").stat().st_size > 0

    # 5) a copy as results/<name>/ keeps it (run.json and config.yaml per run, metrics as CSVs only):
    # the report keeps those runs' rows, so a later session can continue the study from the copy
    kept = tmp_path / "kept"
    shutil.copytree(study, kept, ignore=shutil.ignore_patterns("metrics.jsonl", "checkpoints", "replay"))
    (kept / "results" / "table.md").unlink()
    proc = _run(["report", "--study", str(kept)], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert (kept / "results" / "table.md").read_text() == table
    for name in ("evals", "q_probe", "train"):
        assert (kept / "results" / f"{name}.csv").read_text() == (res / f"{name}.csv").read_text()


def test_q_probe_against_closed_form() -> None:
    """InvertedPendulum-v5 pays 1 per step and 0 on the step it falls: with a random-init policy every
    episode terminates, so the probe's MC mean is mean_t (1 - g^(n - 1 - t)) / (1 - g), and a
    critic whose last layer is a constant c reads Q = c everywhere."""
    from wsrl_dist.algo.policy import Policy
    from wsrl_dist.envs.make import obs_act_dims
    from wsrl_dist.evaluation import q_probe
    from wsrl_dist.job import build_agent

    cfg = config.load([], ["task.name=inverted-pendulum-v5"])
    task = cfg.task.spec()
    obs_dim, act_dim = obs_act_dims(task)
    agent = build_agent(cfg, obs_dim, act_dim, torch.device("cpu"))
    with torch.no_grad():
        agent.critic.head_weight.zero_()  # the Q head all members share (net.shared_q_head)
        agent.critic.head_bias.fill_(3.5)
    policy = Policy(obs_dim, act_dim, cfg.net, seed=0)
    policy.load(agent.export_policy(), 0)
    out = q_probe(policy, agent.critic.state_dict(), cfg, task, episodes=1, seed=0)
    n, g = out["q_probe_states"], cfg.sac.discount
    assert out["q_probe_return_mean"] == n - 1 and n < 1000  # fell: every state counts
    expect = np.mean([(1 - g ** (n - 1 - t)) / (1 - g) for t in range(n)])
    assert out["q_probe_mc_mean"] == pytest.approx(expect * task.scale_reward(1.0), rel=1e-5)
    assert out["q_probe_q_mean"] == pytest.approx(3.5, abs=1e-5)
    assert out["q_probe_gap_mean"] == pytest.approx(3.5 - out["q_probe_mc_mean"], abs=1e-4)


def test_latest_timeline_and_nearest() -> None:
    rows = [{"env_steps": s, "v": i} for i, s in enumerate([0, 300, 600, 900, 300, 600, 900, 1200])]
    assert [(r["env_steps"], r["v"]) for r in latest_timeline(rows)] == [(0, 0), (300, 4), (600, 5), (900, 6), (1200, 7)]
    pts = [(0.0, "pretrained", 1.0), (310.0, "online", 2.0), (600.0, "online", 3.0)]
    assert nearest_score(pts, 300) == 2.0 and nearest_score(pts, 455) == 3.0 and nearest_score(pts, 601) is None


def test_study_spec_errors(tmp_path: Path) -> None:
    def bad(text: str, match: str) -> None:
        p = tmp_path / "s.yaml"
        p.write_text(text)
        with pytest.raises(config.ConfigError, match=match):
            load_spec(p)

    base = "name: s\ntasks: [inverted-pendulum-v5]\nseeds: [0]\n"
    bad(base + "methods: [wsrl, dqn]\n", "'dqn' is not one of")
    bad(base + "methods: [wsrl]\nmethod: x\n", "unknown study keys")
    bad("name: s\ntasks: [inverted-pendulum-v5]\nmethods: [wsrl]\n", "'seeds' is missing")
    bad(base.replace("[0]", "[0, 0]") + "methods: [wsrl]\n", "repeated")
    assert load_spec(REPO / "configs/studies/locomotion.yaml").seeds == [0, 1, 2, 3]


def test_study_plan_shares_pretraining_and_filters(tmp_path: Path) -> None:
    """The locomotion grid: one pre-training per (task, seed) feeds wsrl, wsrl_no_warmup and
    offline_continued ({seed} in the multi-seed path); every cell is one multi-seed job; a task's
    seeds pre-train in one unit where the step is fused (the GPU default), one unit per seed where it
    is not (CPU: eager); --tasks / --methods keep only part of the grid."""
    from wsrl_dist.study import Study

    spec = load_spec(REPO / "configs/studies/locomotion.yaml")
    study = Study(spec, tmp_path / "s")
    units = study.plan()
    pre = [u for u in units if u["kind"] == "pretrain"]
    assert len(pre) == 3 * 4  # eager here: each seed alone
    cells = {u["id"]: u for u in units if u["kind"] == "cell"}
    assert len(cells) == 3 * 5 and all(u["multiseed"] for u in cells.values())
    task = "hopper-medium-replay-v2"
    wsrl = study._cfg_for(cells[f"{task}/wsrl"])
    assert wsrl.run.seeds == [0, 1, 2, 3] and wsrl.pretrain.checkpoint.endswith(f"{task}-s{{seed}}/checkpoints/pretrained.pt")
    oc = study._cfg_for(cells[f"{task}/offline_continued"])
    assert oc.run.seeds == [0, 1, 2, 3] and oc.pretrain.checkpoint == str(
        tmp_path / "s" / "pretrain" / f"{task}-s{{seed}}" / "checkpoints" / "pretrained.pt")
    assert study._cfg_for(cells[f"{task}/sac_scratch"]).pretrain.checkpoint is None
    assert wsrl.finetune.online_steps == 300_000 and wsrl.dataset.build_seed == 0
    fused = Study(spec, tmp_path / "f", ["run.fast_path=fused"]).plan()
    together = [u for u in fused if u["kind"] == "pretrain"]
    assert [u["id"] for u in together][0] == "hopper-medium-replay-v2/s0+1+2+3" and len(together) == 3
    assert all(u["seeds"] == [0, 1, 2, 3] for u in together)
    part = Study(spec, tmp_path / "s", tasks=[task], methods=["sac_scratch"]).plan()
    assert [u["id"] for u in part] == [f"{task}/sac_scratch"]  # no pre-training needed for it
    with pytest.raises(config.ConfigError, match="not in the study"):
        Study(spec, tmp_path / "s", tasks=["hopper-medium-v2"])


def test_study_overrides_may_follow_tasks_and_methods(tmp_path: Path, monkeypatch) -> None:
    """`wsrl-dist study SPEC --tasks T k=v` (as a user types it; argparse would give k=v to --tasks):
    the k=v reaches every run's config, the task list keeps only tasks."""
    from wsrl_dist import study as study_mod

    seen = {}

    def fake_run(self):
        seen.update(extra=self.extra, tasks=self.only_tasks, methods=self.only_methods)
        return {}

    monkeypatch.setattr(study_mod.Study, "run", fake_run)
    monkeypatch.setattr("wsrl_dist.ops.study_report.write_study_report", lambda d: {})
    study_mod.main([str(REPO / "configs/studies/locomotion.yaml"), "--dir", str(tmp_path / "s"), "--tasks",
                    "hopper-medium-replay-v2", "finetune.online_steps=100000", "--methods", "wsrl", "run.seed=1"])
    assert seen == {"extra": ["finetune.online_steps=100000", "run.seed=1"],
                    "tasks": ["hopper-medium-replay-v2"], "methods": ["wsrl"]}


def test_study_sync_options_are_checked_before_any_work(tmp_path: Path) -> None:
    """A bad --sync-every or a store that cannot be opened stops the study at once, naming it, before
    a pre-training or a cell starts (nothing written to the study dir but what was there)."""
    from wsrl_dist import study as study_mod

    spec = str(REPO / "configs/studies/smoke.yaml")
    with pytest.raises(config.ConfigError, match="--sync-every must be > 0"):
        study_mod.main([spec, "--dir", str(tmp_path / "s"), "--sync-every", "0"])
    with pytest.raises(config.ConfigError, match="--sync-to nosuchproto://bucket/s: .*cannot open this protocol") as e:
        study_mod.main([spec, "--dir", str(tmp_path / "s"), "--sync-to", "nosuchproto://bucket/s"])
    assert "run.storage" not in str(e.value) and str(e.value).count("nosuchproto://bucket/s") == 1
    assert not (tmp_path / "s" / "manifest.json").exists()
    from wsrl_dist.cli import main as cli

    assert cli(["study", spec, "--dir", str(tmp_path / "s"), "--sync-to", "nosuchproto://bucket/s"]) == 2  # one line
