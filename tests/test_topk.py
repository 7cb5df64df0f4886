"""Top-k kernels against the oracle np.argsort(-err, kind="stable")[:k]."""

import numpy as np
import pytest
import torch

from intstream.teach.topk import MULTINOMIAL_MAX, Candidates, chunk_error, chunk_topk, combine_topk, sample_indices, topk_indices


def oracle(err, k):
    return np.argsort(-err, kind="stable")[:k]


def ragged_splits(rng, n, n_parts):
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n_parts - 1, n - 1), replace=False))
    return np.split(np.arange(n), cuts)


def tree_merge(parts, k, split_every):
    level = parts
    while len(level) > 1:
        level = [combine_topk(level[i : i + split_every], k) for i in range(0, len(level), split_every)]
    return combine_topk(level, k)


def test_chunk_error_is_l1_over_channels():
    pred = np.array([[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]], np.float32)
    target = np.array([[1.0, 0.0, 0.5], [0.5, 1.5, 1.0]], np.float32)
    err = chunk_error(pred, target)
    assert err.dtype == np.float32 and err.shape == (2,)
    np.testing.assert_allclose(err, [2.0, 1.0])
    with pytest.raises(ValueError):
        chunk_error(pred, target[:, :2])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("split_every", [2, 3])
def test_hierarchical_equals_global(ties, split_every):
    rng = np.random.default_rng(1 + ties + split_every)
    n, C = 5000, 3
    err = rng.integers(0, 7, n).astype(np.float32) if ties else rng.random(n, dtype=np.float32)
    target = rng.random((n, C), dtype=np.float32)
    for k in (1, 17, 400, 1300, n, n + 10):
        parts = [chunk_topk(idx, target[idx], err[idx], k) for idx in ragged_splits(rng, n, 37)]
        got = tree_merge(parts, k, split_every)
        want = oracle(err, k)
        np.testing.assert_array_equal(got.index, want)
        np.testing.assert_array_equal(got.error, err[want])
        np.testing.assert_array_equal(got.target, target[want])
        assert got.index.dtype == np.int64 and got.target.dtype == np.float32 and got.error.dtype == np.float32


def test_k_larger_than_chunk_and_shuffled_indices():
    rng = np.random.default_rng(0)
    index = rng.permutation(50).astype(np.int64) + 1000
    err = rng.integers(0, 3, 50).astype(np.float32)
    c = chunk_topk(index, np.zeros((50, 1)), err, 500)
    assert c.size == 50
    order = np.lexsort((index, -err))
    np.testing.assert_array_equal(c.index, index[order])
    c3 = chunk_topk(index, np.zeros(50), err, 3)  # 1-D target is one channel
    np.testing.assert_array_equal(c3.index, index[order[:3]])
    assert c3.target.shape == (3, 1)


def test_all_tied_keeps_lowest_indices():
    err = np.ones(100, np.float32)
    parts = [chunk_topk(np.arange(s, s + 10), np.zeros((10, 2)), err[s : s + 10], 25) for s in range(90, -1, -10)]
    got = combine_topk(parts, 25)
    np.testing.assert_array_equal(got.index, np.arange(25))


def test_edge_cases():
    empty = chunk_topk(np.arange(5), np.zeros((5, 2)), np.ones(5), 0)
    assert empty.size == 0 and empty.target.shape == (0, 2)
    assert chunk_topk(np.arange(0), np.zeros((0, 2)), np.zeros(0), 3).size == 0
    assert combine_topk([Candidates.empty(2), chunk_topk(np.arange(3), np.zeros((3, 2)), np.ones(3), 2)], 5).size == 2
    with pytest.raises(ValueError):
        combine_topk([], 3)
    with pytest.raises(ValueError):
        chunk_topk(np.arange(3), np.zeros((3, 1)), np.ones(3), -1)
    # NaN errors rank last, as in NumPy's sort.
    err = np.array([1, np.nan, 3, np.nan, 2], np.float32)
    for k in range(6):
        np.testing.assert_array_equal(chunk_topk(np.arange(5), np.zeros(5), err, k).index, oracle(err, k))


@pytest.mark.parametrize("ties", [False, True])
def test_torch_topk_indices_matches_oracle(ties):
    rng = np.random.default_rng(3)
    for trial in range(50):
        n = int(rng.integers(1, 400))
        err = rng.integers(0, 4, n).astype(np.float32) if ties else rng.random(n, dtype=np.float32)
        if trial % 5 == 0:
            err[rng.integers(0, n, 2)] = np.nan
        for k in (0, 1, n // 3, n, n + 3):
            got = topk_indices(torch.from_numpy(err), k)
            assert got.dtype == torch.long
            np.testing.assert_array_equal(got.numpy(), oracle(err, k))
    with pytest.raises(ValueError):
        topk_indices(torch.zeros(2, 2), 1)


@pytest.mark.parametrize("n", [1000, MULTINOMIAL_MAX + 4096])
def test_sample_indices_follows_the_weights_on_both_sides_of_torchs_limit(n):
    # torch.multinomial refuses n > 2^24; above it the inverse-CDF draw must give the same
    # distribution, reach the last indices, and never draw a zero-weight index.
    hot = torch.tensor([0, n // 3, n - 2, n - 1])
    p = torch.zeros(n)
    p[hot] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    idx = sample_indices(p, 200_000, torch.Generator().manual_seed(0))
    assert idx.dtype == torch.int64 and idx.shape == (200_000,)
    assert set(idx.unique().tolist()) == set(hot.tolist())
    freq = torch.stack([(idx == h).float().mean() for h in hot])
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.005, rtol=0)
    again = sample_indices(p, 200_000, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)  # reproducible from the generator (resume)

