"""The fused offline step (algo/fused_offline.py) must be update.offline_step's math (CQL / Cal-QL,
fixed alpha and Lagrange), for one seed and for S seeds in one step.

Noise is pinned on both sides to the same non-trivial values: every draw is a fixed function of its
shape (policy noise, random actions) or a fixed member list, so the eager step's draws and the fused
step's `draw_noise` hold the same numbers and the comparison is exact up to fp tolerance.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wsrl_dist.algo import fused_offline
from wsrl_dist.algo import sac as sac_lib
from wsrl_dist.algo.agent import make_agent
from wsrl_dist.algo.cql import CQLConfig
from wsrl_dist.algo.fast import FusedOfflineSteps, make_offline_multiseed_fn, make_offline_step_fn
from wsrl_dist.algo.iql import IQLConfig
from wsrl_dist.algo.nets import NetConfig
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch
from wsrl_dist.algo.update import offline_step

OBS, ACT, ROWS, STEPS = 5, 2, 16, 3
NET = NetConfig(actor_hidden=[32, 32], critic_hidden=[32, 32])
SAC = SACConfig(critic_ensemble_size=4, critic_subsample_size=3)
BASE = CQLConfig(cql_n_actions=3)
VARIANTS = {
    "cql": ("cql", BASE),
    "calql": ("calql", BASE),
    "calql_lagrange": ("calql", dataclasses.replace(BASE, cql_autotune_alpha=True, cql_alpha_lagrange_lr=1e-2)),
    # the other branches: no importance sampling at cql_temp != 1, one next action, bounded random actions
    "cql_plain": ("cql", dataclasses.replace(BASE, cql_importance_sample=False, cql_temp=0.5,
                                             cql_max_target_backup=False)),
    "calql_bound_random": ("calql", dataclasses.replace(BASE, calql_bound_random_actions=True)),
    # the CQL rows' weight gradients split-K (fused_nets.row_split: automatic only at real sizes);
    # 6 chunks for k = 3 members: with a split prime to k, a chunk-to-member mix-up could permute
    # members within every chunk and leave the per-state penalty unchanged
    "cql_row_split": ("cql", dataclasses.replace(BASE, fused_row_split=6)),
}


def _pattern(shape, device=None) -> torch.Tensor:
    """Made on `device`: a CUDA graph's capture may not copy from host memory."""
    n = 1
    for d in shape:
        n *= d
    return torch.sin(torch.arange(n, dtype=torch.float32, device=device) * 0.7 + 0.3).reshape(tuple(shape))


def _members(e: int, k: int, device=None) -> torch.Tensor:
    return (torch.arange(k, device=device) * 3 + 1) % e  # k=3, e=4: [1, 0, 3]


_DRAW = fused_offline.draw_noise


def _pinned_noise(spec, seeds, rows, device):
    n = _DRAW(spec, seeds, rows, device)

    def same(t):  # every seed gets the pattern of the eager draw's shape (the seed dim dropped)
        return _pattern(t.shape[1:], device).expand_as(t).clone()

    members = _members(SAC.critic_ensemble_size, SAC.critic_subsample_size, device).expand(seeds, -1).clone()
    return fused_offline.OfflineNoise(same(n.next_eps), members, members.clone(), same(n.random_actions),
                                      same(n.cur_eps), same(n.next_cql_eps), same(n.actor_eps),
                                      same(n.entropy_eps))


@pytest.fixture
def pinned(monkeypatch):
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: _pattern(t.shape, t.device))
    monkeypatch.setattr(torch.Tensor, "uniform_", lambda self, a=0.0, b=1.0, **kw: self.copy_(_pattern(self.shape, self.device)))
    monkeypatch.setattr(sac_lib, "sample_members", _members)
    monkeypatch.setattr(fused_offline, "draw_noise", _pinned_noise)


def _agent(seed: int, cql: CQLConfig, device: str = "cpu", net: NetConfig = NET):
    torch.manual_seed(seed)
    return make_agent(OBS, ACT, net, SAC, lagrange_init=1.0 if cql.cql_autotune_alpha else None,
                      lagrange_lr=cql.cql_alpha_lagrange_lr, device=device, capturable=device == "cuda")


def _batches(n: int, seed: int, device: str = "cpu") -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [Batch(torch.randn(ROWS, OBS, generator=g), torch.rand(ROWS, ACT, generator=g) * 1.8 - 0.9,
                  torch.randn(ROWS, generator=g), torch.randn(ROWS, OBS, generator=g),
                  (torch.rand(ROWS, generator=g) > 0.2).float(), torch.randn(ROWS, generator=g)).to(device)
            for _ in range(n)]


