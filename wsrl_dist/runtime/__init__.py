"""Distributed runtime on Ray, in three subpackages by role.

datapath/: the modules a transition passes through, one per arrow:

    envs ──> rollout.py (RolloutWorker: vector env + CPU Policy)
               │  wire.TransitionChunk (msgpack, size-capped, no pickle)
               v
             replay.py (ReplayShard x shards, storage = data.ring)
               │  sampled rows, prefetched (feed.py: one device copy per request)
               v
             learneractor.py (LearnerActor: S >= 1 seeds' learner.Learner; algo.update bundles on
               │  GPU/CPU; limiter.py holds UTD, grants.py hands env steps to the workers)
               │  versioned actor weights (learneroutputs.py, hostcopy.py)
               v
             weights.py (WeightStore / pull-if-newer) ──> back to rollout.py

orchestration/: the job around it. stages.py (Job) owns the stages (pretrain -> warmup -> online),
scaling and restarts for S >= 1 seeds (seedgroup.py: one seed's data path; seedrecords.py: its
evals, probes and checkpoints); driver.py starts it (launch, resume); supervisor.py, watchdog.py,
checkpoint.py, stop.py, control.py (the CLI's handle on a running job), placement.py, peers.py,
exposure.py, jobtools.py.

instrumentation/: off the data path: monitor.py (merged stats), progress.py (stage lines),
bundletimer.py (device time per bundle), procstats.py (the learner process's own costs).

Deviation (wsrl-reference 1.4 acts with the newest weights after every update): workers act
asynchronously with weights a few versions old (policy lag is measured and exported); setting
runtime.utd_slack=0, runtime.rollout_slack=1, runtime.prefetch=false gives the lock-step schedule
(tests/runtime/test_sync.py).
Importing this package does not import ray; the modules that need it import it themselves.
"""
