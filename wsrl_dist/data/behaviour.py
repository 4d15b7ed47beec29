"""The dataset builder's behaviour-SAC learners: the host-replay reference loop and the GPU fast path.

`train_behaviour_policy` (data/builder.py) drives one of these per env step: `insert` a transition
during the uniform-random phase, then `step` = insert + one plain-SAC update (UTD 1, the builder's
`sac_update`) + the action for the next observation; `act` once where acting starts.

- `EagerLearner`: replay in a host RingBuffer, numpy-drawn batch copied to the device per update,
  the update run op by op (the loop as D4RL's rlkit runs it; the CPU path).
- `FastLearner`: replay rows also kept on the device, batch indices drawn there, and on a GPU two
  CUDA graphs per env step (algo/graph_capture.py `capture`, capturable Adam): (insert + next action), then
  (draw + update). Per env step the host does one 4*(W+O)-byte copy in, two graph replays and one
  A-float copy out, and waits only for the first graph: the update runs on the GPU while the host
  steps the env. The eager loop's ~5.7 ms per step on an H100 (176 env steps/s) was almost all
  Python launching the update's small kernels one by one. Same math as `sac_update` on a batch of
  uniformly drawn rows; on CPU (graph=False) the same two functions run eagerly, which
  tests/data/test_behaviour.py checks against sac_update row for row.
  With `fused` (the GPU default) the update is algo/fused.py's formulation of the same plain-SAC
  step (flat parameter/Adam buffers, full min over both critics via Spec.full_min) through
  torch.compile, captured inside the same graph: ~333 small kernels (941 us of GPU time per update
  on an H100) become a few dozen fused ones. tests/data/test_behaviour.py checks it against
  sac_update with pinned noise.
  Deviation: the next action comes from the actor before this step's update (one update stale),
  so that the update overlaps the env step. D4RL's behaviour learner (rlkit's batch SAC) acted with
  a policy up to 1,000 updates stale (1,000 env steps collected, then 1,000 updates).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.fused_bundles import FusedBundles
from wsrl_dist.algo.graph_capture import _init_adam_state, _optimizers, _state_tensors, capture
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch, batch_from_numpy
from wsrl_dist.data.ring import RingBuffer

UpdateFn = Callable[[Agent, Batch, SACConfig], None]
# (obs [O], action [A], raw reward, next_obs [O], terminated, truncated) of one env step
Transition = tuple[np.ndarray, np.ndarray, float, np.ndarray, bool, bool]


def transition_row(t: Transition) -> dict[str, np.ndarray]:
    """One transition as a 1-row chunk. Terminated wins over a same-step truncation (no bootstrap)."""
    obs, action, reward, next_obs, terminated, truncated = t
    f32 = np.float32
    return {"observations": np.asarray(obs, f32)[None], "actions": np.asarray(action, f32)[None],
            "rewards": np.array([reward], f32), "next_observations": np.asarray(next_obs, f32)[None],
            "terminals": np.array([terminated], f32), "timeouts": np.array([truncated and not terminated], f32)}


class EagerLearner:
    """Host replay (`buf`), a numpy-drawn batch per update, the update op by op."""

    def __init__(self, agent: Agent, cfg: SACConfig, buf: RingBuffer, rng: np.random.Generator,
                 update: UpdateFn):
        self.agent, self.cfg, self.buf, self.rng, self.update = agent, cfg, buf, rng, update

    def insert(self, t: Transition) -> None:
        self.buf.insert(transition_row(t), source="sac run")

    def act(self, obs: np.ndarray) -> np.ndarray:
        """A sampled action [A] for one observation (a host sync on a GPU)."""
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.agent.device)[None]
            return self.agent.actor(o)[0][0].cpu().numpy()

    def step(self, t: Transition, next_obs: np.ndarray) -> np.ndarray:
        """Insert `t`, one update on a uniform batch of all rows so far, the action for `next_obs`."""
        self.insert(t)
        self.update(self.agent, batch_from_numpy(self.buf.sample(self.cfg.batch_size, self.rng),
                                                 self.agent.device), self.cfg)
        return self.act(next_obs)

    def replay(self) -> RingBuffer:
        return self.buf


class FastLearner:
    """Replay on the agent's device as packed rows [capacity, W] (obs | action | reward | next_obs |
    terminal), W = 2 O + A + 2; the host RingBuffer `buf` gets the same rows in chunks (checkpoints,
    the exported replay). `graph`: insert + draw + update + act captured as one CUDA graph (the agent
    needs capturable optimizers); without it the same step function runs eagerly.

    Batch rows are drawn as floor(u * n), u ~ U[0, 1) in float64 on the device (n = rows stored):
    uniform with replacement like RingBuffer.sample, from the device's RNG instead of numpy's."""

    CHUNK = 1024  # host rows staged per RingBuffer.insert (its validation costs ~35 us per call)

    def __init__(self, agent: Agent, cfg: SACConfig, buf: RingBuffer, update: UpdateFn, graph: bool,
                 fused: bool = False):
        dev = agent.device
        if graph and dev.type != "cuda":
            raise ValueError("FastLearner(graph=True) needs the agent on a CUDA device")
        self.agent, self.cfg, self.buf, self.update, self.graph = agent, cfg, buf, update, graph
        self.fused = fused
        # made at the first step, after a resumed checkpoint was loaded into the agent: it re-points
        # the agent's parameters and Adam state into its flat buffers (algo/fused.py FusedState)
        self._bundle: FusedBundles | None = None
        o, a = agent.obs_dim, agent.act_dim
        self.o, self.a, self.w = o, a, 2 * o + a + 2
        self.capacity = buf.capacity
        self.storage = torch.zeros(self.capacity, self.w, device=dev)
        self.stored = torch.zeros((), dtype=torch.int64, device=dev)  # rows ever written to storage
        pin = dev.type == "cuda"
        # the step's input: the new row | the observation to act on next; its output: that action
        self.inp = torch.zeros(self.w + o, device=dev)
        self.host_inp = torch.zeros(self.w + o, pin_memory=pin)
        self.host_inp_np = self.host_inp.numpy()
        self.action = torch.zeros(a, device=dev)
        self.host_action = torch.zeros(a, pin_memory=pin)
        self._staged: list[dict[str, np.ndarray]] = []
        self._uploaded = 0  # host rows (buf + staged) present in storage
        self._graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None

    # ------------------------------------------------------------------ host side
    def _pack(self, t: Transition, next_obs: np.ndarray | None) -> None:
        obs, action, reward, nobs, terminated, _ = t
        o, a, x = self.o, self.a, self.host_inp_np
        x[:o], x[o:o + a], x[o + a] = obs, action, reward
        x[o + a + 1:2 * o + a + 1], x[2 * o + a + 1] = nobs, float(terminated)
        if next_obs is not None:
            x[self.w:] = next_obs

    def _stage(self, t: Transition) -> None:
        self._staged.append(transition_row(t))
        if len(self._staged) >= self.CHUNK:
            self.flush()

    def flush(self) -> None:
        """Staged rows into the host RingBuffer."""
        if self._staged:
            self.buf.insert({k: np.concatenate([r[k] for r in self._staged]) for k in self._staged[0]},
                            source="sac run")
            self._staged.clear()

    def replay(self) -> RingBuffer:
        self.flush()
        return self.buf

    def _host_rows(self) -> int:
        return self.buf.total_inserted + len(self._staged)

    def _upload(self) -> None:
        """Copy every host row (random phase, a resumed checkpoint) into device storage at once."""
        self.flush()
        cols = self.buf.export()
        if self.buf.total_inserted > self.capacity:
            raise ValueError("FastLearner: the behaviour replay wrapped around its capacity")
        n = len(cols["rewards"])
        packed = np.concatenate([cols["observations"], cols["actions"], cols["rewards"][:, None],
                                 cols["next_observations"], cols["terminals"][:, None]], axis=1)
        self.storage[:n].copy_(torch.from_numpy(packed))
        self.stored.fill_(n)
        self._uploaded = n

    # ------------------------------------------------------------------ the step
    def _insert_act(self, _: object = None) -> None:
        """Append inp's row; sample the action for inp's observation."""
        o, w, cap = self.o, self.w, self.capacity
        with torch.no_grad():
            self.storage.index_copy_(0, torch.remainder(self.stored, cap).view(1), self.inp[:w].view(1, w))
            self.stored.add_(1)
            self.action.copy_(self.agent.actor(self.inp[w:].view(1, o))[0][0])

    def _draw_update(self, _: object = None) -> None:
        """One update on a uniform batch of the stored rows."""
        o, a, cap = self.o, self.a, self.capacity
        with torch.no_grad():
            n = torch.clamp(self.stored, min=1, max=cap)  # min: capture's warm-up may run on no rows
            u = torch.rand(self.cfg.batch_size, dtype=torch.float64, device=self.storage.device)
            idx = torch.minimum((u * n).long(), n - 1)
            rows = self.storage.index_select(0, idx)
            batch = Batch(rows[:, :o], rows[:, o:o + a], rows[:, o + a], rows[:, o + a + 1:2 * o + a + 1],
                          1.0 - rows[:, 2 * o + a + 1])
        if self._bundle is not None:
            self._bundle([batch])
        else:
            self.update(self.agent, batch, self.cfg)

    def _make_bundle(self) -> None:
        """The fused update: compiled where the step is captured (GPU), eager otherwise (CPU tests).
        Its target is the builder's: the min over every critic when the subsample is the whole
        ensemble (data/builder._critic_target), else WSRL's subsampled min."""
        c = self.cfg
        self._bundle = FusedBundles([self.agent], c, "fused_compile" if self.graph else "fused",
                                    full_min=c.critic_subsample_size == c.critic_ensemble_size)

    def _capture(self) -> None:
        if self.fused and self._bundle is None:
            self._make_bundle()
        for opt in _optimizers(self.agent):
            if not all(g.get("capturable") for g in opt.param_groups):
                raise ValueError("FastLearner(graph=True) needs optimizers made with capturable=True")
            _init_adam_state(opt)
        # the warm-up calls write rows past `stored` (never drawn: restored below) and update the
        # agent (restored in place by capture); the action buffer is rewritten by every step
        state = [self.stored, *_state_tensors(self.agent)]
        self._graphs = (capture(self._insert_act, None, state)[0], capture(self._draw_update, None, state)[0])
        self._acted = torch.cuda.Event()

    def insert(self, t: Transition) -> None:
        self._stage(t)

    def act(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=torch.float32).to(self.agent.device)[None]
            return self.agent.actor(o)[0][0].cpu().numpy()

    def step(self, t: Transition, next_obs: np.ndarray) -> np.ndarray:
        """Store `t`, return the action for `next_obs` (from the actor before this step's update),
        then update on a batch drawn from all rows (on a GPU: still running when this returns)."""
        if self._uploaded != self._host_rows():
            self._upload()
        if self.fused and self._bundle is None and not self.graph:
            self._make_bundle()  # (graph: made by _capture)
        self._pack(t, next_obs)
        if not self.graph:
            self.inp.copy_(self.host_inp)
            self._insert_act()
            action = self.action.cpu().numpy()
            self._draw_update()
        else:
            if self._graphs is None:
                self._capture()
            self.inp.copy_(self.host_inp, non_blocking=True)
            self._graphs[0].replay()
            self.host_action.copy_(self.action, non_blocking=True)
            self._acted.record()
            self._graphs[1].replay()  # the update: the GPU runs it while the host steps the env
            self._acted.synchronize()
            action = self.host_action.numpy().copy()
        self._stage(t)
        self._uploaded += 1
        return action


def make_learner(agent: Agent, cfg: SACConfig, buf: RingBuffer, rng: np.random.Generator, update: UpdateFn,
                 fast: bool | None = None, fused: bool | None = None) -> EagerLearner | FastLearner:
    """fast None: the CUDA-graph FastLearner on a GPU, the EagerLearner on CPU. fused None: the fused
    compiled update inside that graph on a GPU (`update` is then the reference it is tested against)."""
    gpu = agent.device.type == "cuda"
    if fast is None:
        fast = gpu
    if not fast:
        return EagerLearner(agent, cfg, buf, rng, update)
    return FastLearner(agent, cfg, buf, update, graph=gpu, fused=gpu if fused is None else fused)
