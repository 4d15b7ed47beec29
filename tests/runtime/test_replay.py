"""ReplayShard: reward scaling once, sampled columns, stats, and exact snapshot/restore."""

from __future__ import annotations

import numpy as np
import pytest

from tests.runtime.test_wire import A, O, columns
from wsrl_dist.runtime.datapath.replay import ReplayShard
from wsrl_dist.runtime.datapath.wire import encode_chunk


def chunk(n: int, version: int, seed: int = 0, returns=()) -> bytes:
    return encode_chunk(columns(n, seed), worker_id=1, seq=seed, policy_versions=np.full(n, version),
                        episode_returns=returns)


def test_shard_scales_raw_chunk_rewards_exactly_once():
    shard = ReplayShard(64, O, A, seed=0, reward_scale=10.0, reward_bias=-5.0)
    shard.insert(chunk(8, 0))
    raw = columns(8)["rewards"]
    stored = shard.ring.export()["rewards"]
    np.testing.assert_allclose(stored, raw * 10.0 - 5.0, rtol=1e-6)


def test_sample_returns_masks_versions_and_shard_counters():
    shard = ReplayShard(64, O, A, seed=0)
    shard.insert(chunk(8, 3))
    shard.insert(chunk(8, 4, seed=1))
    batch = shard.sample(50)
    assert batch["masks"].shape == (50,)
    np.testing.assert_array_equal(batch["masks"], 1.0 - batch["terminals"])
    assert set(np.unique(batch["policy_versions"])) <= {3, 4}
    assert batch["size"] == 16 and batch["env_steps"] == 16
    assert shard.sample(0).keys() == {"size", "env_steps"}


def test_stats_count_env_steps_per_worker_samples_and_returns():
    shard = ReplayShard(10, O, A, seed=0)
    for i in range(3):
        shard.insert(chunk(8, i, seed=i, returns=[float(i)]))
    shard.sample(5)
    st = shard.stats()
    assert (st["size"], st["inserts"], st["env_steps"], st["samples"]) == (10, 24, 24, 5)
    assert st["env_steps_by_worker"] == {1: 24}
    assert st["recent_returns"] == [0.0, 1.0, 2.0] and st["episodes"] == 3


def test_restored_shard_holds_the_same_rows_counters_and_sampling_stream():
    a = ReplayShard(32, O, A, seed=5)
    for i in range(5):
        a.insert(chunk(8, i, seed=i))
    a.sample(7)
    b = ReplayShard(32, O, A, seed=99)
    b.load_state_dict(a.state_dict())
    assert b.stats() == a.stats()
    x, y = a.sample(16), b.sample(16)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])


def test_a_shard_with_mc_returns_takes_only_frames_that_carry_them_and_samples_them():
    mc = np.arange(8, dtype=np.float32)
    with_mc = encode_chunk({**columns(8), "mc_returns": mc}, worker_id=1, seq=0, policy_versions=np.zeros(8))
    shard = ReplayShard(64, O, A, seed=0, mc_returns=True)
    assert shard.insert(chunk(8, 0)) == 0 and shard.rejected["schema"] == 1  # refused whole
    assert shard.insert(with_mc) == 8 and len(shard.ring) == 8
    batch = shard.sample(32)
    assert set(np.unique(batch["mc_returns"])) <= set(mc.tolist())
    np.testing.assert_array_equal(shard.ring.export()["mc_returns"], mc)
    plain = ReplayShard(64, O, A, seed=0)
    assert plain.insert(with_mc) == 0 and plain.rejected["schema"] == 1 and len(plain.ring) == 0
    # a resumed Cal-QL job restores its shards with the column; a checkpoint without it is refused
    again = ReplayShard(64, O, A, seed=1, mc_returns=True)
    again.load_state_dict(shard.state_dict())
    np.testing.assert_array_equal(again.ring.export()["mc_returns"], mc)
    with pytest.raises(ValueError, match="do not match buffer fields.*mc_returns"):
        ReplayShard(64, O, A, seed=1, mc_returns=True).load_state_dict(plain.state_dict())


def test_a_restarted_shard_refills_from_its_snapshot_and_counts_rows_lost_and_restarts(tmp_path, monkeypatch):
    """Ray restarts a killed shard in place (runtime/datapath/replay.py): the new one refills from
    the snapshot; the counter file says how many rows came after it. A shard killed again while
    loading that snapshot still counts its restart (before, it went uncounted)."""
    from wsrl_dist.runtime.datapath import replay

    a = ReplayShard(64, O, A, seed=0, snapshot_dir=str(tmp_path))
    a.insert(chunk(8, 0))
    a.snapshot()
    a.insert(chunk(8, 1, seed=1))  # after the snapshot: lost with the process
    monkeypatch.setattr(replay, "_reconstructed", lambda: True)
    b = ReplayShard(64, O, A, seed=0, snapshot_dir=str(tmp_path))
    st = b.stats()
    assert (st["size"], st["env_steps"], st["rows_lost"], st["restarts"]) == (8, 8, 8, 1)

    def killed_while_loading(path):
        raise KeyboardInterrupt  # stands for the SIGKILL: nothing after this line runs

    monkeypatch.setattr(replay, "read_snapshot", killed_while_loading)
    with pytest.raises(KeyboardInterrupt):
        ReplayShard(64, O, A, seed=0, snapshot_dir=str(tmp_path))
    monkeypatch.undo()
    monkeypatch.setattr(replay, "_reconstructed", lambda: True)
    d = ReplayShard(64, O, A, seed=0, snapshot_dir=str(tmp_path))
    st = d.stats()
    assert (st["size"], st["rows_lost"], st["restarts"]) == (8, 8, 3)  # the same 8 rows, 3 restarts
