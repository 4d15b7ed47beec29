"""job.seed_samplers: seeds pre-training together load a shared dataset once and keep one device copy
of its columns, while each seed still draws its own batches; a dataset the builder seeds from
run.seed is not shared."""
from __future__ import annotations

import torch

from tests.runtime.conftest import tiny_config
from tests.runtime.test_sync import write_d4rl_file
from wsrl_dist import job


def _cfgs(tmp_path, *extra):
    return [tiny_config(tmp_path / f"s{s}", f"run.seed={s}", *extra) for s in (0, 1, 2)]


def test_seeds_share_one_load_and_one_copy_of_a_shared_dataset(tmp_path, monkeypatch):
    write_d4rl_file(tmp_path / "data.hdf5", n=300)
    cfgs = _cfgs(tmp_path, "dataset.source=d4rl", f"dataset.path={tmp_path / 'data.hdf5'}")
    loads = []
    real = job.load_offline_dataset
    monkeypatch.setattr(job, "load_offline_dataset", lambda *a, **k: loads.append(1) or real(*a, **k))
    task = cfgs[0].task.spec()
    pairs = job.seed_samplers(cfgs, task, torch.device("cpu"))
    assert len(loads) == 1 and len(pairs) == 3
    first = pairs[0][0].cols
    for sampler, dataset in pairs:
        assert sampler.n == 300 and dataset is pairs[0][1]
        for k, v in sampler.cols.items():
            assert v.data_ptr() == first[k].data_ptr(), k  # one copy of every column
    draws = [sampler.sample(64).rewards.sum().item() for sampler, _ in pairs]  # rewards are all 1
    idx = [torch.randint(300, (64,), generator=s.gen) for s, _ in pairs]
    assert draws == [64.0] * 3 and not torch.equal(idx[0], idx[1])  # each seed its own generator
    # the same seed's stream as a sampler made alone (what one seed pre-training alone draws)
    alone = job.seed_samplers(cfgs[1:2], task, torch.device("cpu"))[0][0]
    torch.testing.assert_close(alone.sample(8).observations, job.seed_samplers(cfgs, task, torch.device("cpu"))[1][0]
                               .sample(8).observations)


def test_a_dataset_built_from_each_run_seed_is_not_shared(tmp_path):
    task = _cfgs(tmp_path)[0].task.spec()
    seeded = [job.dataset_key(c, task) for c in _cfgs(tmp_path, "dataset.source=built")]
    fixed = [job.dataset_key(c, task) for c in _cfgs(tmp_path, "dataset.source=built", "dataset.build_seed=0")]
    assert len(set(seeded)) == 3 and len(set(fixed)) == 1
