"""D4RL-layout HDF5 files (wsrl_dist.data.d4rl): real files on disk, written and damaged here."""
from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from wsrl_dist.data.d4rl import (
    d4rl_dataset_path,
    d4rl_dataset_url,
    derive_next_observations,
    load_d4rl,
    load_d4rl_hdf5,
    write_d4rl_hdf5,
)
from wsrl_dist.data.schema import DatasetError, DatasetNotFoundError, OfflineDataset

OBS, ACT = 4, 2


def raw_columns(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """D4RL-style raw rows: episode 1 = rows 0..4 (terminal at 4), episode 2 = rows 5..8 (timeout at 8),
    episode 3 = rows 9..11 (cut by the end of the file)."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    terminals[4] = True
    timeouts[8] = True
    return {
        "observations": rng.normal(size=(n, OBS)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, ACT)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def write_raw(path: Path, cols: dict[str, np.ndarray], **extra: np.ndarray) -> Path:
    """ACT file laid out the way D4RL ships them, written with plain h5py (not our writer)."""
    with h5py.File(path, "w") as f:
        for k, v in {**cols, **extra}.items():
            f.create_dataset(k, data=v)
    return path


def full_dataset(n: int = 12) -> OfflineDataset:
    cols = raw_columns(n)
    cols["next_observations"] = np.roll(cols["observations"], -1, axis=0)
    cols = {k: np.asarray(v, dtype=np.float32) for k, v in cols.items()}
    return OfflineDataset.from_columns(
        cols,
        metadata={"algorithm": "SAC", "iteration": 7, "score": 1.5, "clipped": True, "tags": ["a", "b"]},
        infos={"qpos": np.arange(n * 3, dtype=np.float64).reshape(n, 3), "goal/xy": np.ones((n, 2))},
    )


def h5_contents(path: Path) -> dict:
    out: dict = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out["@attrs"] = {k: f["metadata"].attrs[k] for k in f["metadata"].attrs}
    return out


def test_write_load_write_round_trip_is_identical(tmp_path):
    ds = full_dataset()
    p1 = write_d4rl_hdf5(tmp_path / "a.hdf5", ds, ds.metadata)
    loaded = load_d4rl_hdf5(p1, load_infos=True)
    for k, v in ds.columns().items():
        np.testing.assert_array_equal(getattr(loaded, k), v)
        assert getattr(loaded, k).dtype == np.float32
    for k, v in ds.infos.items():
        np.testing.assert_array_equal(loaded.infos[k], v)
    assert loaded.metadata == ds.metadata
    assert loaded.source == str(p1) and len(loaded) == 12 and loaded.obs_dim == OBS and loaded.act_dim == ACT

    p2 = write_d4rl_hdf5(tmp_path / "b.hdf5", loaded)  # metadata defaults to the dataset's
    c1, c2 = h5_contents(p1), h5_contents(p2)
    assert c1.keys() == c2.keys()
    for k in c1:
        if k == "@attrs":
            assert c1[k].keys() == c2[k].keys()
            for a in c1[k]:
                np.testing.assert_array_equal(c1[k][a], c2[k][a])
        else:
            np.testing.assert_array_equal(c1[k], c2[k])
            assert c1[k].dtype == c2[k].dtype
    with h5py.File(p1, "r") as f:  # D4RL dtypes for the flags
        assert f["terminals"].dtype == bool and f["timeouts"].dtype == bool


def test_missing_next_observations_are_derived_like_qlearning_dataset(tmp_path):
    cols = raw_columns()
    path = write_raw(tmp_path / "raw.hdf5", cols)
    ds = load_d4rl_hdf5(path)
    # dropped: row 8 (timeout: its s' was never stored) and row 11 (last row)
    keep = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 10])
    np.testing.assert_array_equal(ds.observations, cols["observations"][keep])
    np.testing.assert_array_equal(ds.next_observations, cols["observations"][keep + 1])
    np.testing.assert_array_equal(ds.actions, cols["actions"][keep])
    np.testing.assert_array_equal(ds.rewards, cols["rewards"][keep])
    np.testing.assert_array_equal(ds.terminals, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    # rows before a dropped row now end their trajectory as a truncation
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 0, 0, 0, 0, 0, 1, 0, 1])


def test_derivation_keeps_terminal_row_and_does_not_mark_it_truncated():
    cols = raw_columns()
    cols["timeouts"][5] = True  # a one-step episode right after a terminal
    out, keep = derive_next_observations({k: v.astype(np.float32) for k, v in cols.items()})
    assert 4 in keep and 5 not in keep
    i = int(np.flatnonzero(keep == 4)[0])
    assert out["terminals"][i] == 1 and out["timeouts"][i] == 0


def test_infos_get_the_same_row_selection(tmp_path):
    cols = raw_columns()
    qpos = np.arange(12.0)[:, None] * np.ones((1, 3))
    path = write_raw(tmp_path / "raw.hdf5", cols, **{"infos/qpos": qpos})
    assert load_d4rl_hdf5(path).infos == {}
    ds = load_d4rl_hdf5(path, load_infos=True)
    np.testing.assert_array_equal(ds.infos["qpos"][:, 0], [0, 1, 2, 3, 4, 5, 6, 7, 9, 10])


def test_metadata_is_read_from_root_attrs_group_attrs_and_scalar_datasets(tmp_path):
    path = write_raw(tmp_path / "m.hdf5", raw_columns())
    with h5py.File(path, "a") as f:
        f.attrs["env"] = "hopper-medium-v2"
        f.create_dataset("metadata/algorithm", data="SAC")
        f.create_dataset("metadata/policy/fc0/weight", data=np.ones((4, 4)))  # not metadata: skipped
        f["metadata"].attrs["iteration"] = 3
    meta = load_d4rl_hdf5(path).metadata
    assert meta == {"env": "hopper-medium-v2", "algorithm": "SAC", "iteration": 3}


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_missing_key_names_file_and_key(tmp_path, key):
    cols = raw_columns()
    del cols[key]
    path = write_raw(tmp_path / "nokey.hdf5", cols)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: field '{key}': missing key"):
        load_d4rl_hdf5(path)


def test_truncated_file_names_the_file(tmp_path):
    path = write_d4rl_hdf5(tmp_path / "t.hdf5", full_dataset(2000))
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: .*truncated or corrupt") as ei:
        load_d4rl_hdf5(path)
    assert isinstance(ei.value.__cause__, OSError)


def test_garbage_file_names_the_file(tmp_path):
    path = tmp_path / "garbage.hdf5"
    path.write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: .*cannot open as HDF5"):
        load_d4rl_hdf5(path)


def test_missing_file_is_a_not_found_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="file not found") as ei:
        load_d4rl_hdf5(tmp_path / "nope.hdf5")
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, ValueError)


def test_dims_different_from_the_env_name_file_and_field(tmp_path):
    path = write_raw(tmp_path / "d.hdf5", raw_columns())
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: field 'observations': obs dim {OBS} differs from the env's 17"):
        load_d4rl_hdf5(path, expected_obs_dim=17)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: field 'actions': action dim {ACT} differs from the env's 6"):
        load_d4rl_hdf5(path, expected_obs_dim=OBS, expected_act_dim=6)
    assert load_d4rl_hdf5(path, expected_obs_dim=OBS, expected_act_dim=ACT).obs_dim == OBS


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("rewards", np.zeros((12, 2), np.float32), r"field 'rewards': shape \(12, 2\)"),
        ("actions", np.zeros((11, ACT), np.float32), r"field 'actions': has 11 rows"),
        ("observations", np.zeros(12, np.float32), r"field 'observations': shape"),
        ("rewards", np.array([b"x"] * 12), r"field 'rewards': dtype"),
        ("terminals", np.full(12, 2, np.int64), r"field 'terminals': must be 0 or 1 \(first bad row 0\)"),
    ],
)
def test_bad_shape_or_dtype_names_file_and_field(tmp_path, field, value, match):
    cols = raw_columns()
    cols[field] = value
    path = write_raw(tmp_path / "bad.hdf5", cols)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: {match}"):
        load_d4rl_hdf5(path)


@pytest.mark.parametrize("with_next", [False, True])
def test_nan_or_inf_names_file_field_and_row(tmp_path, with_next):
    cols = raw_columns()
    cols["observations"][6, 2] = np.nan
    extra = {"next_observations": np.roll(cols["observations"], -1, axis=0)} if with_next else {}
    cols["rewards"][9] = np.inf
    path = write_raw(tmp_path / "nan.hdf5", cols, **extra)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: field 'observations': contains non-finite values \(NaN\) \(first bad row 6\)"):
        load_d4rl_hdf5(path)
    cols["observations"][6, 2] = 0.0
    path = write_raw(tmp_path / "inf.hdf5", cols)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: field 'rewards': .*inf.*first bad row 9"):
        load_d4rl_hdf5(path)


def test_failed_write_leaves_the_existing_file_intact(tmp_path):
    good = full_dataset()
    path = write_d4rl_hdf5(tmp_path / "data.hdf5", good)
    before = path.read_bytes()
    other = full_dataset(30)
    # the metadata value cannot be stored: the failure happens after the columns were written
    with pytest.raises(DatasetError, match=r"metadata/bad"):
        write_d4rl_hdf5(path, other, {"ok": 1, "bad": object()})
    assert path.read_bytes() == before
    assert len(load_d4rl_hdf5(path)) == 12
    assert sorted(os.listdir(tmp_path)) == ["data.hdf5"]  # no temp file left behind


def test_write_rejects_nan_and_touches_nothing(tmp_path):
    ds = full_dataset()
    ds.rewards[3] = np.nan
    target = tmp_path / "x.hdf5"
    with pytest.raises(DatasetError, match=rf"{re.escape(str(target))}: field 'rewards': .*first bad row 3"):
        write_d4rl_hdf5(target, ds)
    assert list(tmp_path.iterdir()) == []


def test_write_accepts_a_plain_dict_of_columns(tmp_path):
    ds = full_dataset()
    cols = {**ds.columns(), "infos/qpos": ds.infos["qpos"]}
    path = write_d4rl_hdf5(tmp_path / "d.hdf5", cols, {"a": "b"})
    loaded = load_d4rl_hdf5(path, load_infos=True)
    np.testing.assert_array_equal(loaded.infos["qpos"], ds.infos["qpos"])
    assert loaded.metadata == {"a": "b"}


def test_dataset_path_root_comes_from_argument_then_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("D4RL_DATASET_DIR", raising=False)
    assert d4rl_dataset_path("hopper-medium-v2") == tmp_path / "home/.d4rl/datasets/hopper_medium-v2.hdf5"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "env"))
    assert d4rl_dataset_path("hopper-medium-replay-v2") == tmp_path / "env/hopper_medium_replay-v2.hdf5"
    assert d4rl_dataset_path("pen-binary-v0", root=tmp_path / "arg") == tmp_path / "arg/pen-binary-v0.hdf5"
    # a file under the task's own name (what build-dataset writes) is found when D4RL's is absent
    (tmp_path / "env").mkdir()
    (tmp_path / "env/hopper-medium-v2.hdf5").write_bytes(b"")
    assert d4rl_dataset_path("hopper-medium-v2") == tmp_path / "env/hopper-medium-v2.hdf5"


def test_d4rl_urls_for_the_paper_tasks():
    assert d4rl_dataset_url("antmaze-large-diverse-v2") == (
        "http://rail.eecs.berkeley.edu/datasets/offline_rl/ant_maze_v2/"
        "Ant_maze_hardest-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5"
    )
    assert d4rl_dataset_url("kitchen-mixed-v0").endswith("kitchen/kitchen_microwave_kettle_bottomburner_light-v0.hdf5")
    assert d4rl_dataset_url("walker2d-medium-expert-v2").endswith("gym_mujoco_v2/walker2d_medium_expert-v2.hdf5")
    assert d4rl_dataset_url("pen-binary-v0") is None


def test_load_d4rl_missing_file_says_where_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as ei:
        load_d4rl("antmaze-umaze-v2", root=tmp_path)
    msg = str(ei.value)
    assert str(tmp_path / "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5") in msg
    assert "http://rail.eecs.berkeley.edu/datasets/offline_rl/ant_maze_v2/" in msg
    assert "wsrl-dist build-dataset" in msg and "D4RL_DATASET_DIR" in msg
    with pytest.raises(DatasetNotFoundError, match="wsrl-dist build-dataset"):
        load_d4rl("pen-binary-v0", root=tmp_path)


def test_load_d4rl_reads_the_file_under_root(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    write_raw(tmp_path / "hopper_medium-v2.hdf5", raw_columns())
    ds = load_d4rl("hopper-medium-v2", root=tmp_path, expected_obs_dim=OBS)
    assert len(ds) == 10 and ds.source == str(tmp_path / "hopper_medium-v2.hdf5")
    with pytest.raises(DatasetError, match="field 'actions'"):
        load_d4rl("hopper-medium-v2", root=tmp_path, expected_act_dim=3)
