"""FAISS search: determinism on ties, sharded == unsharded, blockwise == one-shot, bounded memory."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray.encode import encode_texts, encode_to_memmap
from hybrid_ray.errors import ConfigError
from hybrid_ray.search import (
    ShardedSearcher,
    TopK,
    build_index,
    exact_ranks,
    exact_search,
    maybe_to_gpu,
    merge_topk,
    search,
)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ x.T
    return np.stack([np.lexsort((np.arange(len(x)), -row))[:k] for row in s])


def _shards(x: np.ndarray, bounds: list[int]) -> ShardedSearcher:
    parts = np.split(x, bounds)
    return ShardedSearcher([build_index(p) for p in parts])


def test_flat_search_matches_brute_force_and_orders_ties_by_id():
    rng = np.random.default_rng(0)
    x = _unit(rng, 300, 16)
    q = _unit(rng, 25, 16)
    s, ids = search(build_index(x), q, 10)
    np.testing.assert_array_equal(ids, _brute(x, q, 10))
    assert s.dtype == np.float32 and ids.dtype == np.int64
    assert np.all(np.diff(s, axis=1) <= 0)

    ties = np.zeros((10, 4), np.float32)
    ties[:, 0] = 1.0  # every candidate scores exactly 1.0
    s, ids = search(build_index(ties), np.array([[1, 0, 0, 0]], np.float32), 3)
    assert ids.tolist() == [[0, 1, 2]]
    assert search(build_index(ties), ties[:1], 50)[1].shape == (1, 10)  # k capped at the index size


@pytest.mark.parametrize("bounds", [[100], [37, 150, 151], [0, 299]])
def test_sharded_equals_unsharded_random(bounds):
    rng = np.random.default_rng(1)
    x = _unit(rng, 300, 16)
    q = _unit(rng, 30, 16)
    s1, i1 = search(build_index(x), q, 20)
    s2, i2 = _shards(x, bounds).search(q, 20)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-6)


def test_sharded_equals_unsharded_with_ties_across_shards_and_boundary():
    # Exactly representable values: many exact ties, straddling shard and top-k boundaries.
    rng = np.random.default_rng(2)
    x = rng.integers(0, 3, size=(200, 8)).astype(np.float32) / 4.0
    q = rng.integers(0, 3, size=(40, 8)).astype(np.float32) / 4.0
    for k in (1, 5, 17, 64):
        s1, i1 = search(build_index(x), q, k)
        np.testing.assert_array_equal(i1, _brute(x, q, k))
        for bounds in ([50, 120], [1, 2, 3, 199]):
            s2, i2 = _shards(x, bounds).search(q, k)
            np.testing.assert_array_equal(i1, i2)
            np.testing.assert_array_equal(s1, s2)


def test_sharded_offsets_and_single_thread():
    rng = np.random.default_rng(3)
    x = _unit(rng, 50, 8)
    sh = ShardedSearcher([build_index(x[:20]), build_index(x[20:])], offsets=[1000, 2000], threads=1)
    _, ids = sh.search(x[25:26], 1)
    assert ids.tolist() == [[2005]]
    assert sh.ntotal == 50 and sh.d == 8
    with pytest.raises(ConfigError):
        ShardedSearcher([build_index(x)], offsets=[0, 1])


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW8", "IVF4,PQ4"])
def test_factories_build_and_find_themselves(factory):
    rng = np.random.default_rng(4)
    x = _unit(rng, 400, 16)
    index = build_index(x, factory, train_sample=300)
    if hasattr(index, "nprobe"):
        index.nprobe = 4  # all lists: exact within IVF
    _, ids = search(index, x[:20], 5)
    hit = np.mean(ids[:, 0] == np.arange(20))
    assert hit >= (0.5 if "PQ" in factory else 0.95)


def test_bad_factory_and_gpu_fallback():
    with pytest.raises(ConfigError, match="factory"):
        build_index(np.zeros((4, 4), np.float32), "NotAnIndex")
    index = build_index(np.eye(4, dtype=np.float32))
    assert maybe_to_gpu(index).ntotal == 4  # CPU build: returned unchanged


class _LenEncoder:
    """Deterministic fake: [len(text), 1] normalised, plus a call log to check batching."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts, kind, batch_size=64):
        self.calls.append(len(texts))
        v = np.array([[len(t), 1.0 if kind == "query" else 2.0] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_encode_to_memmap_streams_and_matches_in_memory(tmp_path):
    texts = [f"text number {i}" + "x" * (i % 7) for i in range(103)]
    enc = _LenEncoder()
    out = encode_to_memmap(enc, pa.chunked_array([texts[:50], texts[50:]]), "passage",
                           tmp_path / "emb.npy", batch_size=16, progress=False)
    assert isinstance(out, np.memmap) and out.shape == (103, 2) and out.dtype == np.float32
    assert max(enc.calls) <= 16 and sum(enc.calls) == 103
    np.testing.assert_array_equal(np.load(tmp_path / "emb.npy"),
                                  encode_texts(_LenEncoder(), texts, "passage", 64))
    assert [p.name for p in tmp_path.iterdir()] == ["emb.npy"]  # no temp file left behind
    # A generator needs total=; a wrong total fails and leaves nothing at the output path.
    gen_out = encode_to_memmap(enc, (t for t in texts), "query", tmp_path / "g.npy", 10, total=103,
                               progress=False)
    assert gen_out.shape == (103, 2)
    with pytest.raises(ConfigError):
        encode_to_memmap(enc, (t for t in texts), "query", tmp_path / "bad.npy", 10, progress=False)
    with pytest.raises(ConfigError):
        encode_to_memmap(enc, (t for t in texts), "query", tmp_path / "bad.npy", 10, total=5, progress=False)
    assert not (tmp_path / "bad.npy").exists()
    assert encode_to_memmap(enc, [], "query", tmp_path / "empty.npy", progress=False).shape == (0, 0)


# --- blockwise exact search over (memory-mapped) matrices -------------------------------------

def _tie_data(seed: int, n: int = 200, nq: int = 40, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Exactly representable values: many exact score ties, across blocks and at the top-k cut."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(n, d)).astype(np.float32) / 4.0
    q = rng.integers(-1, 3, size=(nq, d)).astype(np.float32) / 4.0
    return x, q


@pytest.mark.parametrize("block_size", [1, 3, 7, 64, None])
def test_exact_search_blockwise_equals_one_shot_with_ties(block_size):
    x, q = _tie_data(5)
    for k in (1, 5, 17, 64, 200, 500):
        s1, i1 = search(build_index(x), q, k)
        s2, i2 = exact_search(q, x, k, block_size=block_size)
        np.testing.assert_array_equal(i2, i1)
        np.testing.assert_array_equal(s2, s1)
        np.testing.assert_array_equal(i2, _brute(x, q, min(k, len(x))))


@pytest.mark.parametrize("block_size", [1, 4, 13, None])
def test_exact_search_subset_rows_equals_index_over_the_subset(block_size):
    x, q = _tie_data(6, n=300)
    rng = np.random.default_rng(7)
    for rows in (np.sort(rng.choice(300, 90, replace=False)), np.arange(40, 140), np.array([3])):
        for k in (1, 10, 90):
            s1, local = search(build_index(x[rows]), q, k)
            s2, i2 = exact_search(q, x, k, rows=rows, block_size=block_size)
            np.testing.assert_array_equal(i2, rows[local])  # ids are rows of the full matrix
            np.testing.assert_array_equal(s2, s1)
    with pytest.raises(ConfigError, match="ascending"):
        exact_search(q, x, 5, rows=np.array([5, 2]))


def test_exact_search_over_memmap_and_random_vectors(tmp_path):
    rng = np.random.default_rng(8)
    x = _unit(rng, 1000, 16)
    q = _unit(rng, 30, 16)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    s1, i1 = search(build_index(x), q, 25)
    s2, i2 = exact_search(q, mm, 25, block_size=97)
    np.testing.assert_array_equal(i2, i1)
    np.testing.assert_allclose(s2, s1, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)  # read-only use: file unchanged


def test_topk_merge_is_independent_of_block_order():
    x, q = _tie_data(9)
    k = 12
    parts = np.array_split(np.arange(len(x)), 7)
    results = []
    for order in (range(7), reversed(range(7)), [3, 0, 6, 1, 5, 2, 4]):
        acc = TopK(len(q), k)
        for p in order:
            s, local = search(build_index(x[parts[p]]), q, k)
            acc.push(s, parts[p][local])
        results.append(acc.result())
    for s, ids in results:
        np.testing.assert_array_equal(ids, _brute(x, q, k))
        np.testing.assert_array_equal(s, results[0][0])
    # -0.0 and +0.0 tie (lower id first), like the float comparison in search()
    acc = TopK(1, 3)
    acc.push(np.array([[-0.0, 0.0, -1.0]], np.float32), np.array([[1, 2, 0]]))
    acc.push(np.array([[0.0]], np.float32), np.array([[0]]))
    assert acc.result()[1].tolist() == [[0, 1, 2]]


def test_merge_topk_equals_one_sort_whatever_the_split():
    """The one merge: any split of the candidates (ties, -1 padding, empty parts) gives the top-k
    of one (score desc, id asc) sort of everything; padding comes last as (-inf, -1)."""
    x, q = _tie_data(12, n=90, nq=9)
    scores = q @ x.T
    ids = np.broadcast_to(np.arange(len(x)), scores.shape)
    ref = _brute(x, q, len(x))
    rng = np.random.default_rng(4)
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, len(x)), 4, replace=False))
        perm = rng.permutation(len(x))  # candidate order inside a part must not matter either
        parts = [(scores[:, perm[a:b]], ids[:, perm[a:b]]) for a, b in zip([0, *cuts], [*cuts, len(x)], strict=True)]
        parts.append((np.full((len(q), 3), 7.0, np.float32), np.full((len(q), 3), -1)))  # padding, even if scored
        parts.append((np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)))
        for k in (1, 10, 90, 200):
            s, i = merge_topk(parts, k)
            assert i.shape == (len(q), min(k, len(x) + 3))
            real = min(k, len(x))
            np.testing.assert_array_equal(i[:, :real], ref[:, :real])
            np.testing.assert_array_equal(s[:, :real], np.take_along_axis(scores, ref, 1)[:, :real])
            if k > len(x):
                assert (i[:, len(x):] == -1).all() and np.isneginf(s[:, len(x):]).all()
    with pytest.raises(ConfigError):
        merge_topk([(scores, ids), (scores[:2], ids[:2])], 3)  # disagreeing query counts
    with pytest.raises(ConfigError):
        merge_topk([(scores[:, :1], np.full((len(q), 1), 1 << 40))], 1)  # ids beyond the key's 32 bits


