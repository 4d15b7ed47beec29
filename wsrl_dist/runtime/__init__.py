"""Distributed runtime on Ray. The data path, one module per arrow:

    envs ──> rollout.py (RolloutWorker: vector env + CPU Policy)
               │  wire.TransitionChunk (msgpack, size-capped, no pickle)
               v
             replay.py (ReplayShard x S, storage = data.ring)
               │  sampled numpy batches (prefetched)
               v
             learner.py (Learner: algo.update bundles on GPU/CPU, limiter.py holds UTD)
               │  versioned actor weights
               v
             weights.py (WeightStore / pull-if-newer) ──> back to rollout.py

Deviation (wsrl-reference 1.4 acts with the newest weights after every update): workers act
asynchronously with weights a few versions old (policy lag is measured and exported); setting
runtime.utd_slack=0, runtime.rollout_slack=1, runtime.prefetch=false gives the lock-step schedule
(tests/runtime/test_sync.py).

stages.py (Job) owns the stages (pretrain -> warmup -> online), scaling and restarts; driver.py
starts it (launch, resume). It runs one such data path per seed (seedgroup.py; one seed, or several
with run.seeds) around ONE learner process (learneractor.py: one seed's own loop, or the seeds'
agents stepped together, lock-step).
Importing this package does not import ray; the modules that need it import it themselves.
"""
