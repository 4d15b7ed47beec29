"""The UTD band held with a slow learner (issue 16 item 8): in a short run the rollouts used to take
the whole online phase at once (rollout slack 512 env steps against 600 online steps), so the UTD
sat near 0 while they ran and the learner then updated alone. The rollout side now stays within
one chunk per worker of the learner's updates during the whole online phase, and the learner's
drain after the last env step is that short too."""

from __future__ import annotations

from tests.runtime.conftest import BackgroundJob, ray_local, read_records, run_json, tiny_config  # noqa: F401
from wsrl_dist.runtime.datapath.grants import rollout_slack
from wsrl_dist.runtime.datapath.learner import first_update_step

K, TOTAL, UTD, WORKERS, CHUNK = 100, 700, 2, 2, 16


def test_slow_learner_keeps_the_rollout_within_the_utd_band_for_the_whole_online_phase(ray_local, tmp_path):  # noqa: F811
    cfg = tiny_config(tmp_path / "band", f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}",
                      "finetune.eval_every=100000", f"sac.utd={UTD}", f"runtime.num_workers={WORKERS}",
                      f"runtime.chunk_size={CHUNK}", "run.checkpoint_every=100000",
                      "runtime.utd_slack=8", "runtime.monitor_interval=0.2",
                      "runtime.test_learner_delay_s=0.02")  # <= 50 env steps/s of learner: the slow side
    slack, first = rollout_slack(cfg), first_update_step(cfg)
    assert slack == WORKERS * CHUNK  # one chunk per worker, not the configured 512
    run_dir = BackgroundJob(cfg).join(timeout=400)
    online = [r for r in read_records(run_dir, "throughput") if r["phase"] == "online"]
    assert len(online) >= 10, len(online)  # a slow learner: many ticks of the online phase
    for r in online:
        due = UTD * max(0, r["env_steps"] - first)  # the updates the env steps in replay call for
        # env steps run ahead of the updates by at most the rollout slack (+ the limiter's grant
        # quantum of rounding), and updates never run ahead of the data by more than utd_slack
        assert due - r["critic_updates"] <= UTD * (slack + 8), r
        assert r["critic_updates"] - due <= 8, r
    # the rollouts did not finish early: when the last env step landed, the learner was within
    # the slack of done, so the learner alone ran at most that long
    first_full = next(r for r in online if r["env_steps"] == TOTAL)
    assert UTD * (TOTAL - first) - first_full["critic_updates"] <= UTD * (slack + 8), first_full
    info = run_json(run_dir)
    assert info["env_steps"] == TOTAL and info["critic_updates"] == UTD * (TOTAL - first)
