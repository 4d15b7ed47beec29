"""UtdLimiter: holds the learner's critic updates per env step in a band (between replay and learner).

Units: `utd` is critic updates per env step (one update bundle = `utd` critic updates for one env
step). Learner side: at most utd * (env_steps - warmup_steps) + learner_slack critic updates, where
env_steps counts rows that reached the replay shards; nothing at all before the warmup is done, and
never more than utd * (total_steps - warmup_steps) in the whole run.
Rollout side (optional): env steps granted stay within warmup_steps + updates / utd + rollout_slack,
and never past `total_steps`. Plain arithmetic, no Ray, no clocks: callers measure the time they wait
and report it with `add_blocked` (thread safety is the host's job).
"""

from __future__ import annotations

import math
from typing import Any

SIDES = ("learner", "rollout")


class UtdLimiter:
    def __init__(
        self,
        utd: float,
        warmup_steps: int,
        total_steps: int,
        learner_slack: float = 0.0,
        rollout_slack: int | None = None,
    ):
        if utd <= 0:
            raise ValueError(f"utd must be > 0, got {utd}")
        if learner_slack < 0 or (rollout_slack is not None and rollout_slack < 1):
            raise ValueError("learner_slack must be >= 0 and rollout_slack >= 1 (or None)")
        self.utd, self.warmup_steps, self.total_steps = float(utd), int(warmup_steps), int(total_steps)
        self.learner_slack = float(learner_slack)
        self.rollout_slack = rollout_slack
        self.updates = 0  # critic updates done
        self.granted = 0  # env steps handed to rollout workers (or synced from the shards)
        self.blocked_seconds = {s: 0.0 for s in SIDES}

    # ------------------------------------------------------------------ learner side
    def updates_allowed(self, env_steps: int) -> int:
        """Critic updates allowed in total once `env_steps` rows are in replay."""
        online = int(env_steps) - self.warmup_steps
        if online <= 0:
            return 0
        # the slack never carries past the run's end: a finished run has made exactly its due updates
        cap = self.updates_due(self.total_steps)
        return min(cap, int(math.floor(self.utd * online + self.learner_slack + 1e-9)))

    def updates_due(self, env_steps: int) -> int:
        """Critic updates owed with no slack: what a finished run must have done."""
        return max(0, int(math.floor(self.utd * (int(env_steps) - self.warmup_steps) + 1e-9)))

    def bundles_available(self, env_steps: int, bundle: int) -> int:
        """Whole bundles of `bundle` critic updates the learner may run now."""
        return max(0, (self.updates_allowed(env_steps) - self.updates) // int(bundle))

    def record_updates(self, n: int) -> None:
        self.updates += int(n)

    # ------------------------------------------------------------------ rollout side
    def env_steps_allowed(self) -> int:
        """Total env steps the rollout side may have taken given the updates done so far."""
        if self.rollout_slack is None:
            return self.total_steps
        ahead = self.warmup_steps + math.floor(self.updates / self.utd + 1e-9) + self.rollout_slack
        return min(self.total_steps, ahead)

    def grant(self, n: int, multiple: int = 1, quantum: int = 1) -> int:
        """Hand out up to `n` env steps, in whole multiples of `multiple` (a vector env steps all its
        envs) except for the budget's last remainder. Returns 0 when the rollout must wait and -1
        once all `total_steps` are handed out. `quantum`: hand out nothing while fewer than
        min(n, quantum) steps are free (except the budget's remainder), so that a saturated pool is
        shared in chunks, not one step per call (each call costs the learner process CPU)."""
        left = self.total_steps - self.granted
        if left <= 0:
            return -1
        room = min(int(n), self.env_steps_allowed() - self.granted)
        # capped at the rollout slack: a larger quantum could never be free at once
        need = min(int(n), int(quantum), left, self.rollout_slack or left)
        if room < need:
            return 0
        g = room if room >= left else (room // multiple) * multiple
        g = max(0, min(g, left))
        self.granted += g
        return g

    def rollout_room(self) -> int:
        """Env steps grant() could hand out right now (0 when the rollout side must wait)."""
        return max(0, min(self.env_steps_allowed(), self.total_steps) - self.granted)

    def sync_env_steps(self, env_steps: int) -> None:
        """Set the granted count to what replay holds (start of the online stage, after a resume):
        steps granted but lost in flight are handed out again."""
        self.granted = int(env_steps)

    def add_blocked(self, side: str, seconds: float) -> None:
        self.blocked_seconds[side] += float(seconds)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "granted": self.granted,
                "blocked_seconds": dict(self.blocked_seconds)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.granted = int(state["granted"])
        self.blocked_seconds = {s: float(state["blocked_seconds"].get(s, 0.0)) for s in SIDES}
