"""The fused bundle (algo/fused.py) must be update.sac_bundle's math, for one seed and for S seeds.

Noise is pinned on both sides (zero policy noise, target members {0, 1}) so the comparison is exact
up to fp tolerance; the eager side runs the readable per-module code.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wsrl_dist.algo import fast as fast_lib
from wsrl_dist.algo import fused as fused_lib
from wsrl_dist.algo import sac as sac_lib
from wsrl_dist.algo.agent import make_agent
from wsrl_dist.algo.fast import FusedBundles, make_bundle_fn, make_multiseed_fn
from wsrl_dist.algo.nets import NetConfig
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch

OBS, ACT = 5, 2
NET = NetConfig(actor_hidden=[32, 32], critic_hidden=[32, 32])
SAC = SACConfig(critic_ensemble_size=4, batch_size=16, utd=4)


_DRAW = fused_lib.draw_noise


def _pinned_noise(spec, seeds, device):
    n = _DRAW(spec, seeds, device)
    members = torch.arange(spec.sac.critic_subsample_size, device=device).expand_as(n.members).clone()
    return fused_lib.Noise(torch.zeros_like(n.next_eps), members, torch.zeros_like(n.actor_eps),
                           torch.zeros_like(n.entropy_eps))


@pytest.fixture
def pinned_randomness(monkeypatch):
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: torch.zeros_like(t))
    monkeypatch.setattr(sac_lib, "sample_members", lambda e, k, device=None: torch.arange(k, device=device))
    monkeypatch.setattr(fused_lib, "draw_noise", _pinned_noise)


def _batches(n: int, device: str = "cpu", seed: int = 3) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    rows = SAC.utd * SAC.batch_size
    return [Batch(torch.randn(rows, OBS, generator=g), torch.rand(rows, ACT, generator=g) * 2 - 1,
                  torch.randn(rows, generator=g), torch.randn(rows, OBS, generator=g),
                  (torch.rand(rows, generator=g) > 0.1).float()).to(device) for _ in range(n)]


def _agent(seed: int, net: NetConfig = NET, sac: SACConfig = SAC, device: str = "cpu"):
    torch.manual_seed(seed)
    return make_agent(OBS, ACT, net, sac, device=device, capturable=device == "cuda")


def _assert_agents_close(a, b, atol=2e-5, rtol=1e-4):
    for name in ("actor", "critic", "target_critic", "temperature"):
        for (n, pa), pb in zip(getattr(a, name).named_parameters(), getattr(b, name).parameters()):
            torch.testing.assert_close(pa.detach().cpu(), pb.detach().cpu(), atol=atol, rtol=rtol,
                                       msg=lambda m, where=f"{name}.{n}": f"{where}: {m}")
    for name in ("actor_opt", "critic_opt", "temperature_opt"):
        for pa, pb in zip(getattr(a, name).param_groups[0]["params"], getattr(b, name).param_groups[0]["params"]):
            sa, sb = getattr(a, name).state[pa], getattr(b, name).state[pb]
            assert float(sa["step"]) == float(sb["step"]), name
            for key in ("exp_avg", "exp_avg_sq"):  # fp noise scales with the tensor's magnitude
                ref = sa[key].cpu()
                torch.testing.assert_close(sb[key].cpu(), ref, atol=5 * atol * float(ref.abs().max()) + 1e-12,
                                           rtol=rtol, msg=lambda m, where=f"{name} {key}": f"{where}: {m}")


def _eager_run(agent, batches, sac=SAC):
    fn = make_bundle_fn(agent, sac, "eager")
    return [{k: v.clone() for k, v in fn(b).items()} for b in batches]


@pytest.fixture
def float64():
    """Agents, batches and noise in double precision. In float32 the two formulations' round-off
    (different op orders) is amplified by Adam's normalisation of near-zero gradients: the
    backup_entropy variant's bundle-2 critic loss differed by 3e-4 (relative) on the GPU host's
    Xeon while passing here. In float64 the same comparison holds to ~1e-9, so a real difference
    in the math cannot hide under a float32 tolerance."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("variant", ["default", "no_ghost", "backup_entropy", "max_backup", "uniform_std",
                                     "no_layer_norm", "deep", "per_member_heads"])
