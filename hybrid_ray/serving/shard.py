"""One index shard loaded for serving (plain Python, no Ray), and the merge of shards' answers.

Each shard returns its own top-k under :mod:`hybrid_ray.search`'s total order (score desc, then
lower global id), and :func:`merge_hits` keeps the best k of the union with
:func:`hybrid_ray.search.merge_topk` -- exactly the top-k of one unsharded exact index.

Language filter (exact): every shard builds, at load time, one exact ``IndexFlatIP`` per language
over that language's rows (taken from the shard's verified ``.npy`` embeddings). A filtered
request searches only the requested languages' sub-indexes with the full ``k``, so ``k`` filtered
results come back whenever the index holds that many, without over-fetching from the main index and
hoping enough survive a post-filter. Sub-index row order follows shard row order, so the id
tie-break rule (and therefore exactness under merge) is preserved. Cost: one extra copy of the
vectors per shard (documented trade-off; an ``IDSelector`` on the main index would avoid it but has
no GPU implementation for every index type).

Approximate indexes (IVF / HNSW / PQ): ``nprobe`` / ``efSearch`` come from the index manifest
(``hybrid-ray index --nprobe / --ef-search``), overridable by the app's ``nprobe`` / ``ef_search``.
The per-language sub-indexes stay exact, so a language-filtered search is exact even over an
approximate main index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ShardHits:
    """One shard's answer for ``n`` queries: rectangular, padded with id -1 / score -inf.

    ``rows[q]`` holds ``(docid, lang, text)`` for the non-padding columns of query ``q``, in order.
    """

    scores: np.ndarray  # float32 [n, kk]
    ids: np.ndarray  # int64 [n, kk], global ids (shard offset + local row), -1 = none
    rows: list[list[tuple[str, str, str]]]


class ShardCore:
    """A loaded, verified shard: main FAISS index, per-language exact sub-indexes, passage table.

    Plain Python (no Ray), so it is unit-testable and reusable by the bare baseline server.
    """

    def __init__(self, name: str, offset: int, index: Any, vectors: np.ndarray, table: Any,
                 gpu: bool = False, search_params: dict[str, int] | None = None) -> None:
        import faiss

        from hybrid_ray.index import prepare_index
        from hybrid_ray.search import build_index, maybe_to_gpu

        self.name = name
        self.offset = int(offset)
        self.docids: list[str] = table.column("docid").to_pylist()
        self.langs: list[str] = table.column("lang").to_pylist()
        self.texts: list[str] = table.column("text").to_pylist()
        self.count = len(self.docids)
        self.dim = int(index.d)
        self.on_gpu = bool(gpu)
        self.index = prepare_index(index, gpu=gpu, search_params=search_params)
        self.search_params = dict(search_params or {})
        self.index_type = type(faiss.downcast_index(index)).__name__
        lang_arr = np.asarray(self.langs, dtype=object)
        self.lang_rows: dict[str, np.ndarray] = {}
        self.lang_index: dict[str, faiss.Index] = {}
        for lang in sorted(set(self.langs)):
            rows = np.flatnonzero(lang_arr == lang).astype(np.int64)  # ascending: keeps tie order
            sub = build_index(np.asarray(vectors[rows]), "Flat")
            self.lang_rows[lang] = rows
            self.lang_index[lang] = maybe_to_gpu(sub) if gpu else sub

    @classmethod
    def load(cls, index_dir: str | Path, shard: int, *, verify: bool = True, gpu: bool = False,
             search_params: dict[str, int] | None = None) -> ShardCore:
        """Load shard ``shard`` of an index directory, checking files against the manifest.

        Raises DataError naming the missing / corrupt file (:func:`hybrid_ray.index.read_shard`,
        the reader :func:`hybrid_ray.index.load_sharded_index` uses too).
        ``search_params``: nprobe / efSearch (default: the manifest's).
        """
        from hybrid_ray.index import read_manifest, read_shard, resolve_search_params

        manifest = read_manifest(index_dir)
        data = read_shard(index_dir, shard, verify=verify, manifest=manifest)
        if search_params is None:
            search_params = resolve_search_params(manifest)
        return cls(data.name, data.offset, data.index, data.vectors, data.table, gpu=gpu,
                   search_params=search_params)

    def search(self, vectors: np.ndarray, k: int, langs: Sequence[str] | None = None) -> ShardHits:
        """This shard's exact top-``k`` for each query vector, optionally within ``langs``."""
        from hybrid_ray.search import as_float32, merge_topk, search

        q = as_float32(vectors)
        if not langs:
            scores, local = search(self.index, q, k)
        else:
            parts = []
            for lang in langs:
                if lang not in self.lang_index:  # language absent from this shard only
                    continue
                s, sub_ids = search(self.lang_index[lang], q, k)
                parts.append((s, self.lang_rows[lang][sub_ids]))
            if not parts:
                scores = np.zeros((len(q), 0), np.float32)
                local = np.zeros((len(q), 0), np.int64)
            else:
                scores, local = merge_topk(parts, k)
        ids = np.where(local >= 0, local + self.offset, -1).astype(np.int64)
        rows = [[(self.docids[j], self.langs[j], self.texts[j]) for j in r if j >= 0] for r in local.tolist()]
        return ShardHits(np.asarray(scores, np.float32), ids, rows)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "ok": True, "count": self.count, "dim": self.dim, "offset": self.offset,
                "langs": sorted(self.lang_rows), "gpu": self.on_gpu,
                "index": " ".join([self.index_type, *(f"{k}={v}" for k, v in self.search_params.items())])}


def merge_hits(parts: Sequence[ShardHits], k: int) -> list[list[dict[str, Any]]]:
    """Global top-``k`` hits per query from per-shard top-``k`` lists (exact; see module docstring).

    The order is :func:`hybrid_ray.search.merge_topk`'s (score desc, global id asc), so the result
    equals one unsharded exact search, ties included.
    """
    from hybrid_ray.search import merge_topk

    if not parts:
        return []
    scores, ids = merge_topk([(p.scores, p.ids) for p in parts], k)
    out: list[list[dict[str, Any]]] = []
    for q in range(scores.shape[0]):
        payload: dict[int, tuple[str, str, str]] = {}
        for p in parts:
            payload.update(zip((i for i in p.ids[q].tolist() if i >= 0), p.rows[q], strict=True))
        hits = []
        for s, gid in zip(scores[q].tolist(), ids[q].tolist(), strict=True):
            if gid < 0:
                break
            docid, lang, text = payload[gid]
            hits.append({"rank": len(hits) + 1, "docid": docid, "score": float(s), "lang": lang,
                         "text": text})
        out.append(hits)
    return out
