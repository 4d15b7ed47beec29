"""UtdLimiter arithmetic: no update before warmup, the learner band, rollout grants, the budget."""

from __future__ import annotations

import pytest

from wsrl_dist.runtime.datapath.limiter import UtdLimiter


def test_no_updates_until_warmup_is_passed_then_utd_per_env_step_plus_slack():
    lim = UtdLimiter(utd=4, warmup_steps=100, total_steps=1000, learner_slack=10)
    assert lim.updates_allowed(0) == 0 and lim.updates_allowed(100) == 0  # slack does not open warmup
    assert lim.updates_allowed(101) == 4 + 10
    assert lim.updates_allowed(150) == 4 * 50 + 10
    assert lim.updates_due(150) == 200 and lim.updates_due(50) == 0


def test_bundles_available_counts_whole_bundles_left_in_the_band():
    lim = UtdLimiter(utd=4, warmup_steps=10, total_steps=100, learner_slack=0)
    assert lim.bundles_available(13, bundle=4) == 3
    lim.record_updates(8)
    assert lim.bundles_available(13, bundle=4) == 1
    lim.record_updates(4)
    assert lim.bundles_available(13, bundle=4) == 0


def test_fractional_utd_allows_floor_of_the_product():
    lim = UtdLimiter(utd=0.5, warmup_steps=0, total_steps=100)
    assert [lim.updates_allowed(n) for n in (1, 2, 3, 7)] == [0, 1, 1, 3]


def test_rollout_grants_stay_within_slack_of_updates_and_in_vector_multiples():
    lim = UtdLimiter(utd=2, warmup_steps=10, total_steps=1000, rollout_slack=6)
    lim.sync_env_steps(10)
    assert lim.grant(64, multiple=4) == 4  # room 6, whole vector steps only
    assert lim.grant(64, multiple=4) == 0  # room 2 < one vector step: wait
    lim.record_updates(20)  # 10 env steps' worth of updates
    assert lim.grant(64, multiple=4) == 12  # room = 10 + 10 + 6 - 14
    assert lim.granted == 26


def test_grant_quantum_waits_for_a_chunk_of_room_but_never_past_slack_or_budget():
    lim = UtdLimiter(utd=1, warmup_steps=0, total_steps=40, rollout_slack=10)
    assert lim.grant(64, quantum=8) == 10
    lim.record_updates(5)  # 5 steps of room: fewer than the quantum
    assert lim.grant(64, quantum=8) == 0
    assert lim.grant(3, quantum=8) == 3  # a small ask needs only its own size
    lim.record_updates(6)  # room 8
    assert lim.grant(64, quantum=8) == 8
    lim.record_updates(20)  # room 20 >= the budget's last 19
    assert lim.grant(64, quantum=64) == 19  # a quantum above the slack is capped at the slack
    tiny = UtdLimiter(utd=1, warmup_steps=0, total_steps=10, rollout_slack=1)
    assert tiny.grant(64, quantum=8) == 1  # lock-step: the slack (1) caps the quantum


def test_budget_ends_with_the_exact_remainder_then_minus_one():
    lim = UtdLimiter(utd=1, warmup_steps=0, total_steps=10, rollout_slack=None)
    assert lim.grant(8, multiple=4) == 8
    assert lim.grant(8, multiple=4) == 2  # the last remainder is handed out even off-multiple
    assert lim.grant(8, multiple=4) == -1


def test_synchronous_limiter_alternates_one_env_step_and_one_bundle():
    utd, k = 4, 5
    lim = UtdLimiter(utd=utd, warmup_steps=k, total_steps=20, learner_slack=0, rollout_slack=1)
    lim.sync_env_steps(k)
    inserted = k
    for _ in range(10):
        assert lim.grant(64) == 1 and lim.grant(64) == 0
        assert lim.bundles_available(inserted, utd) == 0  # the step is not in replay yet
        inserted += 1
        assert lim.bundles_available(inserted, utd) == 1
        lim.record_updates(utd)
        assert lim.bundles_available(inserted, utd) == 0
    assert lim.updates == utd * (inserted - k)


def test_blocked_seconds_and_counters_survive_state_dict():
    lim = UtdLimiter(utd=4, warmup_steps=0, total_steps=100, rollout_slack=8)
    lim.record_updates(12)
    lim.grant(5)
    lim.add_blocked("learner", 1.5)
    lim.add_blocked("rollout", 0.25)
    other = UtdLimiter(utd=4, warmup_steps=0, total_steps=100, rollout_slack=8)
    other.load_state_dict(lim.state_dict())
    assert other.state_dict() == lim.state_dict()
    assert other.blocked_seconds == {"learner": 1.5, "rollout": 0.25}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        UtdLimiter(utd=0, warmup_steps=0, total_steps=1)
    with pytest.raises(ValueError):
        UtdLimiter(utd=1, warmup_steps=0, total_steps=1, rollout_slack=0)
