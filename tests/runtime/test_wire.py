"""Wire frames: round trip, and every refusal reason at a replay shard that keeps serving after it."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from wsrl_dist.runtime.datapath.replay import ReplayShard
from wsrl_dist.runtime.datapath.wire import WireError, decode_chunk, encode_chunk

O, A = 4, 1  # noqa: E741 - obs and action dims, as in the shape docstrings


def columns(n: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, O)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, A)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, O)).astype(np.float32),
        "terminals": (np.arange(n) == n - 1).astype(np.float32),
        "timeouts": np.zeros(n, np.float32),
    }


def frame(n: int = 8, **overrides) -> bytes:
    cols = {**columns(n), **overrides}
    return encode_chunk(cols, worker_id=3, seq=7, policy_versions=np.arange(n), episode_returns=[1.5])


def reason(data: bytes, max_bytes: int = 1 << 20) -> str:
    with pytest.raises(WireError) as err:
        decode_chunk(data, obs_dim=O, act_dim=A, max_bytes=max_bytes)
    return err.value.reason


def test_chunk_round_trips_columns_versions_and_returns_exactly():
    cols = columns(16)
    data = encode_chunk(cols, worker_id=2, seq=5, policy_versions=np.full(16, 9), episode_returns=[3.0, -1.0])
    chunk = decode_chunk(data, obs_dim=O, act_dim=A, max_bytes=1 << 20)
    assert (chunk.worker_id, chunk.seq, chunk.episode_returns, len(chunk)) == (2, 5, [3.0, -1.0], 16)
    for k, v in cols.items():
        np.testing.assert_array_equal(chunk.columns[k], v)
        assert chunk.columns[k].dtype == np.float32
    assert chunk.columns["policy_versions"].dtype == np.int64
    assert (chunk.columns["policy_versions"] == 9).all()


def test_frame_over_the_cap_is_oversized():
    data = frame(64)
    assert reason(data, max_bytes=len(data) - 1) == "oversized"
    decode_chunk(data, obs_dim=O, act_dim=A, max_bytes=len(data))  # exactly at the cap is fine


def test_garbage_truncated_and_trailing_bytes_are_malformed():
    data = frame()
    assert reason(b"\xc1\x00\xff garbage") == "malformed"
    assert reason(data[: len(data) // 2]) == "malformed"
    assert reason(data + b"\x00") == "malformed"
    assert reason(msgpack.packb(msgpack.ExtType(5, b"x"))) == "malformed"


@pytest.mark.parametrize("bad", [
    {"observations": np.zeros((8, O + 1), np.float32)},  # obs dim
    {"actions": np.zeros((8, A + 2), np.float32)},  # act dim
    {"rewards": np.zeros(7, np.float32)},  # row count
    {"terminals": np.full(8, 0.5, np.float32)},  # flag not 0/1
])
def test_wrong_shapes_and_flags_are_schema_errors(bad):
    assert reason(frame(**bad)) == "schema"


def test_wrong_dtype_missing_column_and_foreign_map_are_schema_errors():
    obj = msgpack.unpackb(frame())
    obj["cols"]["rewards"]["dtype"] = "<f8"
    assert reason(msgpack.packb(obj)) == "schema"
    obj = msgpack.unpackb(frame())
    del obj["cols"]["timeouts"]
    assert reason(msgpack.packb(obj)) == "schema"
    assert reason(msgpack.packb({"hello": 1})) == "schema"
    assert reason(msgpack.packb([1, 2, 3])) == "schema"


def test_nan_or_inf_anywhere_is_nonfinite():
    obs = columns()["observations"]
    obs[3, 1] = np.nan
    assert reason(frame(observations=obs)) == "nonfinite"
    rew = columns()["rewards"]
    rew[0] = np.inf
    assert reason(frame(rewards=rew)) == "nonfinite"
    data = encode_chunk(columns(), worker_id=0, seq=0, policy_versions=np.zeros(8), episode_returns=[np.nan])
    assert reason(data) == "nonfinite"


def test_shard_counts_each_rejection_inserts_nothing_and_keeps_serving():
    shard = ReplayShard(100, O, A, seed=0, max_frame_bytes=4096)
    assert shard.insert(frame(8)) == 8
    nan_obs = columns()["observations"]
    nan_obs[-1, 0] = np.nan
    bad = [frame(200), b"not msgpack", frame(observations=np.zeros((8, 9), np.float32)),
           frame(observations=nan_obs)]
    assert [shard.insert(b) for b in bad] == [0, 0, 0, 0]
    st = shard.stats()
    assert st["rejected"] == {"oversized": 1, "malformed": 1, "schema": 1, "nonfinite": 1}
    assert st["size"] == 8 and st["env_steps"] == 8  # nothing of the refused frames got in
    assert shard.insert(frame(8)) == 8
    assert shard.sample(32)["observations"].shape == (32, O)
    assert shard.stats()["size"] == 16


def test_mc_returns_travel_as_an_optional_column_checked_like_the_others():
    mc = np.linspace(5, 1, 8).astype(np.float32)
    chunk = decode_chunk(frame(mc_returns=mc), obs_dim=O, act_dim=A, max_bytes=1 << 20)
    np.testing.assert_array_equal(chunk.columns["mc_returns"], mc)
    assert "mc_returns" not in decode_chunk(frame(), obs_dim=O, act_dim=A, max_bytes=1 << 20).columns
    assert reason(frame(mc_returns=np.full(8, np.nan, np.float32))) == "nonfinite"
    assert reason(frame(mc_returns=np.ones(5, np.float32))) == "schema"  # rows must match
    obj = msgpack.unpackb(frame(), raw=False)
    obj["cols"]["advantages"] = obj["cols"]["rewards"]  # a column nobody declared
    assert reason(msgpack.packb(obj, use_bin_type=True)) == "schema"


# ---------------------------------------------------------------- impossible values (issue 17)


def _raw(**changes) -> bytes:
    obj = msgpack.unpackb(frame(), raw=False)
    for key, value in changes.items():
        obj[key] = value
    return msgpack.packb(obj, use_bin_type=True)


def _message(data: bytes) -> str:
    with pytest.raises(WireError) as err:
        decode_chunk(data, obs_dim=O, act_dim=A, max_bytes=1 << 20)
    assert err.value.reason == "schema"
    return str(err.value)


def test_a_shape_that_overflows_int64_is_refused_as_a_wire_error():
    """[2**62, 4] with empty data: np.prod wrapped to 0 == len(b"") and the shard raised a bare
    ValueError out of insert."""
    obj = msgpack.unpackb(frame(), raw=False)
    obj["cols"]["observations"] = {"dtype": "<f4", "shape": [2 ** 62, 4], "data": b""}
    data = msgpack.packb(obj, use_bin_type=True)
    assert "column 'observations' has an invalid shape" in _message(data)
    shard = ReplayShard(100, O, A, seed=0)
    assert shard.insert(data) == 0 and shard.stats()["rejected"]["schema"] == 1


@pytest.mark.parametrize("column, value, row, want", [
    ("actions", 1e30, 2, "column 'actions' must be in the agent's action space [-1, 1]"),
    ("actions", -1.5, 0, "column 'actions' must be in the agent's action space"),
    ("observations", 3e38, 5, "column 'observations' must be within +-1e+06"),
    ("next_observations", -2e7, 1, "column 'next_observations' must be within"),
    ("rewards", 1e9, 4, "column 'rewards' must be within"),
])
def test_finite_but_impossible_values_are_refused_naming_the_column_and_row(column, value, row, want):
    cols = columns()
    cols[column][row] = value
    msg = _message(frame(**{column: cols[column]}))
    assert want in msg and f"first bad row {row}" in msg


def test_actions_at_the_bounds_are_accepted():
    acts = np.array([[-1.0], [1.0]] * 4, np.float32)
    assert len(decode_chunk(frame(actions=acts), obs_dim=O, act_dim=A, max_bytes=1 << 20)) == 8


def test_negative_policy_versions_and_out_of_range_ids_are_refused():
    data = encode_chunk(columns(), worker_id=0, seq=0, policy_versions=np.array([0, 1, 2, -4, 0, 0, 0, 0]))
    assert "column 'policy_versions' must be >= 0, got -4 (first bad row 3)" in _message(data)
    assert "'worker_id' must be an integer in [0, 2147483648), got 18446744073709551615" in _message(
        _raw(worker_id=2 ** 64 - 1))
    assert "'worker_id'" in _message(_raw(worker_id=-1))
    assert "'seq'" in _message(_raw(seq=-3))


def test_a_frame_larger_than_the_shard_is_refused_and_counters_count_stored_rows():
    """A 1.87M-row frame into a 1,000-row shard counted 1.87M env steps while storing 1,000."""
    shard = ReplayShard(10, O, A, seed=0)
    assert shard.insert(frame(11)) == 0
    st = shard.stats()
    assert st["rejected"]["oversized"] == 1 and st["env_steps"] == 0 and st["size"] == 0
    assert st["env_steps_by_worker"] == {}
    assert shard.insert(frame(10)) == 10 and shard.stats()["env_steps"] == 10
