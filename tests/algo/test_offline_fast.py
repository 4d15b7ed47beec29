"""Pre-training steps through the speed switch (algo.fast.make_offline_step_fn): the CUDA-graph step
must replay the eager CQL / Cal-QL / IQL step exactly. Randomness is pinned (zero policy noise,
fixed member draws, constant random actions) so the comparison is exact up to fp tolerance; the
graph cases run where a GPU is present (the device machine), CI has none."""

from __future__ import annotations

import pytest
import torch

from wsrl_dist.algo import sac as sac_lib
from wsrl_dist.algo.agent import make_agent
from wsrl_dist.algo.cql import CQLConfig
from wsrl_dist.algo.fast import make_offline_step_fn
from wsrl_dist.algo.iql import IQLConfig
from wsrl_dist.algo.nets import NetConfig
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch
from wsrl_dist.algo.update import offline_step

OBS, ACT, ROWS = 5, 2, 32
NET = NetConfig(actor_hidden=[32, 32], critic_hidden=[32, 32])
SAC = SACConfig(critic_ensemble_size=4)
# (algo, CQL settings): plain CQL, Cal-QL with the Lagrange multiplier (antmaze's setting), IQL
CASES = [("cql", CQLConfig(use_calql=False)), ("calql", CQLConfig(cql_autotune_alpha=True)),
         ("iql", CQLConfig())]


@pytest.fixture
def pinned_randomness(monkeypatch):
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.zeros_like(t))
    monkeypatch.setattr(sac_lib, "sample_members", lambda e, k, device=None: torch.arange(k, device=device))
    monkeypatch.setattr(torch.Tensor, "uniform_", lambda self, a=0.0, b=1.0, **kw: self.fill_(0.25 * a + 0.75 * b))


def _agent(algo: str, cql: CQLConfig, device: str, capturable: bool):
    torch.manual_seed(0)
    return make_agent(OBS, ACT, NET, SAC, with_value=algo == "iql",
                      lagrange_init=1.0 if (cql.cql_autotune_alpha and algo != "iql") else None,
                      device=device, capturable=capturable)


def _batches(n: int, device: str) -> list[Batch]:
    g = torch.Generator().manual_seed(5)
    return [Batch(torch.randn(ROWS, OBS, generator=g), torch.rand(ROWS, ACT, generator=g) * 1.8 - 0.9,
                  torch.randn(ROWS, generator=g), torch.randn(ROWS, OBS, generator=g),
                  (torch.rand(ROWS, generator=g) > 0.1).float(), torch.randn(ROWS, generator=g)).to(device)
            for _ in range(n)]


def _run(algo: str, cql: CQLConfig, mode: str, device: str, n: int = 4):
    agent = _agent(algo, cql, device, capturable=mode.endswith("graph"))
    batches = _batches(n, device)
    fn = make_offline_step_fn(agent, algo, SAC, cql, IQLConfig(), mode, batches[0])
    infos = [{k: v.clone() for k, v in fn(b).items()} for b in batches]
    return agent, infos


def _assert_same(a, b, atol: float) -> None:
    (agent_a, infos_a), (agent_b, infos_b) = a, b
    for ia, ib in zip(infos_a, infos_b):
        assert ia.keys() == ib.keys()
        for k in ia:
            torch.testing.assert_close(ia[k].cpu(), ib[k].cpu(), atol=atol, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    for name in ("actor", "critic", "target_critic", "temperature", "value", "lagrange"):
        mod_a, mod_b = getattr(agent_a, name), getattr(agent_b, name)
        if mod_a is None:
            continue
        for pa, pb in zip(mod_a.parameters(), mod_b.parameters()):
            torch.testing.assert_close(pa.detach().cpu(), pb.detach().cpu(), atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("algo,cql", CASES, ids=[c[0] for c in CASES])
def test_eager_step_fn_is_offline_step(pinned_randomness, algo, cql):
    """Non-graph, non-fused modes (and every fused mode for IQL, which has no fused step) run
    update.offline_step itself, step for step (the fused CQL step: tests/algo/test_fused_offline.py)."""
    direct = _agent(algo, cql, "cpu", capturable=False)
    infos = [{k: v.clone() for k, v in offline_step(direct, b, algo, SAC, cql, IQLConfig()).items()}
             for b in _batches(4, "cpu")]
    _assert_same((direct, infos), _run(algo, cql, "fused" if algo == "iql" else "compile", "cpu"), atol=0)
    assert infos[-1]["critic_loss"] > 0


def test_offline_graph_refused_on_cpu():
    agent = _agent("cql", CQLConfig(), "cpu", capturable=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_offline_step_fn(agent, "cql", SAC, CQLConfig(), IQLConfig(), "cuda_graph", _batches(1, "cpu")[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo,cql", CASES, ids=[c[0] for c in CASES])
def test_cuda_graph_offline_step_matches_eager(pinned_randomness, algo, cql):
    """Capture warm-up runs on the real agent and its state (Lagrange and value nets included) is
    restored, so four graph replays give the same parameters as four eager steps (IQL: also in the
    fused graph modes, where it keeps this graphed eager step)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    for mode in ("cuda_graph", "fused_compile_graph") if algo == "iql" else ("cuda_graph",):
        _assert_same(_run(algo, cql, "eager", "cuda"), _run(algo, cql, mode, "cuda"), atol=1e-4)