def _assert_agents_close(a, b, atol=2e-5):
    sa, sb = a.state_dict(), b.state_dict()  # through state_dict: what checkpoints see
    assert sa.keys() == sb.keys()
    for part in sa:
        if part.endswith("_opt"):
            for i, st in sa[part]["state"].items():
                assert float(st["step"]) == float(sb[part]["state"][i]["step"]), part
                for key in ("exp_avg", "exp_avg_sq"):
                    ref = st[key].cpu()
                    torch.testing.assert_close(sb[part]["state"][i][key].cpu(), ref, rtol=1e-4,
                                               atol=5 * atol * float(ref.abs().max()) + 1e-12, msg=f"{part} {key}")
        else:
            for k, v in sa[part].items():
                torch.testing.assert_close(sb[part][k].cpu(), v.cpu(), rtol=1e-4, atol=atol, msg=f"{part}.{k}")


def _eager(seed: int, algo: str, cql: CQLConfig, batches: list[Batch], net: NetConfig = NET):
    agent = _agent(seed, cql, net=net)
    infos = [{k: v.clone() for k, v in offline_step(agent, b, algo, SAC, cql, IQLConfig()).items()}
             for b in batches]
    return agent, infos


def _assert_infos_close(want: list[dict], got: list[dict], atol: float = 2e-5) -> None:
    for w, g in zip(want, got, strict=True):
        assert w.keys() == g.keys()
        for k in w:
            torch.testing.assert_close(g[k].cpu(), w[k].cpu(), rtol=1e-4, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("variant", [*VARIANTS, "cql_member_heads"])
def test_fused_offline_step_matches_eager(pinned, variant):
    """Every CQL branch; `cql_member_heads`: per-member Q heads (net.shared_q_head=false)."""
    algo, cql = VARIANTS["cql" if variant == "cql_member_heads" else variant]
    net = dataclasses.replace(NET, shared_q_head=variant != "cql_member_heads")
    batches = _batches(STEPS, seed=1)
    ref, want = _eager(0, algo, cql, batches, net)
    agent = _agent(0, cql, net=net)
    fn = make_offline_step_fn(agent, algo, SAC, cql, IQLConfig(), "fused")
    got = [{k: v.clone() for k, v in fn(b).items()} for b in batches]
    _assert_infos_close(want, got)
    _assert_agents_close(ref, agent)
    assert want[-1]["critic_loss"] > 0 and (want[-1]["cql_gap"] != want[0]["cql_gap"])


def test_two_seeds_in_one_fused_offline_step_match_two_eager_runs(pinned):
    """Each seed of the S = 2 step sees only its own agent and batches (Cal-QL with the Lagrange
    multiplier: every flat buffer of the offline step in play). `fused_compile` is left to the CUDA
    test below: compiling this step took 143 s on the 2-core CI box."""
    mode = "fused"
    algo, cql = VARIANTS["calql_lagrange"]
    per_seed = [_batches(STEPS, seed=10 + s) for s in range(2)]
    refs = [_eager(s, algo, cql, per_seed[s]) for s in range(2)]
    agents = [_agent(s, cql) for s in range(2)]
    fn = make_offline_multiseed_fn(agents, algo, SAC, cql, IQLConfig(), mode)
    got = [[], []]
    for i in range(STEPS):
        for s, info in enumerate(fn([per_seed[0][i], per_seed[1][i]])):
            got[s].append({k: v.clone() for k, v in info.items()})
    for s in range(2):
        _assert_infos_close(refs[s][1], got[s])
        _assert_agents_close(refs[s][0], agents[s])


def test_row_split_fills_the_gemm_batch_and_refuses_a_split_that_does_not_divide():
    from wsrl_dist.algo.fused_nets import row_split

    # locomotion CQL: k = 2 members, 256 x 30 rows each
    assert row_split(2, 7680) == 8  # one seed: 2 x 8 = 16 GEMMs of 960 rows
    assert row_split(8, 7680) == 2  # four seeds
    assert row_split(16, 7680) == 1  # enough GEMMs already
    assert row_split(2, 300) == 1  # chunks would fall under 256 rows
    assert row_split(2, 7680, asked=3) == 3
    with pytest.raises(ValueError, match="fused_row_split=7 does not divide the 7680"):
        row_split(2, 7680, asked=7)
    with pytest.raises(ValueError, match="fused_row_split must be >= 0"):
        CQLConfig(fused_row_split=-1).validate()


def test_split_rows_give_the_same_q_and_gradients_in_float64():
    """critic_q with its rows in chunks (split-K of the weight gradients) is the unsplit forward and
    backward up to float64 round-off; a wrong chunk-to-member mapping would move every number."""
    from wsrl_dist.algo.fused_nets import critic_q

    torch.manual_seed(0)
    s, m, rows, width = 2, 3, 24, 8
    p = {"weights.0": torch.randn(s, m, OBS + ACT, width), "biases.0": torch.randn(s, m, width),
         "ln_scales.0": torch.randn(s, m, width), "ln_biases.0": torch.randn(s, m, width),
         "weights.1": torch.randn(s, m, width, width), "biases.1": torch.randn(s, m, width),
         "ln_scales.1": torch.randn(s, m, width), "ln_biases.1": torch.randn(s, m, width),
         "head_weight": torch.randn(s, width, 1), "head_bias": torch.randn(s, 1)}
    p = {k: v.double().requires_grad_() for k, v in p.items()}
    obs, act = torch.randn(s, rows, OBS, dtype=torch.float64), torch.randn(s, rows, ACT, dtype=torch.float64)
    outs = []
    for split in (1, 4):
        q = critic_q(p, 2, True, obs, act, torch.float64, split)
        grads = torch.autograd.grad((q * torch.linspace(-1, 1, rows, dtype=torch.float64)).sum(), list(p.values()))
        outs.append((q.detach(), grads))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-12, atol=1e-12)
    for g1, g0 in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="split=5 does not divide 24 rows"):
        critic_q(p, 2, True, obs, act, torch.float64, 5)


