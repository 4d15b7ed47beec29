"""ReplayFeed (learner sampling, G bundles per Ray request) and HostCopy (non-blocking host reads),
on real Ray shard actors: rows arrive whole and shuffled across shards, request counts follow G,
splits follow shard sizes, an empty shard is topped up, and copies collect in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.runtime.test_wire import A, O
from wsrl_dist.runtime.datapath.feed import ReplayFeed, split_rows
from wsrl_dist.runtime.datapath.hostcopy import HostCopy
from wsrl_dist.runtime.datapath.replay import ReplayShard
from wsrl_dist.runtime.datapath.wire import encode_chunk


def id_fields(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observations, actions, next observations) whose first column encodes the row id."""
    n = len(ids)
    obs = np.zeros((n, O), np.float32)
    obs[:, 0] = ids
    act = np.zeros((n, A), np.float32)
    act[:, 0] = ids / 10_000.0
    nxt = np.zeros((n, O), np.float32)
    nxt[:, 0] = ids + 0.5
    return obs, act, nxt


def rows_with_ids(ids: np.ndarray) -> bytes:
    """Transitions whose every field encodes the row id, so a torn or misaligned row is visible."""
    n = len(ids)
    obs, act, nxt = id_fields(ids)
    cols = {"observations": obs, "actions": act, "rewards": ids.astype(np.float32),
            "next_observations": nxt, "terminals": (ids % 7 == 0).astype(np.float32),
            "timeouts": np.zeros(n, np.float32)}
    return encode_chunk(cols, worker_id=0, seq=int(ids[0]), policy_versions=np.zeros(n, np.int64))


def make_shards(ray_mod, id_ranges: list[range]) -> list:
    shard = ray_mod.remote(ReplayShard)
    out = []
    for i, ids in enumerate(id_ranges):
        s = shard.remote(10_000, O, A, seed=i, shard_id=i)
        if len(ids):
            ray_mod.get(s.insert.remote(rows_with_ids(np.asarray(ids, dtype=np.float64))))
        out.append(s)
    return out


def check_rows(batch) -> np.ndarray:
    ids = batch.observations[:, 0].cpu().numpy()
    np.testing.assert_allclose(batch.actions[:, 0].cpu().numpy(), ids / 10_000.0, rtol=1e-6)
    np.testing.assert_array_equal(batch.rewards.cpu().numpy(), ids)
    np.testing.assert_array_equal(batch.next_observations[:, 0].cpu().numpy(), ids + 0.5)
    np.testing.assert_array_equal(batch.masks.cpu().numpy(), 1.0 - (ids % 7 == 0))
    assert not batch.observations[:, 1:].any() and not batch.actions[:, 1:].any()
    return ids


def test_split_rows_follows_shard_sizes_and_sums_to_n():
    np.testing.assert_array_equal(split_rows(1024, [300, 100]), [768, 256])
    np.testing.assert_array_equal(split_rows(10, [1, 1, 1]), [4, 3, 3])
    np.testing.assert_array_equal(split_rows(9, [0, 0, 0]), [3, 3, 3])
    assert split_rows(1000, [5, 7, 11]).sum() == 1000


@pytest.mark.parametrize("group,depth", [(1, 0), (4, 2), (3, 1)])
def test_feed_hands_out_whole_rows_mixed_over_shards_one_request_per_group(ray_local, group, depth):
    import ray

    shards = make_shards(ray, [range(0, 500), range(1000, 1500)])
    feed = ReplayFeed(shards, rows=64, obs_dim=O, act_dim=A, device=torch.device("cpu"),
                      rng=np.random.default_rng(0), bundles_per_request=group, depth=depth,
                      shard_sizes=[500, 500])
    seen = []
    for _ in range(12):
        b = feed.next()
        assert b.observations.shape == (64, O) and b.masks.shape == (64,)
        ids = check_rows(b)
        assert (ids < 1000).any() and (ids >= 1000).any()  # shuffled: both shards in one minibatch
        seen.append(ids.copy())
    assert feed.requests == 12 // group + depth  # one Ray round trip per `group` bundles, + in flight
    assert feed.env_steps == 1000 and feed.shard_sizes == [500, 500]
    assert not any(np.array_equal(seen[i], seen[i + 1]) for i in range(11))
    # next()'s own time in parts: each part timed, none negative; no copy on a CPU learner
    assert set(feed.split) == {"submit", "reuse_wait", "shuffle", "copy", "views"}
    assert all(v >= 0 for v in feed.split.values()) and feed.split["shuffle"] > 0
    feed.close()


def test_one_shard_feed_hands_out_its_answer_in_order_and_whole(ray_local):
    """One shard (the study's per-seed setting): its uniform draws are i.i.d., so the feed copies them
    in the order they came instead of scattering them through a permutation; rows stay whole, and
    successive bundles are fresh draws covering the shard."""
    import ray

    shards = make_shards(ray, [range(0, 500)])
    feed = ReplayFeed(shards, rows=64, obs_dim=O, act_dim=A, device=torch.device("cpu"),
                      rng=np.random.default_rng(0), bundles_per_request=2, shard_sizes=[500])
    answer_rng = np.random.default_rng(0)  # the shard actor's sampling stream (seed=0)
    drawn = []
    for _ in range(6):
        ids = check_rows(feed.next())
        drawn.append(ids.copy())
    expected = np.concatenate([answer_rng.integers(0, 500, 128) for _ in range(3)])
    np.testing.assert_array_equal(np.concatenate(drawn), expected)  # the shard's draws, in order
    assert len(np.unique(np.concatenate(drawn))) > 250 and feed.requests == 3
    feed.close()


