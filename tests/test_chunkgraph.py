"""The out-of-core round: per-chunk top-k + tree merge == global top-k (oracle: np.argsort)."""

import time

import numpy as np
import pytest
import torch

from intstream.teach.graph import model_state, round_graph, round_topk
from intstream.models import ModelConfig, build_model, predict
from intstream.store import create_store, open_store
from intstream.teach.topk import chunk_error

H, W, CH, CW = 37, 29, 8, 7  # 5 x 5 = 25 chunks, ragged on both axes
CFG = ModelConfig(in_dim=2, out_dim=3, width=32, depth=3)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("cg") / "img.zarr"
    rng = np.random.default_rng(0)
    # Few distinct values: many exactly tied errors under the constant model below.
    values = rng.choice(np.array([0, 51, 102, 255], np.uint8), size=(H, W, 3))
    with create_store(out, kind="image", shape=(H, W), channels=3, dtype="uint8", chunks=(CH, CW)) as writer:
        for sl in writer.blocks():
            writer.write(sl, values[sl])
    return str(out)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CFG)


def constant_state():
    """All weights zero, output bias 0.5: predictions are exactly 0.5, errors exact and tied."""
    m = build_model(CFG)
    sd = {k: torch.zeros_like(v) for k, v in m.state_dict().items()}
    sd["layers.2.bias"] = torch.full((3,), 0.5)
    return sd


def oracle_errors(store, model):
    """Errors of the whole grid, each chunk's forward run separately (as the tasks do)."""
    err = np.empty(store.n_samples, np.float32)
    for sl in store.chunk_slices():
        coords, targets = store.block_samples(sl)
        pred = predict(model, torch.from_numpy(coords)).numpy()
        err[store.block_flat_index(sl)] = chunk_error(pred, targets)
    return err


def check(cands, stats, err, targets, k):
    want = np.argsort(-err, kind="stable")[:k]
    np.testing.assert_array_equal(cands.index, want)
    np.testing.assert_array_equal(cands.error, err[want])
    np.testing.assert_array_equal(cands.target, targets[want])


@pytest.mark.parametrize("split_every", [2, 3])
def test_round_is_global_topk(store_path, model, split_every):
    store = open_store(store_path)
    err = oracle_errors(store, model)
    _, targets = store.load_all()
    # k smaller than a chunk (56 samples), larger than a chunk, and larger than the signal.
    for k in (5, 200, store.n_samples + 1):
        cands, stats = round_topk(store_path, store.chunk_slices(), CFG, model.state_dict(), k, split_every=split_every)
        check(cands, stats, err, targets, k)
    # Stats per chunk, in chunk order.
    assert [s["chunk"] for s in stats] == list(range(25))
    for s, sl in zip(stats, store.chunk_slices()):
        e = err[store.block_flat_index(sl)]
        assert s["n"] == e.size and s["max"] == e.max()
        assert s["mean"] == pytest.approx(float(e.mean()), rel=1e-6)
        assert s["start"] == [x.start for x in sl]
    # The whole-image forward agrees (up to BLAS rounding) with the per-chunk forwards.
    coords, _ = store.load_all()
    whole = chunk_error(predict(model, torch.from_numpy(coords)).numpy(), targets)
    np.testing.assert_allclose(whole, err, atol=1e-5)


def test_ties_subset_of_chunks_and_threads(store_path):
    store = open_store(store_path)
    sd = constant_state()
    chunks = store.chunk_slices()[::2]  # a round covers only some chunks
    idx = np.concatenate([store.block_flat_index(sl) for sl in chunks])
    _, targets = store.load_all()
    err = np.full(store.n_samples, -1.0, np.float32)
    err[idx] = np.abs(targets[idx] - 0.5).sum(axis=1)
    assert len(np.unique(err[idx])) < 30  # heavily tied
    graph = round_graph(store_path, chunks, CFG, sd, 100, split_every=2)
    assert len(graph.dask) > len(chunks) + 5  # a real tree: leaves + several combine levels
    for workers in (1, 2):
        cands, stats = round_topk(store_path, chunks, CFG, sd, 100, split_every=2, num_workers=workers)
        check(cands, stats, err, targets, 100)
        assert set(cands.index) <= set(idx) and len(stats) == len(chunks)


