"""RunPlan (wsrl_dist/plan.py): the quantities a job derives from its config, pinned per method for
the reference config (configs/wsrl.yaml: hopper-medium-v2, K=5,000, 500k env steps, UTD 4, batch 256),
and handed on rather than derived again (an actor given a plan follows it)."""

from __future__ import annotations

import dataclasses

import pytest

from wsrl_dist.config import load
from wsrl_dist.plan import RunPlan

COMMON = dict(seeds=(0,), online_steps=500_000, mc_returns=False)
SAC = dict(online_loss="sac", updates_per_env_step=4, rows_per_env_step=4 * 256)


@pytest.mark.parametrize("method, expected", [
    # pre-train CQL, K=5,000 warmup steps, then UTD-4 bundles of 1,024 rows from step 5,001 on
    ("wsrl", dict(pretrained=True, pretrains=True, needs_offline_data=True, warmup_steps=5_000,
                  offline_ratio=0.0, first_update_step=5_001, **SAC)),
    # no warmup: updates wait only for one bundle's rows (t > 1,024, 0-based)
    ("wsrl_no_warmup", dict(pretrained=True, pretrains=True, needs_offline_data=True, warmup_steps=0,
                            offline_ratio=0.0, first_update_step=1_025, **SAC)),
    # from scratch, half of each batch offline (the data is loaded, nothing is pre-trained)
    ("rlpd", dict(pretrained=False, pretrains=False, needs_offline_data=True, warmup_steps=5_000,
                  offline_ratio=0.5, first_update_step=5_001, **SAC)),
    ("sac_scratch", dict(pretrained=False, pretrains=False, needs_offline_data=False, warmup_steps=5_000,
                         offline_ratio=0.0, first_update_step=5_001, **SAC)),
    # the CQL loss kept online: one update of pretrain.batch_size rows per env step, half offline
    ("offline_retained", dict(pretrained=True, pretrains=True, needs_offline_data=True, warmup_steps=5_000,
                              offline_ratio=0.5, first_update_step=5_001, online_loss="cql",
                              updates_per_env_step=1, rows_per_env_step=256)),
])
def test_plan_of_the_reference_config_per_method(method, expected):
    plan = RunPlan.of(load(overrides=[f"finetune.method={method}"]))
    assert dataclasses.asdict(plan) == {"method": method, **COMMON, **expected}
    assert plan.updates_total == plan.updates_per_env_step * (500_000 - plan.first_update_step)


def test_plan_follows_the_config_where_it_has_a_say():
    # a pre-trained checkpoint to load: pre-trained, but nothing pre-trains and no data is needed
    plan = RunPlan.of(load(overrides=["pretrain.checkpoint=/x/pretrained.pt"]))
    assert (plan.pretrained, plan.pretrains, plan.needs_offline_data) == (True, False, False)
    # no pretraining algo: wsrl starts from scratch
    assert not RunPlan.of(load(overrides=["pretrain.algo=none"])).pretrained
    # Cal-QL kept online carries MC returns; the online rows alone gate the first update
    plan = RunPlan.of(load(overrides=["finetune.method=offline_continued", "pretrain.algo=calql",
                                      "finetune.warmup_steps=0", "pretrain.batch_size=300"]))
    assert (plan.online_loss, plan.mc_returns, plan.first_update_step) == ("calql", True, 301)
    plan = RunPlan.of(load(overrides=["finetune.method=rlpd", "finetune.offline_ratio=0.25",
                                      "finetune.warmup_steps=10"]))
    assert (plan.offline_ratio, plan.first_update_step) == (0.25, int(1024 * 0.75) + 1)


def test_seeds_and_one_seed_groups_plan():
    plan = RunPlan.of(load(overrides=["run.seeds=[3,5]"]))
    assert plan.seeds == (3, 5)
    assert plan.for_seed(5) == dataclasses.replace(plan, seeds=(5,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.warmup_steps = 0  # type: ignore[misc]


def test_a_learner_follows_the_plan_it_is_handed(tmp_path):
    """The driver's plan reaches the learner's limiter; the config is not read for it again."""
    from tests.runtime.conftest import tiny_config
    from wsrl_dist.runtime.datapath.learner import Learner

    cfg = tiny_config(tmp_path / "run")
    own = RunPlan.of(cfg)
    handed = dataclasses.replace(own, first_update_step=own.first_update_step + 7, updates_per_env_step=3)
    lrn = Learner(cfg.to_dict(), None, plan=handed)
    assert (lrn.limiter.warmup_steps, lrn.limiter.utd) == (own.first_update_step + 7, 3.0)
    assert Learner(cfg.to_dict(), None).limiter.warmup_steps == own.first_update_step  # built alone
