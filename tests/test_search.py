"""FAISS search: determinism on ties, sharded == unsharded, factories, streaming encode."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray.encode import encode_texts, encode_to_memmap
from hybrid_ray.errors import ConfigError
from hybrid_ray.search import ShardedSearcher, build_index, maybe_to_gpu, search


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
