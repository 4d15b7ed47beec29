"""Grant calls that wait in the learner (Learner.wait_for_env_steps, runtime/datapath/grants.py) instead of
polling it: a refused call sleeps until the training loop's updates make a grant quantum of room,
until its wait runs out, or until the budget is spent. Plain threads, no Ray."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tests.runtime.conftest import tiny_config
from wsrl_dist.runtime.datapath.learner import Learner, first_update_step

WARMUP, TOTAL, SLACK, QUANTUM = 100, 400, 16, 8


@pytest.fixture
def learner(tmp_path):
    cfg = tiny_config(tmp_path / "run", f"finetune.warmup_steps={WARMUP}", f"finetune.online_steps={TOTAL}",
                      f"runtime.rollout_slack={SLACK}", f"runtime.grant_quantum={QUANTUM}")
    lrn = Learner(cfg.to_dict(), None)
    lrn.begin_online(lrn.limiter.warmup_steps)  # the first update's step: the rollout slack is free
    return lrn


class Waiter:
    """One worker's wait_for_env_steps call on a thread of its own."""

    def __init__(self, lrn: Learner, n: int = 64, wait_s: float = 30.0):
        self.result: list | None = None
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._call, args=(lrn, n, wait_s), daemon=True)
        self.thread.start()

    def _call(self, lrn, n, wait_s):
        self.result = lrn.wait_for_env_steps(n, 1, wait_s)
        self.seconds = time.perf_counter() - self.t0

    def join(self, timeout: float = 10.0) -> list:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the waiting grant call never returned"
        return self.result


def waiters(lrn: Learner) -> int:
    with lrn._lock:
        return lrn.grants.waiters


def until(pred, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while not pred():
        assert time.time() < end, "timed out"
        time.sleep(0.005)


def bundle(lrn: Learner) -> None:
    """What the training loop does after queueing one bundle (utd critic updates = 1 env step)."""
    lrn.after_bundle({"critic_loss": torch.zeros(())})


def test_a_granted_call_returns_at_once_without_counting_a_wait(learner):
    assert learner.wait_for_env_steps(64, 1, 5.0) == [SLACK, 0.0]  # the whole rollout slack
    assert learner.limiter.blocked_seconds["rollout"] == 0.0


def test_a_refused_call_waits_until_updates_make_a_quantum_of_room(learner):
    learner.wait_for_env_steps(64, 1, 0.0)  # the slack is handed out: no room left
    w = Waiter(learner)
    until(lambda: waiters(learner) == 1)
    for _ in range(QUANTUM - 1):  # 7 env steps of room: less than a quantum, nobody is woken
        bundle(learner)
    time.sleep(0.2)
    assert w.result is None and waiters(learner) == 1
    bundle(learner)
    granted, waited = w.join()
    assert granted == QUANTUM
    assert 0.2 <= waited < 10 and w.seconds < 10  # woken by the bundle, far before its 30 s wait
    assert learner.limiter.blocked_seconds["rollout"] == pytest.approx(waited)


def test_a_refused_call_returns_0_when_its_wait_runs_out(learner):
    learner.wait_for_env_steps(64, 1, 0.0)
    t0 = time.perf_counter()
    granted, waited = learner.wait_for_env_steps(64, 1, 0.3)
    assert granted == 0 and 0.3 <= waited <= time.perf_counter() - t0 < 5


def test_room_for_one_quantum_wakes_one_of_several_waiters(learner):
    learner.wait_for_env_steps(64, 1, 0.0)
    ws = [Waiter(learner, wait_s=1.5) for _ in range(4)]
    until(lambda: waiters(learner) == 4)
    for _ in range(QUANTUM):
        bundle(learner)
    until(lambda: sum(w.result is not None for w in ws) == 1)
    time.sleep(0.2)  # the other three stay asleep: there is nothing left for them...
    assert waiters(learner) == 3 and [w.result for w in ws if w.result][0][0] == QUANTUM
    results = [w.join() for w in ws]  # ...until their waits run out, with nothing granted
    assert sorted(g for g, _ in results) == [0, 0, 0, QUANTUM]
    assert all(1.5 <= s < 10 for g, s in results if g == 0)


def test_waiters_get_minus_1_once_the_budget_is_spent(tmp_path):
    first = first_update_step(tiny_config(tmp_path / "run", f"finetune.warmup_steps={WARMUP}"))
    cfg = tiny_config(tmp_path / "run", f"finetune.warmup_steps={WARMUP}",
                      f"finetune.online_steps={first + SLACK + 4}",  # a budget 4 steps past the slack
                      f"runtime.rollout_slack={SLACK}", f"runtime.grant_quantum={QUANTUM}")
    lrn = Learner(cfg.to_dict(), None)
    lrn.begin_online(first)
    assert lrn.wait_for_env_steps(64, 1, 0.0)[0] == SLACK  # 4 steps of the budget left
    ws = [Waiter(lrn) for _ in range(3)]
    until(lambda: waiters(lrn) == 3)
    for _ in range(QUANTUM):  # 8 steps of room, 4 of budget: one waiter takes the rest...
        bundle(lrn)
    results = sorted(w.join()[0] for w in ws)
    assert results == [-1, -1, 4]  # ...and the others learn the budget is spent, not just "wait"
    assert lrn.limiter.granted == lrn.limiter.total_steps


def test_resetting_the_granted_count_wakes_waiters(learner):
    learner.wait_for_env_steps(64, 1, 0.0)
    w = Waiter(learner)
    until(lambda: waiters(learner) == 1)
    learner.begin_online(learner.limiter.warmup_steps)  # a resume: steps granted but lost in flight are handed out again
    assert w.join()[0] == SLACK
