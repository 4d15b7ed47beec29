"""Column declaration and validation (wsrl_dist.data.schema)."""
from __future__ import annotations

import numpy as np
import pytest

from wsrl_dist.data.schema import (
    COLUMN_NAMES,
    DatasetError,
    SchemaError,
    TransitionError,
    episode_bounds,
    episode_ends,
    validate_transitions,
)

OBS, ACT = 3, 2


def chunk(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, OBS)),
        "actions": rng.uniform(-1, 1, size=(n, ACT)),
        "rewards": rng.normal(size=n),
        "next_observations": rng.normal(size=(n, OBS)),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=np.int64),
    }


def test_columns_are_the_six_of_the_conventions():
    assert COLUMN_NAMES == ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def test_validate_casts_every_column_to_float32_with_declared_shapes():
    out = validate_transitions(chunk(), OBS, ACT, source="actor-3")
    assert set(out) == set(COLUMN_NAMES)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in out.values())
    assert out["observations"].shape == (5, OBS) and out["actions"].shape == (5, ACT) and out["rewards"].shape == (5,)


def test_errors_are_value_errors_of_the_requested_class():
    assert issubclass(TransitionError, ValueError) and issubclass(DatasetError, ValueError)
    c = chunk()
    del c["rewards"]
    with pytest.raises(DatasetError):
        validate_transitions(c, OBS, ACT, source="f.hdf5", error_cls=DatasetError)


def test_missing_field_names_source_and_field():
    c = chunk()
    del c["next_observations"]
    with pytest.raises(TransitionError, match=r"actor-7: field 'next_observations': missing"):
        validate_transitions(c, OBS, ACT, source="actor-7")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("field", ["observations", "actions", "rewards", "next_observations"])
def test_non_finite_value_names_field_and_first_bad_row(field, bad):
    c = chunk(n=6)
    c[field][3] = bad
    c[field][5] = bad
    with pytest.raises(TransitionError, match=rf"sender-1: field '{field}': .*non-finite.*first bad row 3") as ei:
        validate_transitions(c, OBS, ACT, source="sender-1")
    assert ei.value.field == field and ei.value.row == 3 and ei.value.source == "sender-1"


def test_float64_value_overflowing_float32_is_rejected_as_inf():
    c = chunk()
    c["rewards"][2] = 1e300
    with pytest.raises(TransitionError, match=r"'rewards'.*inf.*first bad row 2"):
        validate_transitions(c, OBS, ACT, source="s")


@pytest.mark.parametrize(
    "field,shape",
    [("observations", (5, OBS + 1)), ("actions", (5,)), ("rewards", (5, 1)), ("next_observations", (5, OBS, 1))],
)
def test_wrong_row_shape_is_rejected(field, shape):
    c = chunk()
    c[field] = np.zeros(shape)
    with pytest.raises(TransitionError, match=rf"field '{field}': shape"):
        validate_transitions(c, OBS, ACT, source="s")


def test_unequal_lengths_name_the_short_column_and_its_end():
    c = chunk(n=5)
    c["actions"] = c["actions"][:3]
    with pytest.raises(TransitionError, match=r"field 'actions': has 3 rows but other columns have 5 \(first bad row 3\)"):
        validate_transitions(c, OBS, ACT, source="s")


@pytest.mark.parametrize("value", [np.array(["a"] * 5), np.array([1j] * 5), np.array([object()] * 5)])
def test_non_numeric_dtype_is_rejected(value):
    c = chunk()
    c["rewards"] = value
    with pytest.raises(TransitionError, match=r"field 'rewards': dtype .* cannot be cast"):
        validate_transitions(c, OBS, ACT, source="s")


def test_terminal_and_timeout_flags_must_be_zero_or_one():
    c = chunk()
    c["terminals"] = np.array([0, 1, 0.5, 0, 1])
    with pytest.raises(TransitionError, match=r"'terminals': must be 0 or 1 \(first bad row 2\)"):
        validate_transitions(c, OBS, ACT, source="s")


def test_unknown_field_is_rejected_unless_ignored():
    c = chunk()
    c["episode_return"] = np.zeros(5)
    with pytest.raises(TransitionError, match="episode_return"):
        validate_transitions(c, OBS, ACT, source="s")
    assert "episode_return" not in validate_transitions(c, OBS, ACT, source="s", ignore_unknown=True)


def test_extra_fields_are_checked_like_columns():
    c = chunk()
    c["mc_returns"] = np.arange(5.0)
    out = validate_transitions(c, OBS, ACT, source="s", extra_fields={"mc_returns": ((), np.float32)})
    assert out["mc_returns"].dtype == np.float32
    c["mc_returns"][4] = np.nan
    with pytest.raises(SchemaError, match=r"'mc_returns'.*first bad row 4"):
        validate_transitions(c, OBS, ACT, source="s", extra_fields={"mc_returns": ((), np.float32)})


def test_episode_ends_mark_terminals_timeouts_and_the_last_row():
    te = np.array([0, 1, 0, 0, 0, 0], dtype=np.float32)
    to = np.array([0, 0, 0, 1, 0, 0], dtype=np.float32)
    np.testing.assert_array_equal(episode_ends(te, to), [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(episode_ends(te, to, last_is_end=False), [0, 1, 0, 1, 0, 0])
    starts, stops = episode_bounds(te, to)
    np.testing.assert_array_equal(starts, [0, 2, 4])
    np.testing.assert_array_equal(stops, [2, 4, 6])