def test_chunk_quota_and_union(store_path, model):
    store = open_store(store_path)
    chunks = store.chunk_slices()
    err = oracle_errors(store, model)
    union, _ = round_topk(store_path, chunks, CFG, model.state_dict(), None, chunk_k=3, split_every=3)
    want = np.concatenate([store.block_flat_index(sl)[np.argsort(-err[store.block_flat_index(sl)], kind="stable")[:3]] for sl in chunks])
    assert sorted(union.index) == sorted(want) and union.size == 75
    capped, _ = round_topk(store_path, chunks, CFG, model.state_dict(), 10, chunk_k=3, split_every=3)
    np.testing.assert_array_equal(capped.index, union.index[:10])
    with pytest.raises(ValueError):
        round_graph(store_path, chunks, CFG, model.state_dict(), None)
    with pytest.raises(ValueError):
        round_graph(store_path, chunks, CFG, model.state_dict(), 5, split_every=1)


def test_bf16_scoring_close(store_path, model, bf16_scoring):
    store = open_store(store_path)
    err = oracle_errors(store, model)
    cands, stats = round_topk(store_path, store.chunk_slices(), CFG, model.state_dict(), 50, score_dtype="bfloat16")
    np.testing.assert_allclose(cands.error, err[cands.index], atol=0.05)
    # Nearly the same selection: the bf16 top-50 lies within the fp32 top-100.
    assert len(set(cands.index) & set(np.argsort(-err, kind="stable")[:100])) >= 45


def test_model_snapshot_token(model):
    a = model_state(CFG, model.state_dict())
    assert model_state(CFG, model.state_dict()).token == a.token
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["layers.0.bias"][0] += 1
    assert model_state(CFG, sd).token != a.token
    # The snapshot is a copy: training on after the snapshot does not change it.
    assert a.state["layers.0.bias"].data_ptr() != model.state_dict()["layers.0.bias"].data_ptr()


def _models_built():
    from intstream.teach import graph as chunkgraph

    return len(chunkgraph._model_cache)


def test_model_built_once_per_round(store_path, model, monkeypatch):
    import intstream.teach.graph as cg
    import intstream.models as im

    calls = []
    real = im.build_model
    monkeypatch.setattr(im, "build_model", lambda cfg: calls.append(cfg) or real(cfg))
    cg._model_cache.clear()
    store = open_store(store_path)
    round_topk(store_path, store.chunk_slices(), CFG, model.state_dict(), 10, num_workers=2)
    round_topk(store_path, store.chunk_slices(), CFG, model.state_dict(), 10)
    assert len(calls) == 1


def test_distributed_matches_threads(store_path, model):
    distributed = pytest.importorskip("distributed")
    store = open_store(store_path)
    chunks = store.chunk_slices()
    t0 = time.perf_counter()
    local, local_stats = round_topk(store_path, chunks, CFG, model.state_dict(), 150, split_every=3)
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=40
    ) as cluster, distributed.Client(cluster) as client:
        remote, remote_stats = round_topk(
            store_path, chunks, CFG, model.state_dict(), 150, split_every=3, scheduler=client
        )
        # Each worker process built the model at most once for the 25 chunks.
        built = client.run(_models_built)
        assert len(built) == 2 and set(built.values()) <= {0, 1} and sum(built.values()) >= 1
    np.testing.assert_array_equal(remote.index, local.index)
    np.testing.assert_array_equal(remote.error, local.error)
    np.testing.assert_array_equal(remote.target, local.target)
    assert remote_stats == local_stats
    assert time.perf_counter() - t0 < 30


