"""RunPlan: what a job will do, derived from its config once (stages, UTD, rows, losses, seeds).

The driver (runtime/orchestration/driver.py) and the single-process pipeline (local.py) each build one from the
config and hand it on (learner, rollout workers, replay shards, run.json); nothing below them
derives these quantities from the config again. An actor built alone (a test) plans for itself from
its config: the same function, so the numbers cannot differ. No torch, no ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from wsrl_dist.config import RunConfig

# methods that start from a pre-trained agent / that sample offline data online
PRETRAINED_METHODS = ("wsrl", "wsrl_no_warmup", "offline_continued", "offline_retained")
RETENTION_METHODS = ("rlpd", "offline_retained")
KEPT_LOSS_METHODS = ("offline_continued", "offline_retained")  # the pre-training loss stays online


@dataclass(frozen=True)
class RunPlan:
    method: str  # finetune.method
    seeds: tuple[int, ...]  # the seeds trained: run.seeds, or (run.seed,) for a plain run
    # stage 1: start from a pre-trained agent; pre-train it here (no pretrain.checkpoint to load)
    pretrained: bool
    pretrains: bool
    # the offline dataset is loaded (or built) in stage 1: to pre-train on, or to retain online
    needs_offline_data: bool
    warmup_steps: int  # K: env steps with the pre-trained policy and no updates (stage 2)
    online_steps: int  # env steps of the whole run, the warmup's included (as the reference counts)
    online_loss: str  # "sac" (UTD bundles), or the pre-training loss kept online (its algo name)
    updates_per_env_step: int  # critic updates per env step: the UTD target (the limiter's ratio)
    rows_per_env_step: int  # rows one env step's update reads (utd x batch_size, or pretrain.batch_size)
    offline_ratio: float  # fraction of each online batch drawn from offline data (0 = WSRL)
    first_update_step: int  # env steps after which the first update may run
    mc_returns: bool  # online rows carry MC returns (Cal-QL kept online: whole episodes)

    @classmethod
    def of(cls, cfg: RunConfig) -> RunPlan:
        ft, method = cfg.finetune, cfg.finetune.method
        pretrained = method in PRETRAINED_METHODS and cfg.pretrain.algo != "none"
        pretrains = pretrained and not cfg.pretrain.checkpoint
        ratio = (ft.offline_ratio or 0.5) if method in RETENTION_METHODS else 0.0  # RLPD's symmetric default
        loss = cfg.pretrain.algo if method in KEPT_LOSS_METHODS else "sac"
        per_step = cfg.sac.utd if loss == "sac" else 1
        rows = cfg.sac.utd * cfg.sac.batch_size if loss == "sac" else cfg.pretrain.batch_size
        warmup = 0 if method == "wsrl_no_warmup" else ft.warmup_steps
        # the reference updates only once t > max(K, min_steps_to_update) for the 0-based step t
        # (wsrl-reference-full 1.3; local.py), i.e. from the (max(K, online rows) + 2)-th transition on
        first = max(warmup, int(rows * (1 - ratio))) + 1
        return cls(method=method, seeds=tuple(cfg.run.seeds) or (cfg.run.seed,), pretrained=pretrained,
                   pretrains=pretrains, needs_offline_data=pretrains or ratio > 0, warmup_steps=warmup,
                   online_steps=ft.online_steps, online_loss=loss, updates_per_env_step=per_step,
                   rows_per_env_step=rows, offline_ratio=ratio, first_update_step=first,
                   mc_returns=loss == "calql")

    def for_seed(self, seed: int) -> RunPlan:
        """One seed group's plan in a multi-seed job (the rest does not depend on the seed)."""
        return dataclasses.replace(self, seeds=(int(seed),))

    @property
    def updates_total(self) -> int:
        """Critic updates in the whole run: UTD x the env steps after the first update step."""
        return self.updates_per_env_step * max(0, self.online_steps - self.first_update_step)