@pytest.mark.parametrize(("max_scores", "block_size"), [(1, 1), (7, 3), (100, None), (1 << 24, None)])
def test_exact_ranks_equal_full_sort_with_ties(max_scores, block_size):
    x, q = _tie_data(10, n=250, nq=30)
    rng = np.random.default_rng(11)
    targets = [np.sort(rng.choice(250, int(rng.integers(0, 6)), replace=False)) for _ in range(30)]
    ranks = exact_ranks(q, x, targets, max_scores=max_scores, block_size=block_size)
    full = _brute(x, q, len(x))  # full ranking, ties by lower id
    for i, t in enumerate(targets):
        pos = np.empty(len(x), np.int64)
        pos[full[i]] = np.arange(len(x))
        np.testing.assert_array_equal(ranks[i], pos[t] + 1)
    with pytest.raises(ConfigError):
        exact_ranks(q, x, targets[:-1])


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(val.split()[0]) * 1024
    return out


def test_exact_search_memory_stays_far_below_the_matrix(tmp_path):
    """Search a 300k x 64 float32 memmap (77 MB) in 4096-row blocks: extra memory is ~a block.

    tracemalloc sees numpy's allocations (a gather or a full score matrix would show up at
    >= the matrix size); on Linux a sampling thread also watches the process's anonymous and
    total resident memory (FAISS's own buffers, and memmap pages that are not released).
    """
    import mmap
    import threading
    import time
    import tracemalloc

    n, d = 300_000, 64
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(12)
    for start in range(0, n, 50_000):
        mm[start : start + 50_000] = rng.standard_normal((50_000, d), dtype=np.float32)
    mm.flush()
    del mm
    matrix_bytes = n * d * 4
    x = np.load(path, mmap_mode="r")
    q = rng.standard_normal((64, d), dtype=np.float32)
    exact_search(q, x[:2000].copy(), 10, block_size=500)  # warm up FAISS / BLAS buffers
    expect_s, expect_i = None, None

    linux = os.path.exists("/proc/self/status") and hasattr(mmap.mmap, "madvise")
    for rows in (None, np.arange(0, n, 3)):
        peak: dict[str, int] = {}
        stop = threading.Event()

        def sample(peak=peak, stop=stop):
            while not stop.is_set():
                for key, val in _proc_status().items():
                    peak[key] = max(peak.get(key, 0), val)
                time.sleep(0.001)

        base = _proc_status() if linux else {}
        sampler = threading.Thread(target=sample, daemon=True) if linux else None
        if sampler:
            sampler.start()
        tracemalloc.start()
        try:
            s, ids = exact_search(q, x, 10, rows=rows, block_size=4096)
            _, traced_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            stop.set()
            if sampler:
                sampler.join()
        assert traced_peak < 0.3 * matrix_bytes, traced_peak
        if linux:
            assert peak["RssAnon"] - base["RssAnon"] < 0.3 * matrix_bytes, (peak, base)
            assert peak["VmRSS"] - base["VmRSS"] < 0.3 * matrix_bytes, (peak, base)  # pages released
        if rows is None:
            expect_s, expect_i = s, ids
    # The result is still the exact one (checked on a slice small enough to do one-shot).
    head = np.asarray(x[:20_000])
    np.testing.assert_array_equal(exact_search(q, head, 10, block_size=4096)[1], search(build_index(head), q, 10)[1])
    assert expect_i.shape == (64, 10) and np.all(np.diff(expect_s, axis=1) <= 0)
