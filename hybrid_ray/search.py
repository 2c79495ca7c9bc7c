"""Exact and approximate vector search with FAISS, over one index or N shards.

Our encoders emit L2-normalised float32 vectors, so cosine similarity is the inner product and the
exact index is ``IndexFlatIP``. Approximate indexes (IVF, HNSW, PQ) come from
``faiss.index_factory`` strings and are trained on a random sample.

Determinism: every search returns, per query, candidates ordered by score descending and then by
*lower id first*, and the top-k boundary obeys the same rule (when the k-th and (k+1)-th scores
tie, the lower id is kept). We do not rely on FAISS's internal heap tie-breaking for this (it
differs between CPU and GPU): :func:`search` asks for one extra result and widens the search
whenever a tie straddles the boundary. Every combination of candidate lists (FAISS's own
output, shards, blocks, language sub-indexes, the serving fan-out) goes through one function,
:func:`merge_topk`, under that order. That is what makes :class:`ShardedSearcher` return exactly
the top-k of one unsharded exact index, ties included, and what makes evaluation runs
reproducible.

Bounded memory over large pools: :func:`exact_search` runs the same exact search over a matrix
that may be a read-only ``np.memmap`` on disk (what :func:`hybrid_ray.encode.encode_to_memmap`
writes), one block of candidate rows at a time: each block goes into its own small
``IndexFlatIP``, and the per-block top-k lists are merged by :class:`TopK` under the same total
order, so the result equals one index over all rows, ties included. Extra memory is
O(block_rows x dim + n_queries x k) whatever the pool size; pages of a memmap are handed back
to the kernel after each block, so resident memory stays bounded too. :func:`exact_ranks` gives
the exact 1-based rank of chosen rows in the whole pool (for metrics that need ranks beyond the
top-k) with a score buffer capped by ``max_scores``.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hybrid_ray.errors import ConfigError
from hybrid_ray.faiss_check import faiss  # raises if no FAISS build or several are installed

log = logging.getLogger(__name__)

DEFAULT_TRAIN_SAMPLE = 100_000
#: Candidate rows per block in :func:`exact_search` / :func:`iter_blocks`: this many bytes of float32.
DEFAULT_BLOCK_BYTES = 64 << 20
#: Most float32 scores (query rows x candidate rows) :func:`exact_ranks` holds at once (64 MiB).
DEFAULT_MAX_SCORES = 1 << 24


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


_MISSING = np.iinfo(np.uint64).max
_SIGN = np.uint32(0x80000000)
_MAX_ID = (1 << 32) - 2  # ids live in a key's low 32 bits; all-ones there is kept free for _MISSING


def _order_keys(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """One ``uint64`` per result whose ascending order is (score desc, id asc); id -1 sorts last.

    High 32 bits: the float32 score mapped to an order-preserving unsigned integer and inverted
    (higher score -> smaller key); low 32 bits: the id. Sorting or partitioning these keys is a
    single cheap integer operation instead of a two-key lexsort.
    """
    s = np.ascontiguousarray(scores, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0: they tie
    b = s.view(np.uint32)
    u = np.where(b & _SIGN, ~b, b | _SIGN)  # monotone increasing in the score
    ids = np.asarray(ids, dtype=np.int64)
    keys = ((~u).astype(np.uint64) << np.uint64(32)) | (ids.astype(np.uint64) & np.uint64(0xFFFFFFFF))
    keys[ids < 0] = _MISSING
    return keys


def _decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    u = ~((keys >> np.uint64(32)).astype(np.uint32))
    b = np.where(u & _SIGN, u ^ _SIGN, ~u)
    scores = b.view(np.float32).copy()
    missing = keys == _MISSING
    ids[missing], scores[missing] = -1, -np.inf
    return scores, ids


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` per query of the union of candidate lists: THE merge of this project.

    ``parts`` are ``(scores float32 [nq, w_i], ids int64 [nq, w_i])`` pairs with the same ``nq``
    (a shard's, a block's, a language sub-index's or one FAISS call's results; id ``-1`` = no
    result). Returns ``(scores [nq, k'], ids [nq, k'])``, ``k' = min(k, sum w_i)``, ordered by
    score descending, then lower id first; missing results come last as ``(-inf, -1)``. The order
    is total, so the result does not depend on how the candidates were split into parts: that is
    why sharded, blockwise and language-filtered searches equal one exact index, ties included.
    ``-0.0`` and ``+0.0`` tie (and come back as ``+0.0``). Ids must be below ``2**32 - 1``.
    """
    parts = [(np.asarray(s, dtype=np.float32), np.asarray(i, dtype=np.int64)) for s, i in parts]
    if not parts:
        raise ConfigError("nothing to merge: no candidate lists", key="parts")
    nq = parts[0][0].shape[0]
    if any(s.ndim != 2 or s.shape != i.shape or s.shape[0] != nq for s, i in parts):
        raise ConfigError("candidate lists must be [nq, w] score/id pairs with one nq",
                          key="parts", value=[s.shape for s, _ in parts])
    if any(i.size and int(i.max()) > _MAX_ID for _, i in parts):
        raise ConfigError(f"ids must be at most {_MAX_ID} to merge", key="ids")
    keys = np.concatenate([_order_keys(s, i) for s, i in parts], axis=1)
    k = max(0, min(int(k), keys.shape[1]))
    if k < keys.shape[1]:
        keys = np.partition(keys, k - 1, axis=1)[:, :k] if k else keys[:, :0]
    return _decode_keys(np.sort(keys, axis=1))


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
    scores, ids = merge_topk([index.search(queries, kk)], kk)  # FAISS's own tie order varies
    if kk > k:
        # Rows whose k-th and (k+1)-th scores tie: the set at the boundary is ambiguous, so widen
        # until the tie is inside the result (or the whole index is), then cut by (score, id).
        tied = np.flatnonzero((ids[:, k] >= 0) & (scores[:, k] == scores[:, k - 1]))
        width = kk
        while tied.size:
            width = min(width * 2, ntotal)
            s2, i2 = merge_topk([index.search(queries[tied], width)], width)
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
        return merge_topk(parts, k)