def test_fused_bundle_matches_eager(pinned_randomness, float64, variant):
    net, sac = NET, SAC
    if variant == "no_ghost":
        sac = dataclasses.replace(SAC, ghost_adam_steps=False)
    elif variant == "backup_entropy":
        sac = dataclasses.replace(SAC, backup_entropy=True)
    elif variant == "max_backup":
        sac = dataclasses.replace(SAC, max_target_backup=True, n_backup_actions=3, critic_subsample_size=1)
    elif variant == "uniform_std":
        net = dataclasses.replace(NET, std_parameterization="uniform")
    elif variant == "no_layer_norm":
        net = dataclasses.replace(NET, layer_norm=False)
    elif variant == "deep":
        net = dataclasses.replace(NET, actor_hidden=[16, 16, 16], critic_hidden=[16, 16, 16, 16])
    elif variant == "per_member_heads":  # the Deviation switch (dataset builder's plain SAC)
        net = dataclasses.replace(NET, shared_q_head=False)
    batches = _batches(3)
    ref = _agent(0, net, sac)
    ref_infos = _eager_run(ref, batches, sac)
    fast = _agent(0, net, sac)
    fn = make_bundle_fn(fast, sac, "fused")
    infos = [{k: v.clone() for k, v in fn(b).items()} for b in batches]
    assert fast.critic.weights[0].dtype == torch.float64 and fn.fused.spec.matmul_dtype == torch.float64
    for i, (ia, ib) in enumerate(zip(ref_infos, infos)):
        assert ia.keys() == ib.keys()
        for k in ia:
            torch.testing.assert_close(ia[k], ib[k], atol=1e-10, rtol=1e-9,
                                       msg=lambda m, k=k, i=i: f"bundle {i} {k}: {m}")
    _assert_agents_close(ref, fast, atol=1e-10, rtol=1e-9)


def test_fused_seeds_are_independent(pinned_randomness):
    """S = 3 seeds in one fused update == three separate eager learners on their own batches."""
    seeds = [0, 1, 2]
    data = [_batches(2, seed=10 + s) for s in seeds]
    refs = [_agent(s) for s in seeds]
    ref_infos = [_eager_run(agent, batches) for agent, batches in zip(refs, data)]
    agents = [_agent(s) for s in seeds]
    fn = make_multiseed_fn(agents, SAC, "fused")
    outs = [[{k: v.clone() for k, v in o.items()} for o in fn([d[j] for d in data])] for j in range(2)]
    for i in range(len(seeds)):
        _assert_agents_close(refs[i], agents[i])
        for j in range(2):
            for k, v in ref_infos[i][j].items():
                torch.testing.assert_close(v, outs[j][i][k], atol=2e-5, rtol=1e-4, msg=f"seed {i} {k}")
    a0, a1 = (dict(a.actor.named_parameters()) for a in agents[:2])
    assert not torch.allclose(a0["mean.weight"], a1["mean.weight"])


def test_fused_state_is_shared_with_the_agent():
    """Parameters and Adam moments are views into the flat buffers: checkpoints and exported weights
    follow the fused updates without copies, and a loaded checkpoint is picked up after rebind()."""
    agent = _agent(0)
    before = agent.export_policy()
    fused = FusedBundles([agent], SAC, "fused")
    for b in _batches(2):
        fused([b])
    after = agent.export_policy()
    assert any(not torch.equal(torch.as_tensor(before[k]), torch.as_tensor(after[k])) for k in before)
    assert float(agent.critic_opt.state[agent.critic.weights[0]]["step"]) == 2 * (SAC.utd + 1)
    saved = _roundtrip(agent.state_dict())  # bytes now: the live views move on below
    fused([_batches(1, seed=9)[0]])
    agent.load_state_dict(torch.load(saved, weights_only=False))
    fused.rebind()
    torch.testing.assert_close(fused.state.t["critic_t"][0], torch.tensor(2.0 * (SAC.utd + 1)))
    flat = fused.state.t["critic"]  # the parameter is still a view of the flat buffer
    w = agent.critic.weights[0]
    assert flat.data_ptr() <= w.data_ptr() < flat.data_ptr() + flat.numel() * flat.element_size()


