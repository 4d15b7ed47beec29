"""run.storage: run dirs default to an absolute storage root (never Ray's temporary working dir),
explicit run.run_dir wins, a URI storage is mirrored through fsspec (issue 16 item 2)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from wsrl_dist import job, storage
from wsrl_dist.config import load


def test_default_run_dir_is_under_the_storage_root_absolute_and_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # as under `ray job submit`: cwd is a throwaway copy
    monkeypatch.setenv(storage.ENV, str(tmp_path / "store"))
    cfg = load(overrides=["task.name=inverted-pendulum-v5"])
    run_dir = job.prepare_run_dir(cfg, "pytest")
    assert run_dir.is_absolute() and run_dir.parent == tmp_path / "store"
    assert run_dir.name.startswith("inverted-pendulum-v5-wsrl-s0-")
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints").is_dir()
    assert f"run dir: {run_dir}" in capsys.readouterr().out
    # the resolved config records where it went, so `--resume` on another head finds the same dir
    assert Path(load([str(run_dir / "config.yaml")]).run.run_dir) == run_dir


def test_storage_default_without_env_is_home_and_explicit_settings_win(tmp_path, monkeypatch):
    monkeypatch.delenv(storage.ENV, raising=False)
    assert storage.root("auto") == str(Path("~/wsrl_dist/runs").expanduser())
    monkeypatch.chdir(tmp_path)
    assert storage.root("rel/store") == str(tmp_path / "rel/store")  # made absolute at start
    cfg = load(overrides=[f"run.storage={tmp_path / 'a'}", f"run.run_dir={tmp_path / 'mine'}"])
    assert job.prepare_run_dir(cfg, "pytest") == tmp_path / "mine"
    cfg = load(overrides=["run.run_dir=relative/run"])
    assert job.prepare_run_dir(cfg, "pytest") == tmp_path / "relative/run"


def test_uri_storage_stages_locally_and_uploads_through_fsspec(tmp_path, monkeypatch):
    pytest.importorskip("fsspec")
    monkeypatch.setattr(storage, "STAGING", str(tmp_path / "staging"))
    uri = f"file://{tmp_path}/bucket/runs"
    cfg = load(overrides=[f"run.storage={uri}", "run.progress=false"])
    run_dir = job.prepare_run_dir(cfg, "pytest")
    assert run_dir.parent == tmp_path / "staging"
    (run_dir / "checkpoints" / "x.pt").write_bytes(b"123")
    job.sync_run_dir(cfg)
    remote = tmp_path / "bucket/runs" / run_dir.name
    assert (remote / "checkpoints" / "x.pt").read_bytes() == b"123"
    assert json.loads((remote / "run.json").read_text())["command"] == "pytest"
    # --resume <uri>/<name> on a machine without the staging copy fetches it first
    import shutil

    shutil.rmtree(run_dir)
    assert storage.check_resume_dir(f"{uri}/{run_dir.name}") == run_dir
    assert (run_dir / "checkpoints" / "x.pt").read_bytes() == b"123"


def test_uri_storage_without_its_protocol_package_names_what_is_missing():
    import importlib.util

    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here")
    with pytest.raises(RuntimeError, match="s3fs"):
        storage.upload(Path("."), "s3://bucket/x")
    with pytest.raises(RuntimeError, match="fsspec cannot open this protocol"):
        storage.upload(Path("."), "nosuchproto://bucket/x")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_mirror_uploads_what_changed_markers_last_and_deletes_what_was_pruned(tmp_path):
    """storage.Mirror (`wsrl-dist study --sync-to`): the copy at the URI follows the local dir file by
    file; a checkpoint's DONE goes up after its other files (a copy cut mid-sync never holds a
    complete-looking checkpoint with files missing); checkpoints being written (.tmp-*) stay local; a
    fresh machine pulls the copy back and has nothing to upload."""
    local, uri = tmp_path / "study", f"file://{tmp_path}/bucket/study"
    ck = local / "runs" / "cell" / "checkpoints"
    (ck / "step_1").mkdir(parents=True)
    for name, data in (("learner.pt", b"L1"), ("meta.json", b"{}"), ("DONE", b"")):
        (ck / "step_1" / name).write_bytes(data)
    (ck / ".tmp-step_2-7").mkdir()
    (ck / ".tmp-step_2-7" / "learner.pt").write_bytes(b"half")
    (local / "manifest.json").write_text('{"cells": {}}')
    (local / "manifest.json.tmp").write_text("{")

    m = storage.Mirror(local, uri)
    order = []
    put = m._put
    m._put = lambda rel: (order.append(rel), put(rel))[1]
    assert m.sync() == 4
    remote = tmp_path / "bucket" / "study"
    assert _tree(remote) == {k: v for k, v in _tree(local).items() if ".tmp" not in k}
    assert order[-1].endswith("step_1/DONE") and not list(remote.rglob("*.part-*"))
    assert m.sync() == 0  # nothing changed

    (local / "manifest.json").write_text('{"cells": {"a": 1}}')  # a unit finished
    os.rename(ck / ".tmp-step_2-7", ck / "step_2")  # the save completes...
    (ck / "step_2" / "DONE").write_bytes(b"")
    shutil.rmtree(ck / "step_1")  # ...and keep_checkpoints prunes the older one
    order.clear()
    assert m.sync() == 3
    assert order == ["manifest.json", "runs/cell/checkpoints/step_2/learner.pt", "runs/cell/checkpoints/step_2/DONE"]
    assert _tree(remote) == {k: v for k, v in _tree(local).items() if ".tmp" not in k}
    assert not (remote / "runs/cell/checkpoints/step_1").exists()

    fresh = tmp_path / "fresh" / "study"  # the machine was lost: another one picks the study up
    m2 = storage.Mirror(fresh, uri)
    assert m2.exists("manifest.json") and m2.pull() == 3
    assert _tree(fresh) == _tree(remote) and m2.sync() == 0


def test_a_mirror_to_a_store_that_cannot_be_opened_fails_at_once(tmp_path):
    with pytest.raises(RuntimeError, match="^--sync-to nosuchproto://bucket/study: fsspec cannot open this protocol"):
        storage.Mirror(tmp_path, "nosuchproto://bucket/study")


def test_a_run_storage_that_cannot_be_opened_is_one_line_on_the_command_line(tmp_path, capsys):
    """Before: `run.storage=nosuchproto://...` ran the whole job up to its first upload (34 s of this
    CPU smoke config) and then ended in a RuntimeError traceback; now one line, before any work."""
    from wsrl_dist.cli import main

    rc = main(["run", "configs/runtime/smoke.yaml", "run.storage=nosuchproto://bucket/runs", "run.progress=false"])
    err = capsys.readouterr().err
    assert rc == 1 and "StorageError: run.storage=nosuchproto://bucket/runs" in err and "Traceback" not in err