# ---------------------------------------------------------------------------------------------
# Blockwise exact search over a (memory-mapped) matrix: memory bounded by the block, not the pool.

class TopK:
    """Running exact top-``k`` per query under the (score desc, id asc) order.

    :meth:`push` merges any batch of ``(scores, ids)`` candidates (a block's top-k) with
    :func:`merge_topk`; because the order is total, the result after all pushes is the top-k of
    everything pushed, independent of how the candidates were split. Memory: ``nq x k`` results
    plus one pushed batch.
    """

    def __init__(self, nq: int, k: int) -> None:
        self.k = int(k)
        self.scores = np.full((int(nq), self.k), -np.inf, dtype=np.float32)
        self.ids = np.full((int(nq), self.k), -1, dtype=np.int64)

    def push(self, scores: np.ndarray, ids: np.ndarray) -> None:
        if self.k == 0 or scores.size == 0:
            return
        self.scores, self.ids = merge_topk([(self.scores, self.ids), (scores, ids)], self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores float32 [nq, k], ids int64 [nq, k])``, best first (id -1 / -inf = none)."""
        return self.scores.copy(), self.ids.copy()


def _block_rows(d: int, block_size: int | None) -> int:
    if block_size is not None:
        if block_size < 1:
            raise ConfigError("must be >= 1", key="block_size", value=block_size)
        return int(block_size)
    return max(1, DEFAULT_BLOCK_BYTES // (4 * max(int(d), 1)))


def _release(vectors: np.ndarray, first: int, stop: int) -> None:
    """Drop the pages of rows ``first..stop-1`` of a read-only memmap from this process.

    The data stays in the page cache (a re-read costs a minor fault, not disk I/O), but it no
    longer counts in this process's resident set, so RSS stays bounded by one block.
    """
    mm = getattr(vectors, "_mmap", None)
    base = getattr(vectors, "base", None)
    if not isinstance(mm, mmap.mmap) or not hasattr(mm, "madvise") or stop <= first:
        return
    if not isinstance(base, mmap.mmap) or vectors.ndim != 2 or not vectors.flags.c_contiguous:
        return
    try:
        # np.memmap maps from the offset rounded down to the allocation granularity.
        data = int(vectors.offset) % mmap.ALLOCATIONGRANULARITY
        start_byte = data + first * vectors.strides[0]
        end_byte = data + stop * vectors.strides[0]
        lo = start_byte - start_byte % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, lo, min(end_byte, len(mm)) - lo)
    except (OSError, ValueError, AttributeError):  # pragma: no cover - best effort only
        pass


def iter_blocks(
    vectors: np.ndarray, rows: np.ndarray | None = None, block_size: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row ids int64 [b], float32 C-contiguous [b, d])`` blocks of ``vectors``.

    ``rows`` (ascending) restricts to a subset, gathered one block at a time, so the full
    subset matrix is never materialised. A memmap's pages are released after each block.
    """
    n = len(vectors) if rows is None else len(rows)
    d = vectors.shape[1] if vectors.ndim == 2 else 0
    step = _block_rows(d, block_size)
    for start in range(0, n, step):
        if rows is None:
            ids = np.arange(start, min(start + step, n), dtype=np.int64)
            block = np.ascontiguousarray(np.asarray(vectors[start : start + len(ids)]), dtype=np.float32)
        else:
            ids = np.asarray(rows[start : start + step], dtype=np.int64)
            lo, hi = int(ids[0]), int(ids[-1]) + 1
            if hi - lo == len(ids):  # a contiguous run: a slice, no gather
                block = np.ascontiguousarray(np.asarray(vectors[lo:hi]), dtype=np.float32)
            else:
                # Sparse rows span many pages: gather one window of ``step`` rows at a time and
                # release its pages, so a memmap keeps at most ~one block of pages resident.
                block = np.empty((len(ids), d), np.float32)
                done = 0
                for w in range(lo, hi, step):
                    upto = int(np.searchsorted(ids, w + step))
                    if upto > done:
                        block[done:upto] = vectors[ids[done:upto]]
                        done = upto
                    _release(vectors, w, min(w + step, hi))
        yield ids, block
        _release(vectors, int(ids[0]), int(ids[-1]) + 1)