def test_flat_layout_aligns_every_slice_and_keeps_padding_zero(pinned_randomness):
    """Every parameter starts 32-byte aligned (cuBLAS's vectorised GEMMs need aligned matrices), the
    critic's first weight is stored with zero rows up to an aligned input width, the padding stays
    exactly zero through bundles, and the agent's modules still see their own shapes."""
    agent = _agent(0)
    fused = FusedBundles([agent], SAC, "fused")
    spec = fused.spec
    cl = spec.critic_layout
    for layout in (spec.actor_layout, cl.trunk, cl.head):
        assert layout.size % 8 == 0 and all(a % 8 == 0 for a, _ in layout.slices.values())
    assert cl.size % 8 == 0 and cl.trunk_size == SAC.critic_ensemble_size * cl.trunk.size  # head aligned too
    assert set(cl.head.slices) == {"head_weight", "head_bias"}  # the one shared Q head
    k_in = OBS + ACT  # 7 -> 8 stored rows
    assert cl.trunk.shapes["weights.0"] == (8, NET.critic_hidden[0])
    assert agent.critic.weights[0].shape == (SAC.critic_ensemble_size, k_in, NET.critic_hidden[0])
    for b in _batches(3):
        fused([b])
    for key in ("critic", "critic_m", "critic_v", "target"):
        flat = fused.state.t[key][0]
        assert not cl.views(flat)["weights.0"][:, k_in:].any(), key
        used = torch.zeros(cl.size, dtype=torch.bool)  # the parameters' own elements
        for e in range(SAC.critic_ensemble_size):
            for n, (a, b) in cl.trunk.slices.items():
                own_rows, stored_rows = cl.trunk.param_shapes[n][0], cl.trunk.shapes[n][0]
                start = e * cl.trunk.size + a
                used[start:start + (b - a) * own_rows // stored_rows] = True
        for a, b in cl.head.slices.values():
            used[cl.trunk_size + a:cl.trunk_size + b] = True
        assert (~used).sum() > 0 and not flat[~used].any(), f"{key}: padding moved off zero"
        assert flat[cl.trunk_size:][used[cl.trunk_size:]].any(), f"{key}: the shared head is not in the buffer"
    assert agent.critic.weights[0].abs().sum() > 0  # the real rows did train
    # the flattened gradient puts each part where views() reads it back
    parts = {n: torch.randn(2, SAC.critic_ensemble_size, *shape) for n, shape in cl.trunk.shapes.items()}
    parts.update({n: torch.randn(2, *shape) for n, shape in cl.head.shapes.items()})
    back = cl.views(cl.flatten(parts))
    assert set(back) == set(parts) and all(torch.equal(back[n], parts[n]) for n in parts)


def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_fused_compile_matches_fused_eager_on_cpu(pinned_randomness):
    batches = _batches(2)
    a, b = _agent(0), _agent(0)
    fa, fb = make_bundle_fn(a, SAC, "fused"), make_bundle_fn(b, SAC, "fused_compile")
    for batch in batches:
        ia, ib = fa(batch), fb(batch)
        for k in ia:
            torch.testing.assert_close(ia[k], ib[k], atol=1e-4, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    _assert_agents_close(a, b, atol=1e-4)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("mode", ["fused_graph", "fused_compile_graph"])
def test_fused_graph_matches_eager(pinned_randomness, mode):
    batches = _batches(3, "cuda")
    ref = _agent(0, device="cuda")
    _eager_run(ref, batches)
    fast = _agent(0, device="cuda")
    fn = make_multiseed_fn([fast], SAC, mode, examples=[batches[0]])
    for b in batches:
        fn([b])
    _assert_agents_close(ref, fast, atol=1e-4)


@cuda
def test_two_seeds_in_one_fused_graph_match_two_eager_runs(pinned_randomness):
    """The graphed S-seed call copies each seed's batch into its rows of the graph's inputs
    (fused_bundles.copy_rows): each seed must learn from its own batches only."""
    data = [_batches(3, "cuda", seed=20 + s) for s in range(2)]
    refs = [_agent(s, device="cuda") for s in range(2)]
    for agent, batches in zip(refs, data):
        _eager_run(agent, batches)
    agents = [_agent(s, device="cuda") for s in range(2)]
    fn = make_multiseed_fn(agents, SAC, "fused_graph", examples=[d[0] for d in data])
    for j in range(3):
        fn([d[j] for d in data])
    for ref, agent in zip(refs, agents):
        _assert_agents_close(ref, agent, atol=1e-4)


def test_noise_shapes_follow_the_target_backup():
    """max-target-backup draws n next actions per state for the target AND the entropy estimate."""
    sac = dataclasses.replace(SAC, max_target_backup=True, n_backup_actions=5)
    for cfg, extra in ((SAC, ()), (sac, (5,))):
        spec = fused_lib.make_spec(_agent(0, sac=cfg), cfg)
        noise = fused_lib.draw_noise(spec, 2, torch.device("cpu"))
        rows = cfg.utd * cfg.batch_size
        assert noise.next_eps.shape == (2, cfg.utd, cfg.batch_size, *extra, ACT)
        assert noise.entropy_eps.shape == (2, rows, *extra, ACT)
        assert noise.actor_eps.shape == (2, rows, ACT)
        assert noise.members.shape == (2, cfg.utd, cfg.critic_subsample_size)


# ---------------------------------------------------------------------------------------- bf16
# bf16 keeps 8 significant bits: each rounding is off by up to 2^-9 (0.2%) relative. Losses average
# many such products, so bf16 and fp32 losses agree to about 1e-3 relative (tolerance 2e-2). Adam's
# first steps move each element by about +-lr whatever |g| is, so an element whose gradient is
# within bf16 noise of zero can step the other way: a fraction f of flipped elements gives a delta
# off by about 2*sqrt(f) in relative norm; 0.25 allows ~1.5% flips (one bundle here: <= 0.16 per
# network). A small tensor is off more (one flip of 32 elements: ~0.35): 0.5 per tensor.

def _one_bundle(dtype: torch.dtype, mode: str = "fused"):
    agent = _agent(0)
    before = {f"{m}.{n}": p.detach().clone() for m in ("actor", "critic")
              for n, p in getattr(agent, m).named_parameters()}
    fn = make_bundle_fn(agent, SAC, mode, matmul_dtype=dtype)
    info = {k: v.clone() for k, v in fn(_batches(1)[0]).items()}
    after = {f"{m}.{n}": p.detach() for m in ("actor", "critic") for n, p in getattr(agent, m).named_parameters()}
    return agent, info, {k: after[k] - before[k] for k in before}


def test_bf16_bundle_tracks_fp32_and_really_rounds(pinned_randomness):
    _, info32, delta32 = _one_bundle(torch.float32)
    agent, info16, delta16 = _one_bundle(torch.bfloat16)
    for k in info32:
        # q_mean averages Q's of both signs (|Q| ~ 0.6 here, mean ~ 0.1): its error scales with |Q|
        atol = 1e-2 if k == "q_mean" else 1e-3
        torch.testing.assert_close(info16[k], info32[k], atol=atol, rtol=2e-2, msg=lambda m, k=k: f"{k}: {m}")
    for net in ("actor", "critic"):  # a 32-element tensor with one flip is off by ~0.35 alone
        keys = [k for k in delta32 if k.startswith(net)]
        d16, d32 = (torch.cat([d[k].flatten() for k in keys]) for d in (delta16, delta32))
        off = float((d16 - d32).norm() / d32.norm())
        assert off < 0.25, f"{net}: bf16 delta off fp32 by {off:.3f} in relative norm"
    for k in delta32:  # no tensor far off (a wrong update of one part would be off by ~1)
        off = float((delta16[k] - delta32[k]).norm() / delta32[k].norm().clamp_min(1e-12))
        assert off < 0.5, f"{k}: bf16 delta off fp32 by {off:.3f} in relative norm"
    # the cast happens: every critic GEMM rounds, so its loss and its updates move off fp32
    assert abs(float(info16["critic_loss"] - info32["critic_loss"])) > 1e-5
    assert any(not torch.equal(delta16[k], delta32[k]) for k in delta32 if k.startswith("critic"))
    # fp32 master weights and optimizer state
    for mod in (agent.actor, agent.critic, agent.target_critic, agent.temperature):
        assert all(p.dtype == torch.float32 for p in mod.parameters())
    for opt in (agent.actor_opt, agent.critic_opt, agent.temperature_opt):
        assert all(t.dtype == torch.float32 for st in opt.state.values() for t in st.values())


def test_bf16_compile_matches_bf16_eager_on_cpu(pinned_randomness):
    """Inductor must keep the heads' bf16 rounding (emulate_precision_casts): compiled without it,
    the heads take fp32 inputs and the losses move ~1e-3 away from eager bf16. A torch whose
    Inductor loses roundings anyway (2.11: actor loss 1.14305 vs eager bf16 1.13769) refuses the
    compiled bf16 bundle instead."""
    if not fast_lib.bf16_compile_supported():
        with pytest.raises(ValueError, match=r"bf16 with run.fast_path=fused_compile needs torch >= 2\.13"):
            _one_bundle(torch.bfloat16, "fused_compile")
        return
    a, info_e, delta_e = _one_bundle(torch.bfloat16, "fused")
    b, info_c, delta_c = _one_bundle(torch.bfloat16, "fused_compile")
    for k in info_e:
        torch.testing.assert_close(info_c[k], info_e[k], atol=1e-5, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    for k in delta_e:
        torch.testing.assert_close(delta_c[k], delta_e[k], atol=1e-6, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    _assert_agents_close(a, b, atol=1e-5)


@pytest.mark.parametrize("head", [False, True])
def test_bf16_matmul_sums_rounded_inputs_in_fp32(head):
    """_mm: inputs rounded to bf16, products summed in fp32; a hidden layer's output is rounded to
    bf16 before the fp32 bias, a head's (Q, mean, log-std) is not."""
    g = torch.Generator().manual_seed(0)
    b, x, w = (torch.randn(*s, generator=g) for s in ((3, 1, 8), (3, 64, 32), (3, 32, 8)))
    exact = torch.bmm(x.bfloat16().double(), w.bfloat16().double())  # of the rounded inputs
    want = (exact if head else exact.bfloat16().double()) + b.double()
    got = fused_lib._mm(b, x, w, torch.bfloat16, head)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-6)
    assert (got.double() - (torch.bmm(x.double(), w.double()) + b.double())).abs().max() > 1e-3


def test_bf16_compile_is_refused_where_inductor_loses_its_roundings(monkeypatch):
    """On an older torch (bf16_compile_supported false) auto takes the uncompiled graph on a GPU,
    and a compiled mode with bf16 is refused naming the version; fp32 is untouched."""
    cuda_dev, cpu = torch.device("cuda"), torch.device("cpu")  # resolve_mode reads only the type
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    assert not fast_lib.bf16_compile_supported()
    assert fast_lib.resolve_mode("auto", cuda_dev, torch.bfloat16) == "fused_graph"
    assert fast_lib.resolve_mode("auto", cuda_dev) == "fused_compile_graph"
    for mode in ("fused_compile", "fused_compile_graph"):
        dev = cuda_dev if mode.endswith("graph") else cpu
        with pytest.raises(ValueError, match=f"run.fast_path={mode} needs torch >= 2.13 \\(this is 2.11.0"):
            fast_lib.resolve_mode(mode, dev, torch.bfloat16)
        assert fast_lib.resolve_mode(mode, dev) == mode
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    assert fast_lib.resolve_mode("auto", cuda_dev, torch.bfloat16) == "fused_compile_graph"


def test_bf16_runs_fused_or_is_refused():
    """auto with bf16 on CPU is the fused bundle (never a silent fp32 eager one); eager modes refuse."""
    cpu = torch.device("cpu")
    assert fast_lib.resolve_mode("auto", cpu, torch.bfloat16) == "fused"
    assert fast_lib.resolve_mode("auto", cpu) == "eager"
    for mode in ("eager", "compile"):
        with pytest.raises(ValueError, match=f"run.matmul_precision=bf16 .*fused.*run.fast_path={mode}"):
            make_bundle_fn(_agent(0), SAC, mode, matmul_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="matmul dtype"):
        fused_lib.make_spec(_agent(0), SAC, torch.float16)


@cuda
def test_bf16_graph_tracks_bf16_eager_on_cuda(pinned_randomness):
    """Compiled + graphed bf16 against eager bf16. Not to 1e-4 on every weight: the two paths sum in
    different orders, and rounding to bf16 turns such differences into whole bf16 steps; then
    Adam's per-element step m / sqrt(v) moves a weight whose gradient is near zero by about +-lr
    whichever way the rounding tips it (the H200, 2026-11-30: 2 of 1,024 actor.trunk.net.3.weight
    elements 4.2e-4 apart after 2 bundles, ~4 actor steps of 1e-4). So: the losses agree to bf16
    resolution, and only a sliver of the weights differ, each by no more than the Adam steps taken."""
    batches = _batches(2, "cuda")
    ref, fast = _agent(0, device="cuda"), _agent(0, device="cuda")
    eager = make_bundle_fn(ref, SAC, "fused", matmul_dtype=torch.bfloat16)
    mode = fast_lib.resolve_mode("auto", torch.device("cuda"), torch.bfloat16)  # uncompiled on torch < 2.13
    graph = make_multiseed_fn([fast], SAC, mode, [batches[0]], torch.bfloat16)
    for b in batches:
        ie = {k: v.clone() for k, v in eager(b).items()}
        ig = graph([b])[0]
        for k in ie:  # bf16 resolution (2^-8) after a few rounded layers, as bf16 vs fp32 above
            torch.testing.assert_close(ig[k], ie[k], atol=1e-3, rtol=2e-2, msg=lambda m, k=k: f"{k}: {m}")
    steps = len(batches) * (SAC.utd + 1)  # Adam steps per network, ghost steps included
    for name, lr in (("actor", SAC.actor_lr), ("critic", SAC.critic_lr), ("target_critic", SAC.critic_lr)):
        for (n, pa), pb in zip(getattr(ref, name).named_parameters(), getattr(fast, name).parameters()):
            diff = (pa.detach() - pb.detach()).abs()
            off = float((diff > 1e-4).float().mean())
            assert off < 0.01, f"{name}.{n}: {off:.2%} of the elements differ by more than 1e-4"
            assert float(diff.max()) <= 2 * lr * steps, f"{name}.{n}: {float(diff.max()):.2e} apart"