def test_next_group_hands_out_a_whole_request_and_only_at_its_start(ray_local):
    """runtime.replay_groups takes a request's bundles at once; mid-request it must not."""
    import ray

    shards = make_shards(ray, [range(0, 500)])
    feed = ReplayFeed(shards, rows=64, obs_dim=O, act_dim=A, device=torch.device("cpu"),
                      rng=np.random.default_rng(2), bundles_per_request=3, depth=1, shard_sizes=[500])
    assert feed.at_request_start()
    group = feed.next_group()
    assert len(group) == 3 and feed.requests == 2  # this request and the one in flight
    ids = [check_rows(b) for b in group]
    assert all(len(i) == 64 for i in ids) and not np.array_equal(ids[0], ids[1])
    assert feed.at_request_start()
    feed.next()
    assert not feed.at_request_start()
    with pytest.raises(RuntimeError, match="middle of a request"):
        feed.next_group()
    feed.next(), feed.next()
    assert feed.at_request_start() and len(feed.next_group()) == 3
    feed.close()


def test_feed_tops_up_from_the_fullest_shard_when_a_split_hits_an_empty_one(ray_local):
    import ray

    shards = make_shards(ray, [range(0, 200), range(0)])
    # stale sizes say both shards hold rows: half of each request goes to the empty one
    feed = ReplayFeed(shards, rows=32, obs_dim=O, act_dim=A, device=torch.device("cpu"),
                      rng=np.random.default_rng(1), bundles_per_request=2, shard_sizes=[100, 100])
    for _ in range(4):
        ids = check_rows(feed.next())
        assert len(ids) == 32 and ids.max() < 200
    assert feed.shard_sizes == [200, 0]


def offline_sampler(n: int, seed: int):
    """A real pretrain.DeviceSampler over rows whose every field encodes a negative id (-1 .. -n), so
    offline rows are told apart from the shards' and a torn row shows."""
    from wsrl_dist.pretrain import DeviceSampler

    ids = -np.arange(1, n + 1, dtype=np.float32)
    obs, act, nxt = id_fields(ids)
    arrays = {"observations": obs, "actions": act, "rewards": ids, "next_observations": nxt,
              "masks": 1.0 - (ids % 7 == 0).astype(np.float32)}
    return DeviceSampler(arrays, torch.device("cpu"), seed)


@pytest.mark.parametrize("group", [1, 4])
def test_feed_mixes_offline_rows_after_the_online_rows_of_every_bundle(ray_local, group):
    """Retention baselines (RLPD): each bundle is its online rows, then its offline rows, every row
    whole; one offline draw per request; the bundles' buffers keep their addresses."""
    import ray

    shards = make_shards(ray, [range(0, 500)])
    sampler = offline_sampler(300, seed=3)
    feed = ReplayFeed(shards, rows=48, obs_dim=O, act_dim=A, device=torch.device("cpu"),
                      rng=np.random.default_rng(0), bundles_per_request=group, shard_sizes=[500],
                      offline=sampler, offline_rows=16)
    draws = []
    real_sample = sampler.sample
    sampler.sample = lambda n: (draws.append(n), real_sample(n))[1]
    offline_seen, addresses = [], set()
    for i in range(2 * group):
        b = feed.next()
        assert b.observations.shape == (64, O) and b.rewards.shape == (64,) and b.masks.shape == (64,)
        assert b.mc_returns is None
        ids = check_rows(b)
        assert (ids[:48] >= 0).all() and (ids[48:] < 0).all()  # online first, then offline
        assert ids[48:].min() >= -300
        offline_seen.append(ids[48:].copy())
        addresses.add((i % group, b.observations.data_ptr(), b.rewards.data_ptr()))
    assert draws == [group * 16] * 2  # one draw of G bundles' offline rows per request
    assert len(addresses) == group  # request after request, bundle g sits at the same place
    assert not np.array_equal(offline_seen[0], offline_seen[-1])
    feed.close()


def test_feed_rejects_bad_shapes(ray_local):
    with pytest.raises(ValueError, match="at least one replay shard"):
        ReplayFeed([], rows=8, obs_dim=O, act_dim=A, device=torch.device("cpu"),
                   rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="bundles_per_request"):
        ReplayFeed(["s"], rows=8, obs_dim=O, act_dim=A, device=torch.device("cpu"),
                   rng=np.random.default_rng(0), bundles_per_request=0)
    with pytest.raises(ValueError, match="offline_rows"):
        ReplayFeed(["s"], rows=8, obs_dim=O, act_dim=A, device=torch.device("cpu"),
                   rng=np.random.default_rng(0), offline_rows=4)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_host_copy_snapshots_values_and_skips_while_busy(device):
    copy = HostCopy(torch.device(device))
    a = torch.arange(6, dtype=torch.float32, device=device).reshape(2, 3)
    b = torch.tensor(7.0, device=device)
    assert copy.poll() is None
    assert copy.start([a, b], tag="v1")
    a.add_(100)  # later in-place writes must not reach the copy already started
    assert not copy.start([a], tag="v2") and copy.skipped == 1  # one in flight at a time
    tag, vals = copy.poll(block=True)
    assert tag == "v1"
    np.testing.assert_array_equal(vals, [0, 1, 2, 3, 4, 5, 7])
    assert copy.poll() is None
    assert copy.start([a], tag="v3")
    tag, vals = copy.poll(block=True)
    assert tag == "v3" and vals[0] == 100
