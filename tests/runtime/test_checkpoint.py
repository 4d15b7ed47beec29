"""Job checkpoints (runtime/orchestration/checkpoint.py), unit level on real files: a DONE marker written last,
resume takes the newest checkpoint that loads and falls back past a truncated or incomplete one
with a one-line warning, a config-hash mismatch is refused, pruning never drops the last good one,
stale temp directories go. Plus the local pipeline's latest.pt / replay file pairing."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from wsrl_dist.errors import CheckpointError
from wsrl_dist.runtime.datapath.replay import ReplayShard
from wsrl_dist.runtime.datapath.wire import encode_chunk
from wsrl_dist.runtime.orchestration import checkpoint

O, A = 4, 1  # noqa: E741


def _shard_state(rows: int) -> dict:
    shard = ReplayShard(100, O, A, seed=0)
    rng = np.random.default_rng(rows)
    cols = {"observations": rng.normal(size=(rows, O)), "actions": rng.uniform(-1, 1, (rows, A)),
            "rewards": rng.normal(size=rows), "next_observations": rng.normal(size=(rows, O)),
            "terminals": np.zeros(rows), "timeouts": np.zeros(rows)}
    assert shard.insert(encode_chunk(cols, worker_id=0, seq=0, policy_versions=np.zeros(rows))) == rows
    return shard.state_dict()


def _save(run_dir, steps: int, keep: int = 5, config_hash: str = "abc") -> None:
    learner = {"w": torch.full((3,), float(steps)), "version": steps}
    checkpoint.save(run_dir, learner, [_shard_state(steps // 10)],
                    {"env_steps": steps, "config_hash": config_hash}, keep=keep)


def _step(run_dir, steps: int):
    return run_dir / "checkpoints" / f"step_{steps:010d}"


def test_round_trip_with_the_done_marker_written_with_every_files_size(tmp_path):
    _save(tmp_path, 100)
    path = checkpoint.latest(tmp_path)
    assert path == _step(tmp_path, 100)
    done = json.loads((path / checkpoint.DONE).read_text())["files"]
    assert set(done) == {"learner.pt", "shard_0.npz", "meta.json"}
    assert all(done[f] == (path / f).stat().st_size for f in done)
    learner, shards, counters = checkpoint.load(path)
    assert learner["version"] == 100 and counters["env_steps"] == 100
    assert shards[0]["ring"]["total_inserted"] == 10


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _scramble(path):  # same size, garbage inside: only loading can tell
    data = bytearray(path.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, fname, why", [
    (_truncate, "learner.pt", "learner.pt has"),
    (_truncate, "shard_0.npz", "shard_0.npz has"),
    (_truncate, "meta.json", "meta.json is unreadable"),
    (lambda p: p.unlink(), "meta.json", "meta.json is missing"),
    (lambda p: p.unlink(), checkpoint.DONE, "DONE marker is missing"),
    (lambda p: p.unlink(), "shard_0.npz", "shard_0.npz is missing"),
    (_scramble, "learner.pt", "learner.pt: does not load"),
    (_scramble, "shard_0.npz", "shard_0.npz: does not load"),
])
def test_a_broken_newest_checkpoint_falls_back_to_the_previous_with_one_warning(tmp_path, caplog, damage,
                                                                                 fname, why):
    _save(tmp_path, 100)
    _save(tmp_path, 200)
    damage(_step(tmp_path, 200) / fname)
    with caplog.at_level(logging.WARNING, logger="wsrl_dist.runtime.orchestration.checkpoint"):
        found = checkpoint.load_newest(tmp_path, config_hash="abc")
    assert found.path == _step(tmp_path, 100) and found.counters["env_steps"] == 100
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert str(_step(tmp_path, 200)) in warnings[0] and why in warnings[0], warnings
    with pytest.raises(CheckpointError, match=why):  # loading it directly names the problem too
        checkpoint.load(_step(tmp_path, 200))
    with pytest.raises(CheckpointError, match=why):  # the check without building the replay arrays too
        checkpoint.verify(_step(tmp_path, 200))
    checkpoint.verify(_step(tmp_path, 100))


def test_no_loadable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    _save(tmp_path, 100)
    _truncate(_step(tmp_path, 100) / "learner.pt")
    with pytest.raises(CheckpointError, match="no checkpoint loads"):
        checkpoint.load_newest(tmp_path)
    assert checkpoint.load_newest(tmp_path / "fresh") is None  # no checkpoints at all: a fresh launch


def test_a_checkpoint_of_another_config_is_refused_unless_forced(tmp_path):
    _save(tmp_path, 100, config_hash="old")
    with pytest.raises(CheckpointError, match="written by config old.*hashes to new.*--force-config"):
        checkpoint.load_newest(tmp_path, config_hash="new")
    assert checkpoint.load_newest(tmp_path, config_hash="new", force_config=True).counters["env_steps"] == 100


def test_pruning_keeps_the_last_good_checkpoint_past_a_broken_newer_one(tmp_path):
    _save(tmp_path, 100, keep=2)
    _save(tmp_path, 200, keep=2)
    (_step(tmp_path, 200) / "meta.json").unlink()  # the newest breaks
    _save(tmp_path, 300, keep=2)  # complete: 100 and 300 kept, broken 200 is not counted
    assert _step(tmp_path, 100).is_dir() and _step(tmp_path, 300).is_dir()
    _save(tmp_path, 400, keep=2)  # now 300 and 400 are the two newest good ones
    left = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert left == ["step_0000000300", "step_0000000400"]


def test_stale_temp_dirs_of_killed_saves_are_removed(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp-step_0000000050-999"
    stale.mkdir(parents=True)
    (stale / "learner.pt").write_bytes(b"half")
    _save(tmp_path, 100)
    assert not stale.exists()


def test_a_checkpoint_from_before_the_marker_still_loads(tmp_path):
    _save(tmp_path, 100)
    path = _step(tmp_path, 100)
    meta = json.loads((path / "meta.json").read_text())
    del meta["format"]
    (path / "meta.json").write_text(json.dumps(meta))
    (path / checkpoint.DONE).unlink()
    assert checkpoint.latest(tmp_path) == path
    assert checkpoint.load_newest(tmp_path).counters["env_steps"] == 100


def test_launch_resume_skips_a_newest_checkpoint_without_meta_json_and_keeps_the_older(ray_local, tmp_path,
                                                                                       caplog):
    """Before: with the newest checkpoint's meta.json gone, `launch --resume` silently started over
    and later pruned the older intact checkpoint. Now it resumes from the older one (one warning)."""
    from tests.runtime.conftest import run_json, tiny_config
    from wsrl_dist.runtime.orchestration import driver

    run_dir = tmp_path / "run"
    # paced (slacks as in test_resume) so that the monitor sees the periodic checkpoints come due
    cfg = tiny_config(run_dir, "finetune.warmup_steps=100", "finetune.online_steps=400",
                      "finetune.eval_every=100000", "run.checkpoint_every=100", "runtime.num_workers=1",
                      "runtime.utd_slack=16", "runtime.rollout_slack=32")
    driver.launch(cfg, "pytest")
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert names[-1] == "step_0000000400" and len(names) == 2, names
    older = run_dir / "checkpoints" / names[0]
    (run_dir / "checkpoints" / names[-1] / "meta.json").unlink()
    with caplog.at_level(logging.WARNING, logger="wsrl_dist.runtime.orchestration.checkpoint"):
        driver.resume(run_dir)
    assert any("meta.json is missing" in r.getMessage() for r in caplog.records)
    info = run_json(run_dir)
    assert info["resumed_from"]["checkpoint"] == older.name
    assert info["resumed_from"]["saved"] == info["resumed_from"]["restored"]
    assert info["env_steps"] == 400
    assert checkpoint.load_newest(run_dir).counters["env_steps"] == 400  # the resumed run's own final one


def test_an_evaluation_still_running_at_a_checkpoint_is_due_again_on_resume():
    """A study stopped by SIGTERM while its 50k evaluation ran resumed with next_eval = 60k and never
    had a 50k point. The checkpoint now saves the running evaluation's scheduled step instead."""
    from wsrl_dist.runtime.orchestration.seedrecords import eval_due_on_resume

    assert eval_due_on_resume(60_000, [50_340], 10_000) == 50_000  # started at 50,340, due at 50k
    assert eval_due_on_resume(60_000, [], 10_000) == 60_000  # nothing running: the schedule as it is
    assert eval_due_on_resume(70_000, [60_020, 50_340], 10_000) == 50_000  # the oldest one
    assert eval_due_on_resume(60_000, [50_340], 0) == 60_000  # no online evaluations scheduled
