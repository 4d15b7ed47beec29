"""Replay storage (wsrl_dist.data.ring.RingBuffer)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from wsrl_dist.data.ring import RingBuffer
from wsrl_dist.data.schema import TransitionError

OBS, ACT = 3, 2


def rows(start: int, n: int) -> dict[str, np.ndarray]:
    """n transitions whose every column encodes the global row id (start..start+n-1)."""
    ids = np.arange(start, start + n, dtype=np.float64)
    return {
        "observations": np.repeat(ids[:, None], OBS, axis=1),
        "actions": np.repeat(ids[:, None] / 1e6, ACT, axis=1),
        "rewards": ids,
        "next_observations": np.repeat(ids[:, None] + 0.5, OBS, axis=1),
        "terminals": (ids % 3 == 0).astype(np.float32),
        "timeouts": (ids % 7 == 6).astype(np.float32),
    }


def stored_ids(buf: RingBuffer) -> np.ndarray:
    return buf.export()["rewards"].astype(np.int64)


def test_insert_fills_rows_in_order_and_counts_them():
    buf = RingBuffer(10, OBS, ACT)
    assert len(buf) == 0 and buf.total_inserted == 0
    assert buf.insert(rows(0, 4)) == 4
    assert buf.insert(rows(4, 3)) == 3
    assert len(buf) == 7 and buf.total_inserted == 7
    np.testing.assert_array_equal(stored_ids(buf), np.arange(7))
    out = buf.export()
    np.testing.assert_array_equal(out["observations"][:, 0], np.arange(7))
    assert out["observations"].dtype == np.float32


def test_chunk_crossing_the_end_wraps_and_overwrites_the_oldest_rows():
    buf = RingBuffer(10, OBS, ACT)
    buf.insert(rows(0, 8))
    buf.insert(rows(8, 5))  # 2 rows to the end, 3 wrap to the front
    assert len(buf) == 10 and buf.total_inserted == 13
    np.testing.assert_array_equal(stored_ids(buf), np.arange(3, 13))
    # physical layout: rows 10, 11, 12 overwrote slots 0..2
    np.testing.assert_array_equal(buf.gather(np.arange(10))["rewards"], [10, 11, 12, 3, 4, 5, 6, 7, 8, 9])


def test_chunk_larger_than_capacity_keeps_only_its_last_rows():
    buf = RingBuffer(10, OBS, ACT)
    buf.insert(rows(0, 3))
    assert buf.insert(rows(3, 25)) == 25
    assert len(buf) == 10 and buf.total_inserted == 28
    np.testing.assert_array_equal(stored_ids(buf), np.arange(18, 28))
    buf.insert(rows(28, 1))
    np.testing.assert_array_equal(stored_ids(buf), np.arange(19, 29))


def test_many_small_inserts_match_one_big_insert():
    a, b = RingBuffer(7, OBS, ACT), RingBuffer(7, OBS, ACT)
    for start in range(0, 40, 3):
        a.insert(rows(start, 3))
    b.insert(rows(0, 42))
    np.testing.assert_array_equal(stored_ids(a), stored_ids(b))
    assert a.total_inserted == b.total_inserted == 42


def test_sample_uses_only_filled_rows_uniformly():
    buf = RingBuffer(1000, OBS, ACT)
    buf.insert(rows(0, 10))
    batch = buf.sample(20_000, np.random.default_rng(0))
    ids = batch["rewards"].astype(np.int64)
    assert ids.min() >= 0 and ids.max() <= 9
    counts = np.bincount(ids, minlength=10)
    assert counts.min() > 1_800 and counts.max() < 2_200  # expected 2,000 each; sd ~42


def test_sample_returns_whole_rows_and_masks_from_terminals():
    buf = RingBuffer(50, OBS, ACT)
    buf.insert(rows(0, 30))
    batch = buf.sample(256, np.random.default_rng(1))
    assert set(batch) == {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "masks"}
    ids = batch["rewards"]
    np.testing.assert_array_equal(batch["observations"][:, 0], ids)
    np.testing.assert_array_equal(batch["next_observations"][:, 2], ids + 0.5)
    np.testing.assert_array_equal(batch["terminals"], (ids % 3 == 0))
    np.testing.assert_array_equal(batch["masks"], 1.0 - batch["terminals"])
    assert batch["masks"].dtype == np.float32 and batch["observations"].shape == (256, OBS)


def test_sample_is_reproducible_with_the_same_generator_and_fails_when_empty():
    buf = RingBuffer(50, OBS, ACT)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4, np.random.default_rng(0))
    buf.insert(rows(0, 30))
    a = buf.sample(64, np.random.default_rng(5))["rewards"]
    b = buf.sample(64, np.random.default_rng(5))["rewards"]
    np.testing.assert_array_equal(a, b)


def test_state_dict_round_trip_restores_exactly():
    buf = RingBuffer(10, OBS, ACT, extra_fields={"mc_returns": ((), np.float32)})
    for start in (0, 6, 12):
        c = rows(start, 6)
        c["mc_returns"] = -c["rewards"]
        buf.insert(c)
    state = pickle.loads(pickle.dumps(buf.state_dict()))  # must survive a Ray object-store hop
    other = RingBuffer(10, OBS, ACT, extra_fields={"mc_returns": ((), np.float32)})
    other.load_state_dict(state)
    assert (len(other), other.total_inserted) == (len(buf), buf.total_inserted) == (10, 18)
    for k, v in buf.export().items():
        np.testing.assert_array_equal(other.export()[k], v)
    # same future: the next insert lands in the same slots, the same rng gives the same batch
    c = rows(18, 4)
    c["mc_returns"] = -c["rewards"]
    buf.insert(c)
    other.insert(c)
    for k, v in buf.sample(32, np.random.default_rng(3)).items():
        np.testing.assert_array_equal(other.sample(32, np.random.default_rng(3))[k], v)


def test_load_state_dict_rejects_a_different_layout():
    buf = RingBuffer(10, OBS, ACT)
    buf.insert(rows(0, 4))
    with pytest.raises(ValueError, match="layout"):
        RingBuffer(11, OBS, ACT).load_state_dict(buf.state_dict())
    with pytest.raises(ValueError, match="fields"):
        RingBuffer(10, OBS, ACT, extra_fields={"mc_returns": ((), np.float32)}).load_state_dict(buf.state_dict())


@pytest.mark.parametrize(
    "field,corrupt,match",
    [
        ("rewards", lambda c: c["rewards"].__setitem__(2, np.nan), r"'rewards'.*first bad row 2"),
        ("observations", lambda c: c["observations"].__setitem__((4, 1), np.inf), r"'observations'.*first bad row 4"),
        ("actions", lambda c: c.__setitem__("actions", np.zeros((6, ACT + 1))), r"'actions': shape"),
        ("next_observations", lambda c: c.__setitem__("next_observations", c["next_observations"][:5]), r"rows"),
        ("timeouts", lambda c: c.pop("timeouts"), r"'timeouts': missing"),
    ],
)
def test_bad_chunk_raises_naming_the_sender_and_changes_nothing(field, corrupt, match):
    buf = RingBuffer(8, OBS, ACT)
    buf.insert(rows(0, 5))
    before_state = buf.state_dict()
    bad = rows(100, 6)  # would wrap: a partial write would be visible
    corrupt(bad)
    with pytest.raises(TransitionError, match=match) as ei:
        buf.insert(bad, source="rollout-worker-2")
    assert "rollout-worker-2" in str(ei.value) and ei.value.field == field
    assert len(buf) == 5 and buf.total_inserted == 5
    after = buf.state_dict()
    assert after["ptr"] == before_state["ptr"]
    for k, v in before_state["arrays"].items():
        np.testing.assert_array_equal(after["arrays"][k], v)
    np.testing.assert_array_equal(buf.gather(np.arange(8))["rewards"], [0, 1, 2, 3, 4, 0, 0, 0])


def test_extra_fields_are_stored_sampled_and_required():
    buf = RingBuffer(20, OBS, ACT, extra_fields={"mc_returns": ((), np.float32), "goal": ((2,), np.float32)})
    c = rows(0, 5)
    with pytest.raises(TransitionError, match="'goal': missing"):
        buf.insert({**c, "mc_returns": np.zeros(5)})
    buf.insert({**c, "mc_returns": c["rewards"] * 2, "goal": np.ones((5, 2))})
    batch = buf.sample(16, np.random.default_rng(0))
    np.testing.assert_array_equal(batch["mc_returns"], batch["rewards"] * 2)
    assert batch["goal"].shape == (16, 2)


def test_insert_and_sample_are_vectorised_fast_enough():
    import time

    buf = RingBuffer(200_000, 17, 6)
    rng = np.random.default_rng(0)
    n = 50_000
    big = {
        "observations": rng.normal(size=(n, 17)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 6)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, 17)).astype(np.float32),
        "terminals": np.zeros(n, np.float32),
        "timeouts": np.zeros(n, np.float32),
    }
    t0 = time.perf_counter()
    for _ in range(6):  # 300k rows through a 200k ring: wraps once
        buf.insert(big)
    for _ in range(20):
        buf.sample(1024, rng)
    assert time.perf_counter() - t0 < 2.0
    assert len(buf) == 200_000 and buf.total_inserted == 300_000
