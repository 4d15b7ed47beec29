"""Bad input through the real CLI (issue 17): a corrupt HDF5 ends `wsrl-dist run` / `launch` with ONE
line naming the file and the problem and a non-zero exit, not a Ray or torch traceback; --debug
brings the traceback back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
OBS, ACT = 4, 1  # inverted-pendulum-v5, the smoke config's task


def _write(path: Path, n: int = 50, nan_row: int | None = None, short_actions: bool = False) -> Path:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    if nan_row is not None:
        obs[nan_row, 1] = np.nan
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", data=obs)
        f.create_dataset("actions", data=rng.uniform(-1, 1, size=(n - 3 if short_actions else n, ACT))
                         .astype(np.float32))
        f.create_dataset("rewards", data=np.ones(n, np.float32))
        f.create_dataset("terminals", data=np.zeros(n, bool))
        f.create_dataset("timeouts", data=np.zeros(n, bool))
    return path


def _cli(cmd: str, data: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsrl_dist.cli", cmd, "configs/runtime/smoke.yaml", "dataset.source=d4rl",
         f"dataset.path={data}", f"run.run_dir={run_dir}", "run.progress=false", *extra],
        capture_output=True, text=True, cwd=REPO, timeout=300)


def _assert_one_line(out: subprocess.CompletedProcess, path: Path, problem: str) -> None:
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("wsrl-dist:")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert str(path) in lines[0] and problem in lines[0], lines[0]


@pytest.mark.parametrize("kind, problem", [
    ("nan", "field 'observations'"),
    ("empty", "no transitions"),
    ("mismatched", "actions"),
    ("truncated", "truncated or corrupt"),
])
def test_run_on_a_corrupt_hdf5_prints_one_line_naming_the_file(tmp_path, kind, problem):
    path = tmp_path / f"{kind}.hdf5"
    if kind == "truncated":
        _write(path, n=2000)
        path.write_bytes(path.read_bytes()[:3000])
    else:
        _write(path, n=0 if kind == "empty" else 50, nan_row=7 if kind == "nan" else None,
               short_actions=kind == "mismatched")
    _assert_one_line(_cli("run", path, tmp_path / "r"), path, problem)


def test_debug_flag_shows_the_traceback(tmp_path):
    path = _write(tmp_path / "nan.hdf5", nan_row=3)
    out = _cli("run", path, tmp_path / "r", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr and "DatasetError" in out.stderr


def test_launch_on_a_corrupt_hdf5_prints_one_line_not_rays_traceback(tmp_path):
    """The dataset is read inside the Ray learner actor: its DatasetError arrives wrapped."""
    path = _write(tmp_path / "nan.hdf5", nan_row=11)
    out = _cli("launch", path, tmp_path / "r", "runtime.num_workers=1", "runtime.metrics_port=0")
    _assert_one_line(out, path, "field 'observations'")
    assert "first bad row 11" in out.stderr


def test_project_errors_survive_pickling_as_ray_sends_them():
    """Ray pickles an actor's error back to the driver: a 4-argument __init__ broke that, and the
    CLI got an UnserializableException instead of the DatasetError."""
    import pickle

    from wsrl_dist.data.schema import DatasetError, DatasetNotFoundError
    from wsrl_dist.errors import CheckpointError, one_line
    from wsrl_dist.runtime.datapath.wire import WireError

    for err in (DatasetError("/d.hdf5", "rewards", "contains NaN", 5), DatasetNotFoundError("/d", "gone"),
                WireError("schema", "actions out of bounds"), CheckpointError("/c: meta.json missing")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.__dict__ == err.__dict__
        assert one_line(back) == f"{type(err).__name__}: {err}"
    assert one_line(KeyError("x")) is None  # not ours: the CLI re-raises with the traceback