def test_round_draws_per_chunk_shares_and_block_cache(store_path, model, monkeypatch):
    """Chunks with share 1 are read, not scored (uniform draws, no error sums); kept decoded
    chunks are read from Zarr once and give the same draws as fresh reads."""
    from intstream.store import SignalStore
    from intstream.teach.graph import clear_block_cache, round_draws

    store = open_store(store_path)
    chunks = store.chunk_slices()[:6]
    ms = model_state(CFG, model.state_dict())
    shares = [0.5, 1.0, 0.5, 1.0, 1.0, 0.0]
    args = (store_path, chunks, ms, [40] * 6, list(range(6)))
    ref, ref_stats = round_draws(*args, uniform_share=shares, split_every=2)
    assert [("sum" in s) for s in ref_stats] == [a < 1 for a in shares]
    sizes = np.array([np.prod([s.stop - s.start for s in sl]) for sl in chunks])
    uniform = np.isin(ref.chunk, [1, 3, 4])
    np.testing.assert_allclose(ref.p_local[uniform], 1.0 / sizes[ref.chunk[uniform]])
    err = oracle_errors(store, model)
    for c in (0, 5):  # scored: p = (1 - a) e / sum(e) + a / n over the chunk
        idx = store.block_flat_index(chunks[c])
        e = err[idx].astype(np.float64)
        p = (1 - shares[c]) * e / e.sum() + shares[c] / len(idx)
        here = ref.chunk == c
        np.testing.assert_allclose(ref.p_local[here], p[np.searchsorted(idx, ref.index[here])], rtol=1e-5)
    reads = []
    real = SignalStore.block_samples
    monkeypatch.setattr(SignalStore, "block_samples", lambda self, sl: reads.append(sl) or real(self, sl))
    clear_block_cache()
    for _ in range(3):
        got, _ = round_draws(*args, uniform_share=shares, split_every=2, keep=6)
        for f in got._fields:
            np.testing.assert_array_equal(getattr(got, f), getattr(ref, f))
    assert len(reads) == 6, "each kept chunk is read from the store once"
    clear_block_cache()


def test_round_draws_fuse_small_chunks_into_one_forward(store_path, model, monkeypatch):
    """Consecutive chunks under ``batch`` samples share one task and one scoring forward;
    each still draws from its own seed and errors, so the draws equal one task per chunk."""
    import intstream.models as models
    from intstream.teach.graph import round_draws

    store = open_store(store_path)
    chunks = store.chunk_slices()
    ms = model_state(CFG, model.state_dict())
    shares = [(0.5, 1.0, 0.0)[i % 3] for i in range(len(chunks))]
    args = (store_path, chunks, ms, [30] * len(chunks), list(range(100, 100 + len(chunks))))
    calls = []
    real = models.predict
    monkeypatch.setattr(models, "predict", lambda m, c, **kw: calls.append(len(c)) or real(m, c, **kw))
    one, one_stats = round_draws(*args, uniform_share=shares, split_every=3, batch=8, scheduler="sync")
    scored = sum(a < 1 for a in shares)
    assert len(calls) == scored, "one forward per scored chunk"
    calls.clear()
    fused, fused_stats = round_draws(*args, uniform_share=shares, split_every=3, batch=1 << 12, scheduler="sync")
    assert len(calls) == 1 and calls[0] == sum(store.block_flat_index(sl).size for sl, a in zip(chunks, shares) if a < 1)
    for f in ("index", "target", "chunk"):
        np.testing.assert_array_equal(getattr(fused, f), getattr(one, f))
    np.testing.assert_allclose(fused.p_local, one.p_local, rtol=1e-6)
    assert [s["chunk"] for s in fused_stats] == list(range(len(chunks)))
    for a, b in zip(fused_stats, one_stats):
        assert a.keys() == b.keys() and a["n"] == b["n"]
        if "sum" in a:
            assert a["sum"] == pytest.approx(b["sum"], rel=1e-6)
