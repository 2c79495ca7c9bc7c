"""Exact and approximate vector search with FAISS, over one index or N shards.

Our encoders emit L2-normalised float32 vectors, so cosine similarity is the inner product and the
exact index is ``IndexFlatIP``. Approximate indexes (IVF, HNSW, PQ) come from
``faiss.index_factory`` strings and are trained on a random sample.

Determinism: every search returns, per query, candidates ordered by score descending and then by
*lower id first*, and the top-k boundary obeys the same rule (when the k-th and (k+1)-th scores
tie, the lower id is kept). We do not rely on FAISS's internal heap tie-breaking for this (it
differs between CPU and GPU): :func:`search` asks for one extra result and widens the search
whenever a tie straddles the boundary. That is what makes :class:`ShardedSearcher` return exactly
the top-k of one unsharded exact index, ties included, and what makes evaluation runs
reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from hybrid_ray.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TRAIN_SAMPLE = 100_000


def as_float32(x: np.ndarray) -> np.ndarray:
    """FAISS needs C-contiguous float32 2-D arrays; convert once here instead of at every call."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ConfigError(f"expected a 2-D array of vectors, got shape {x.shape}", key="vectors")
    return x


def build_index(
    vectors: np.ndarray,
    factory: str = "Flat",
    *,
    train_sample: int = DEFAULT_TRAIN_SAMPLE,
    seed: int = 0,
) -> faiss.Index:
    """Build an inner-product index over ``vectors`` (normalised float32 [n, d]).

    ``factory`` is a ``faiss.index_factory`` string: ``Flat`` (exact, the default),
    ``IVF1024,Flat``, ``HNSW32``, ``IVF1024,PQ32``... Indexes that need training are trained on
    at most ``train_sample`` random rows (IVF needs ~30-256 points per centroid; training on the
    full 1M set would only cost time).
    """
    vectors = as_float32(vectors)
    n, d = vectors.shape
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"FAISS cannot build this index: {exc}".splitlines()[0], key="factory",
                          value=factory) from exc
    if not index.is_trained:
        if n == 0:
            raise ConfigError("an index that needs training cannot be built from 0 vectors",
                              key="factory", value=factory)
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(n, train_sample, replace=False)) if n > train_sample else slice(None)
        sample = vectors[pick]
        index.train(sample)
    if n:
        index.add(vectors)
    return index


def maybe_to_gpu(index: faiss.Index) -> faiss.Index:
    """Move ``index`` to all GPUs when FAISS was built with GPU support and sees a GPU, else keep it.

    Some index types (HNSW) have no GPU implementation: those stay on the CPU with a log line
    rather than failing, so one code path serves laptops, CPU nodes and GPU nodes.
    """
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    if get_num_gpus is None or get_num_gpus() <= 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as exc:  # pragma: no cover - needs a GPU build
        log.warning("keeping %s on the CPU (no GPU version): %s", type(index).__name__, exc)
        return index


def _sort_rows(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by score descending, then id ascending; missing results (id -1) go last."""
    missing = ids < 0
    key_score = np.where(missing, -np.inf, scores)
    key_id = np.where(missing, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_id, -key_score), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` search: ``(scores float32 [nq, k], ids int64 [nq, k])``, deterministic on ties.

    ``k`` is capped at the index size, so the result never holds FAISS's ``-1`` padding for an
    exact index. See the module docstring for the tie rule.
    """
    queries = as_float32(queries)
    nq = queries.shape[0]
    ntotal = int(index.ntotal)
    k = min(int(k), ntotal)
    if k <= 0 or nq == 0:
        return np.zeros((nq, max(k, 0)), np.float32), np.zeros((nq, max(k, 0)), np.int64)
    kk = min(k + 1, ntotal)
    scores, ids = index.search(queries, kk)
    scores, ids = _sort_rows(scores, ids.astype(np.int64))
    if kk > k:
        # Rows whose k-th and (k+1)-th scores tie: the set at the boundary is ambiguous, so widen
        # until the tie is inside the result (or the whole index is), then cut by (score, id).
        tied = np.flatnonzero((ids[:, k] >= 0) & (scores[:, k] == scores[:, k - 1]))
        width = kk
        while tied.size:
            width = min(width * 2, ntotal)
            s2, i2 = index.search(queries[tied], width)
            s2, i2 = _sort_rows(s2, i2.astype(np.int64))
            scores[tied, :kk], ids[tied, :kk] = s2[:, :kk], i2[:, :kk]
            if width >= ntotal:
                break
            still = (i2[:, -1] >= 0) & (s2[:, -1] == s2[:, k - 1])
            tied = tied[still]
    return np.ascontiguousarray(scores[:, :k]), np.ascontiguousarray(ids[:, :k])


class ShardedSearcher:
    """Exact top-k over N shards: search each shard, map local to global ids, merge.

    Shard ``i`` holds global ids ``offsets[i] .. offsets[i] + ntotal_i - 1`` in order (the
    layout :mod:`hybrid_ray.index` writes). Each shard returns its own top-k under the
    (score desc, id asc) rule; because that rule is a total order and global ids preserve the
    local order, the merged top-k of the per-shard top-k lists is exactly the global top-k.
    """

    def __init__(
        self,
        shards: Sequence[faiss.Index],
        offsets: Sequence[int] | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        self.shards = list(shards)
        sizes = [int(s.ntotal) for s in self.shards]
        if offsets is None:
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist() if sizes else []
        if len(offsets) != len(self.shards):
            raise ConfigError("one offset per shard is required", key="offsets", value=len(offsets))
        self.offsets = [int(o) for o in offsets]
        self.sizes = sizes
        # FAISS releases the GIL while searching, so a thread per shard searches them in parallel.
        self.threads = threads if threads is not None else min(len(self.shards), 8) or 1

    @property
    def ntotal(self) -> int:
        return int(sum(self.sizes))

    @property
    def d(self) -> int:
        return int(self.shards[0].d) if self.shards else 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Global top-``k`` ``(scores [nq, k], global ids [nq, k])`` over all shards."""
        queries = as_float32(queries)
        nq = queries.shape[0]
        k = min(int(k), self.ntotal)
        if k <= 0 or nq == 0:
            return np.zeros((nq, max(k, 0)), np.float32), np.zeros((nq, max(k, 0)), np.int64)

        def one(i: int) -> tuple[np.ndarray, np.ndarray]:
            s, ids = search(self.shards[i], queries, k)
            return s, ids + self.offsets[i]

        if self.threads > 1 and len(self.shards) > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                parts = list(pool.map(one, range(len(self.shards))))
        else:
            parts = [one(i) for i in range(len(self.shards))]
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        scores, ids = _sort_rows(scores, ids)
        return np.ascontiguousarray(scores[:, :k]), np.ascontiguousarray(ids[:, :k])