def flat_index(vectors: np.ndarray, use_gpu: bool = False) -> faiss.Index:
    """An exact ``IndexFlatIP`` over ``vectors`` (on the GPU when asked and available)."""
    vectors = as_float32(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return maybe_to_gpu(index) if use_gpu else index


def _check_rows(rows: np.ndarray | None, n: int) -> np.ndarray | None:
    if rows is None:
        return None
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or (rows.size and (rows[0] < 0 or rows[-1] >= n or np.any(np.diff(rows) <= 0))):
        raise ConfigError("rows must be ascending, unique and inside the matrix", key="rows")
    return rows


def exact_search(
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    *,
    rows: np.ndarray | None = None,
    block_size: int | None = None,
    use_gpu: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` over ``vectors`` (or its ``rows``), block by block.

    Returns ``(scores float32 [nq, k], row ids int64 [nq, k])`` with ids indexing ``vectors``;
    the same result, ties included, as ``search(build_index(vectors[rows]), queries, k)`` with
    the local ids mapped through ``rows``, but ``vectors`` may be a memmap larger than memory:
    only one block (``block_size`` rows, default :data:`DEFAULT_BLOCK_BYTES` worth) is in
    memory at a time. ``k`` is capped at the number of candidates.
    """
    q = as_float32(queries)
    rows = _check_rows(rows, len(vectors))
    n = len(vectors) if rows is None else len(rows)
    k = max(0, min(int(k), n))
    acc = TopK(q.shape[0], k)
    if k == 0 or q.shape[0] == 0:
        return acc.result()
    for ids, block in iter_blocks(vectors, rows, block_size):
        s, local = search(flat_index(block, use_gpu), q, min(k, len(ids)))
        acc.push(s, ids[local])
    return acc.result()


def exact_ranks(
    queries: np.ndarray,
    vectors: np.ndarray,
    targets: Sequence[np.ndarray],
    *,
    max_scores: int = DEFAULT_MAX_SCORES,
    block_size: int | None = None,
) -> list[np.ndarray]:
    """1-based rank of the rows ``targets[i]`` for query ``i`` in the whole of ``vectors``.

    Same order as :func:`search`: score descending, then lower row first; exact over every
    row, not a truncated top-k. Scores are computed (query chunk x candidate block, at most
    ``max_scores`` floats at once) twice with identical shapes: once to read each target's score,
    once to count the rows ranked before it. Identical inputs give bit-identical BLAS results, so a
    target is never compared against a differently rounded copy of its own score.
    """
    q = as_float32(queries)
    nq, n = q.shape[0], len(vectors)
    targets = [np.asarray(t, dtype=np.int64) for t in targets]
    if len(targets) != nq:
        raise ConfigError("one target array per query is required", key="targets", value=len(targets))
    if any(t.size and (t.min() < 0 or t.max() >= n) for t in targets):
        raise ConfigError("target rows must be inside the matrix", key="targets")
    out = [np.zeros(len(t), np.int64) for t in targets]
    if nq == 0 or n == 0:
        return out
    cb = min(n, _block_rows(q.shape[1], block_size), max(1, int(max_scores)))
    qc = max(1, int(max_scores) // cb)
    for q0 in range(0, nq, qc):
        qs = q[q0 : q0 + qc]
        tg = targets[q0 : q0 + qc]
        t_score = [np.full(len(t), np.nan, np.float32) for t in tg]
        for ids, block in iter_blocks(vectors, None, cb):  # pass 1: the targets' own scores
            lo, hi = int(ids[0]), int(ids[-1]) + 1
            s = np.asarray(qs @ block.T)
            for i, t in enumerate(tg):
                inside = (t >= lo) & (t < hi)
                if inside.any():
                    t_score[i][inside] = s[i, t[inside] - lo]
        for ids, block in iter_blocks(vectors, None, cb):  # pass 2: rows ranked before each
            s = np.asarray(qs @ block.T)
            for i, t in enumerate(tg):
                if len(t) == 0:
                    continue
                si, ts = s[i][None, :], t_score[i][:, None]
                higher = (si > ts).sum(1)
                ties = ((si == ts) & (ids[None, :] < t[:, None])).sum(1)
                out[q0 + i] += higher + ties
    for r in out:
        r += 1
    return out