def test_fused_offline_refuses_iql_by_name_and_iql_keeps_the_eager_step():
    cql = BASE
    with pytest.raises(ValueError, match="IQL keeps the eager step"):
        fused_offline.make_offline_spec(_agent(0, cql), "iql", SAC, cql)
    torch.manual_seed(0)
    agent = make_agent(OBS, ACT, NET, SAC, with_value=True)
    fn = make_offline_step_fn(agent, "iql", SAC, cql, IQLConfig(), "fused")  # runs update.iql_step
    assert set(fn(_batches(1, 0)[0])) == {"value_loss", "critic_loss", "actor_loss", "q_mean"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant,seeds", [("cql", 1), ("calql", 2), ("calql_lagrange", 1), ("cql_row_split", 2)])
def test_fused_compile_graph_offline_step_matches_eager_on_cuda(pinned, variant, seeds):
    """The GPU default (auto = fused_compile_graph): compiled, captured in one CUDA graph, replayed;
    and the compiled and the graphed steps on their own."""
    torch.backends.cuda.matmul.allow_tf32 = False
    algo, cql = VARIANTS[variant]
    per_seed = [_batches(STEPS, seed=10 + s, device="cuda") for s in range(seeds)]
    refs = []
    for s in range(seeds):
        agent = _agent(s, cql, "cuda")
        refs.append((agent, [{k: v.clone() for k, v in offline_step(agent, b, algo, SAC, cql, IQLConfig()).items()}
                             for b in per_seed[s]]))
    for mode in ("fused_compile", "fused_graph", "fused_compile_graph"):
        torch._dynamo.reset()
        agents = [_agent(s, cql, "cuda") for s in range(seeds)]
        fn = make_offline_multiseed_fn(agents, algo, SAC, cql, IQLConfig(), mode, [b[0] for b in per_seed])
        assert isinstance(fn, FusedOfflineSteps)
        got = [[] for _ in range(seeds)]
        for i in range(STEPS):
            for s, info in enumerate(fn([b[i] for b in per_seed])):
                got[s].append({k: v.clone() for k, v in info.items()})
        for s in range(seeds):
            # atol 1e-4 as for the agents: `entropy` is a mean of log-probs of size ~3 that cancels
            # towards 0 (-0.03 by step 3), so Inductor's reordered sums show as ~1e-5 absolute there
            # (on CPU, fused_compile gave -0.030393 against eager's -0.030382 at step 3)
            _assert_infos_close(refs[s][1], got[s], atol=1e-4)
            _assert_agents_close(refs[s][0], agents[s], atol=1e-4)
