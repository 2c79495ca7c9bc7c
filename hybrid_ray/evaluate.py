"""Evaluate a dual encoder on a :class:`RetrievalSet`: mono-, cross- and multilingual retrieval.

Queries and candidates are encoded once (in-process, or for large sets through the Ray Data actor
pool shared with ``index`` and ``mine``, :mod:`hybrid_ray.encode_ray`; ``encode=EncodeOptions(...)``,
``hybrid-ray eval --encode``); every setting is then an exact FAISS inner-product
search (:mod:`hybrid_ray.search`) over a subset of the same candidate vectors, scored by trec_eval
(:mod:`hybrid_ray.metrics`).

Memory: with ``cache_dir`` the embeddings are streamed to float32 ``.npy`` memmaps on disk
(``queries.npy``, ``candidates.npy``) and every search reads the candidates block by block
(:func:`hybrid_ray.search.exact_search`: one small ``IndexFlatIP`` per block, per-block top-k
merged exactly, ties included). Extra memory is O(block x dim + queries of one language x k),
not O(pool x dim): a 1M-candidate pool is evaluated without holding its matrix. For LAReQA data,
each query language is searched once per candidate language (the language-pair cells; only that
language's rows are read) and the multilingual top-k is the exact merge of those per-language
lists, so the pooled search costs no extra pass over the candidates.

LAReQA setting (XQuAD-R, MLQA-R, our parallel pairs), as in the paper:

* pair (X, Y): queries in language X against the candidates in language Y only; mAP, R@1, R@10.
  A query with no relevant candidate in Y (its pair is missing there) is left out of that pair.
* mono = macro over X == Y; cross = macro over X != Y (every pair counts equally);
* multilingual: queries against the pooled candidates of all languages (one relevant per
  language); mAP, R@1, R@10 averaged per query language, then macro over query languages;
* language bias (Huang et al. 2023) from the multilingual ranking: per query, for each language
  the best rank of its relevant candidates there, then max - min over languages; mean per query
  language, macro over languages. Ranks are exact over the whole pool: read off the multilingual
  top-k when every relevant candidate is inside it, else counted blockwise over all candidates,
  never cut at the search depth, because a badly ranked language is precisely what the metric
  must see.

MIRACL setting (monolingual per language): nDCG@10, Recall@100 and mAP per language and mean.

Which metrics each setting reports (and their labels) is the metric table,
:mod:`hybrid_ray.metric_registry`, read at every call: a metric registered there with
``settings={"lareqa": ..}`` is computed for every language pair and setting like mAP, one
``over="languages"`` is aggregated like language bias. The lists above are the built-in rows.

Search depth: LAReQA mAP depends on the whole candidate list. Each search uses
``k = pool size`` when the pool has at most ``max_k`` candidates (exact mAP), otherwise
``k = max_k``: relevant candidates ranked below ``max_k`` then contribute 0 to AP, which lowers
mAP by less than ``R / max_k`` per query. The default ``max_k="auto"`` ranks pools of up to
:data:`AUTO_FULL_POOL` (10,000) candidates fully and caps larger ones at :data:`DEFAULT_MAX_K`
(1000). The results record the depth used and whether any search was truncated; ``max_k=None``
is the exact full ranking for any pool size: its top-k state is O(queries of one language x pool)
and trec_eval's input can reach the same size, so it is meant for pools of up to some 10^4-10^5
candidates, not 1M.
Before trec_eval, each query's ranking is cut right after its last relevant candidate (but never
above the largest metric cut-off): nothing after that point changes AP, R@k or nDCG@k, and it
keeps trec_eval's input small (121 language pairs x 1,190 queries for XQuAD-R).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.domains import domain_breakdown
from hybrid_ray.encode import Encoder, encode_texts, encode_to_memmap_cached
from hybrid_ray.encode_ray import EncodeOptions, collect_rows, encode_rows, write_rows_memmap
from hybrid_ray.errors import ConfigError, DataError
from hybrid_ray.metric_registry import metrics_for, metrics_over
from hybrid_ray.metrics import evaluate_run, language_bias, macro, run_from_ranking
from hybrid_ray.runfiles import PER_QUERY_METRICS, PerQueryLog
from hybrid_ray.search import TopK, exact_search
from hybrid_ray.search import exact_ranks as _exact_ranks

DEFAULT_MAX_K = 1000
#: With ``max_k="auto"``, pools up to this size are ranked fully (exact mAP), larger ones to DEFAULT_MAX_K.
AUTO_FULL_POOL = 10_000
MaxK = int | str | None


def setting_metrics(setting: str) -> tuple[str, ...]:
    """Names of the ranking metrics the metric table lists for ``setting`` (lareqa / miracl), in order.

    Read at every evaluation, not at import, so a metric registered later (a plug-in, a test) is
    computed and reported like the built-in ones.
    """
    return tuple(m.name for m in metrics_for(setting))


def _max_cut(metrics: Sequence[str]) -> int:
    cuts = [int(m.rpartition("_")[2]) for m in metrics if m.rpartition("_")[2].isdigit()]
    return max(cuts, default=1)


def detect_setting(rs: RetrievalSet) -> str:
    """``miracl`` when no query has a relevant candidate in another language, else ``lareqa``."""
    if rs.name.lower().startswith("miracl"):
        return "miracl"
    q, c = rs.queries, rs.corpus
    qlang = dict(zip(q.column("qid").to_pylist(), q.column("lang").to_pylist(), strict=True))
    dlang = dict(zip(c.column("docid").to_pylist(), c.column("lang").to_pylist(), strict=True))
    for qid, rel in rs.qrels.items():
        if qid in qlang and any(dlang.get(d, qlang[qid]) != qlang[qid] for d, r in rel.items() if r >= 1):
            return "lareqa"
    return "miracl"


def subsample_queries(rs: RetrievalSet, max_per_lang: int | None) -> RetrievalSet:
    """Keep the first ``max_per_lang`` queries of each language (candidates stay complete).

    The first N in file order keeps parallel sets parallel (the same pair/question ids in every
    language), so the cross-lingual settings still compare like with like.
    """
    if not max_per_lang:
        return rs
    langs = rs.queries.column("lang").to_pylist()
    seen: dict[str, int] = {}
    keep = []
    for i, lang in enumerate(langs):
        if seen.get(lang, 0) < max_per_lang:
            keep.append(i)
            seen[lang] = seen.get(lang, 0) + 1
    queries = rs.queries.take(pa.array(keep, pa.int64()))
    qids = set(queries.column("qid").to_pylist())
    return RetrievalSet(rs.name, queries, rs.corpus, {q: r for q, r in rs.qrels.items() if q in qids}, rs.domains)


class _Encoded:
    """Query / candidate vectors plus the id and language lookups every setting needs."""

    def __init__(self, rs: RetrievalSet, q_emb: np.ndarray, c_emb: np.ndarray) -> None:
        self.qids = np.asarray(rs.queries.column("qid").to_pylist(), dtype=object)
        self.q_lang = np.asarray(rs.queries.column("lang").to_pylist(), dtype=object)
        self.docids = np.asarray(rs.corpus.column("docid").to_pylist(), dtype=object)
        self.c_lang = np.asarray(rs.corpus.column("lang").to_pylist(), dtype=object)
        self.q_emb = q_emb
        self.c_emb = c_emb
        self.c_langs = sorted(set(self.c_lang.tolist()))
        self.row_of_doc = {d: i for i, d in enumerate(self.docids.tolist())}
        if len(self.row_of_doc) != len(self.docids):
            raise DataError("duplicate docid in the candidate corpus", field="docid")
        # Relevant candidate rows per query row (relevance >= 1), for language bias and trimming.
        self.rel_rows: list[np.ndarray] = []
        for qid in self.qids.tolist():
            rel = rs.qrels.get(qid, {})
            rows = [self.row_of_doc[d] for d, r in rel.items() if r >= 1 and d in self.row_of_doc]
            self.rel_rows.append(np.asarray(sorted(rows), dtype=np.int64))


def _encode_one(
    encoder: Encoder, texts: pa.ChunkedArray, kind: str, name: str, batch_size: int,
    cache_dir: Path | None, progress: bool, cache_key: str | None, opts: EncodeOptions,
) -> tuple[np.ndarray, str]:
    """One text set's embeddings and the backend that made them (``local`` or ``ray``).

    ``local`` is the in-process path with the caller's ``encoder``; ``ray`` is the Ray Data actor
    pool :mod:`hybrid_ray.encode_ray` shared with ``index`` and ``mine`` (actors load
    ``opts.model_dir``). Both fill the same memmap (and cache key) under ``cache_dir``.
    """
    backend = opts.backend(len(texts))
    desc = f"encode {name}"

    def ray_stream() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return encode_rows("ray", opts.model_dir, texts, [(0, len(texts))], batch_size=batch_size,
                           concurrency=opts.concurrency, num_gpus=opts.num_gpus, progress=progress, kind=kind,
                           backend=opts.encoder_backend)

    if cache_dir is None:
        if backend == "local":
            return encode_texts(encoder, texts, kind, batch_size, progress=progress, desc=desc), backend
        return collect_rows(ray_stream(), len(texts)), backend
    write = None if backend == "local" else (lambda path: write_rows_memmap(ray_stream(), len(texts), path))
    arr = encode_to_memmap_cached(encoder, texts, kind, cache_dir / f"{name}.npy", batch_size, key=cache_key,
                                  progress=progress, write=write)
    return arr, backend


def _encode(
    encoder: Encoder,
    rs: RetrievalSet,
    batch_size: int,
    cache_dir: str | Path | None,
    progress: bool,
    cache_key: str | None = None,
    opts: EncodeOptions | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Query and candidate embeddings (in memory, or streamed to memmaps under ``cache_dir``) and
    the backend each set went through: small sets in-process, large ones on Ray under ``auto``."""
    opts = opts or EncodeOptions()
    cache = None if cache_dir is None else Path(cache_dir)
    q_emb, q_b = _encode_one(encoder, rs.queries.column("text"), "query", "queries", batch_size, cache, progress,
                             cache_key, opts)
    c_emb, c_b = _encode_one(encoder, rs.corpus.column("text"), "passage", "candidates", batch_size, cache,
                             progress, cache_key, opts)
    return q_emb, c_emb, {"queries": q_b, "candidates": c_b}


def _check_max_k(max_k: MaxK) -> None:
    if max_k is None or max_k == "auto":
        return
    if isinstance(max_k, str) or isinstance(max_k, bool) or int(max_k) < 1:
        raise ConfigError("must be >= 1, 'auto' or None (full ranking)", key="max_k", value=max_k)


def _depth(pool: int, max_k: MaxK) -> int:
    if max_k == "auto":
        return pool if pool <= AUTO_FULL_POOL else min(pool, DEFAULT_MAX_K)
    return pool if max_k is None or pool <= int(max_k) else int(max_k)


def _score_ranking(
    enc: _Encoded,
    q_rows: np.ndarray,
    glob: np.ndarray,
    qrels: dict[str, dict[str, int]],
    metrics: Sequence[str],
    lang: str | None = None,
    log: tuple[PerQueryLog, str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """trec_eval over the ranking ``glob`` ([nq, k] candidate rows, best first) of ``q_rows``.

    ``lang``: the candidates were restricted to that language, and so are the judgements (in
    pair (X, Y) only the answer in Y counts); None = the whole pool.
    ``log``: ``(per-query log, setting, scores [nq, k])``: also record every query there, with
    AP / RR / nDCG@10 besides ``metrics`` (the returned means stay those of ``metrics``).
    """
    if len(q_rows) == 0:
        return evaluate_run({}, {}, metrics)
    scored = tuple(metrics) if log is None else tuple(dict.fromkeys((*metrics, *PER_QUERY_METRICS)))
    k = glob.shape[1]
    n = len(enc.docids)
    # Relevant mask, vectorised: key = query position * N + candidate row.
    rel_keys = np.concatenate(
        [np.zeros(0, np.int64)] + [i * n + enc.rel_rows[q] for i, q in enumerate(q_rows.tolist())]
    )
    is_rel = np.isin(np.arange(len(q_rows), dtype=np.int64)[:, None] * n + glob, rel_keys)
    last = np.where(is_rel.any(1), k - np.argmax(is_rel[:, ::-1], axis=1), 0)
    depth = np.minimum(np.maximum(last, _max_cut(scored)), k)
    ranking = {
        enc.qids[q]: enc.docids[glob[i, : depth[i]]].tolist() for i, q in enumerate(q_rows.tolist())
    }
    row_of, c_lang = enc.row_of_doc, enc.c_lang
    sub_qrels = {
        enc.qids[q]: {
            d: r for d, r in qrels.get(enc.qids[q], {}).items()
            if d in row_of and (lang is None or c_lang[row_of[d]] == lang)
        }
        for q in q_rows.tolist()
    }
    res = evaluate_run(sub_qrels, run_from_ranking(ranking), scored)
    if log is not None:
        per_query_log, setting, scores = log
        qids = enc.qids[q_rows].tolist()
        per_query_log.add(setting, lang or "all", qids, enc.q_lang[q_rows].tolist(), res["per_query"], glob,
                          scores, is_rel, enc.docids, sub_qrels, min_depth=_max_cut(metrics))
        res["mean"] = {m: res["mean"][m] for m in metrics}
    return res


def _score_subset(
    enc: _Encoded,
    q_rows: np.ndarray,
    c_rows: np.ndarray,
    qrels: dict[str, dict[str, int]],
    metrics: Sequence[str],
    max_k: MaxK,
    use_gpu: bool,
    lang: str | None = None,
    block_size: int | None = None,
    log: PerQueryLog | None = None,
) -> tuple[dict[str, Any], int]:
    """Search ``q_rows`` against the candidates ``c_rows`` (ascending) and score with trec_eval."""
    k = _depth(len(c_rows), max_k)
    if len(q_rows) == 0 or len(c_rows) == 0:
        return evaluate_run({}, {}, metrics), k
    q = np.ascontiguousarray(enc.q_emb[q_rows], dtype=np.float32)
    rows = None if len(c_rows) == len(enc.docids) else c_rows
    scores, glob = exact_search(q, enc.c_emb, k, rows=rows, block_size=block_size, use_gpu=use_gpu)
    logged = None if log is None else (log, "miracl", scores)
    return _score_ranking(enc, q_rows, glob, qrels, metrics, lang, logged), k


def exact_ranks(enc: _Encoded, q_rows: np.ndarray) -> list[np.ndarray]:
    """1-based rank of every relevant candidate of each query in the whole pool, exactly.

    Same order as :func:`hybrid_ray.search.search`: score descending, then lower row first;
    blockwise over the candidates (:func:`hybrid_ray.search.exact_ranks`).
    """
    q_rows = np.asarray(q_rows, dtype=np.int64)
    q = np.ascontiguousarray(enc.q_emb[q_rows], dtype=np.float32)
    return _exact_ranks(q, enc.c_emb, [enc.rel_rows[r] for r in q_rows.tolist()])


def _bias_ranks(enc: _Encoded, q_rows: np.ndarray, glob: np.ndarray) -> list[np.ndarray]:
    """Exact pool ranks of each query's relevant candidates, from its multilingual top-k when
    they all sit inside it (rank = position + 1), else counted over the whole pool."""
    out: list[np.ndarray | None] = []
    missing: list[int] = []
    for i, q in enumerate(q_rows.tolist()):
        rel = enc.rel_rows[q]
        pos = np.flatnonzero(np.isin(glob[i], rel))
        if len(pos) == len(rel):
            out.append(pos[np.argsort(glob[i, pos])] + 1)  # ordered like rel (ascending rows)
        else:
            out.append(None)
            missing.append(i)
    if missing:
        for i, r in zip(missing, exact_ranks(enc, q_rows[missing]), strict=True):
            out[i] = r
    return out  # type: ignore[return-value]


def _lareqa(
    enc: _Encoded, rs: RetrievalSet, max_k: MaxK, use_gpu: bool, block_size: int | None = None,
    log: PerQueryLog | None = None,
) -> dict[str, Any]:
    q_langs = sorted(set(enc.q_lang.tolist()))
    c_langs = enc.c_langs
    q_by_lang = {x: np.flatnonzero(enc.q_lang == x) for x in q_langs}
    c_by_lang = [np.flatnonzero(enc.c_lang == y) for y in c_langs]
    pool_y = [len(rows) for rows in c_by_lang]
    n_pool = len(enc.docids)
    k_pair = [_depth(p, max_k) for p in pool_y]
    k_multi = _depth(n_pool, max_k)
    # The multilingual top-k is the merge of the per-language lists: each must hold at least the
    # part of the pooled top-k that falls in its language.
    k_search = [max(kp, min(p, k_multi)) for kp, p in zip(k_pair, pool_y, strict=True)]
    metrics = setting_metrics("lareqa")
    pairs: dict[str, dict[str, dict[str, float]]] = {}
    multi_lang: dict[str, dict[str, float]] = {}
    ranks: dict[str, np.ndarray] = {}
    depths = sorted(set(k_pair) | {k_multi})
    truncated = k_multi < n_pool or any(k < p for k, p in zip(k_pair, pool_y, strict=True))
    for x in q_langs:
        q_rows = q_by_lang[x]
        q = np.ascontiguousarray(enc.q_emb[q_rows], dtype=np.float32)
        pairs[x] = {}
        merged = TopK(len(q_rows), k_multi)
        for j, y in enumerate(c_langs):
            rows = None if len(c_by_lang[j]) == n_pool else c_by_lang[j]
            scores, glob = exact_search(q, enc.c_emb, k_search[j], rows=rows, block_size=block_size,
                                        use_gpu=use_gpu)
            merged.push(scores, glob)
            logged = None if log is None else (log, "mono" if x == y else "cross", scores[:, : k_pair[j]])
            res = _score_ranking(enc, q_rows, glob[:, : k_pair[j]], rs.qrels, metrics, lang=y, log=logged)
            pairs[x][y] = {**res["mean"], "n_queries": res["n_queries"]}
        m_scores, glob = merged.result()
        logged = None if log is None else (log, "multi", m_scores)
        res = _score_ranking(enc, q_rows, glob, rs.qrels, metrics, log=logged)
        multi_lang[x] = {**res["mean"], "n_queries": res["n_queries"]}
        for q, r in zip(q_rows.tolist(), _bias_ranks(enc, q_rows, glob), strict=True):
            rel = enc.rel_rows[q]
            if len(rel) == 0:
                continue
            # Best rank per candidate language: bias compares languages, not duplicate answers.
            langs = enc.c_lang[rel]
            ranks[enc.qids[q]] = np.asarray([r[langs == lang].min() for lang in sorted(set(langs.tolist()))])

    def setting(cells: list[dict[str, float]]) -> dict[str, float]:
        cells = [c for c in cells if c["n_queries"] > 0]
        return {m: macro(c[m] for c in cells) for m in metrics} | {"n_settings": len(cells)}

    mono = setting([pairs[x][x] for x in q_langs if x in pairs[x]])
    cross = setting([pairs[x][y] for x in q_langs for y in c_langs if x != y])
    multi = setting(list(multi_lang.values())) | {"per_lang": multi_lang}
    # Language-level metrics (language bias) from the exact pool ranks, one result entry each.
    q_lang = dict(zip(enc.qids.tolist(), enc.q_lang.tolist(), strict=True))
    by_lang: dict[str, dict[str, Any]] = {}
    for metric in metrics_over("languages"):
        by_lang[metric.name] = language_bias(ranks, q_lang, spread=metric.per_query)
        per_query = by_lang[metric.name].pop("per_query")
        if log is not None:
            log.set_metric("multi", metric.name, per_query)
    return {
        "pairs": pairs,
        "settings": {"mono": mono, "cross": cross, "multilingual": multi},
        **by_lang,
        "depths": depths,
        "truncated": truncated,
    }


def _miracl(
    enc: _Encoded, rs: RetrievalSet, max_k: MaxK, use_gpu: bool, block_size: int | None = None,
    log: PerQueryLog | None = None,
) -> dict[str, Any]:
    metrics = setting_metrics("miracl")
    per_lang: dict[str, dict[str, float]] = {}
    depths, truncated = [], False
    cut = _max_cut(metrics)
    cap = max_k if max_k is None or max_k == "auto" else max(int(max_k), cut)
    for x in sorted(set(enc.q_lang.tolist())):
        c_rows = np.flatnonzero(enc.c_lang == x)
        q_rows = np.flatnonzero(enc.q_lang == x)
        res, k = _score_subset(enc, q_rows, c_rows, rs.qrels, metrics, cap, use_gpu, lang=x,
                               block_size=block_size, log=log)
        depths.append(k)
        truncated |= k < len(c_rows)
        per_lang[x] = {**res["mean"], "n_queries": res["n_queries"]}
    cells = [c for c in per_lang.values() if c["n_queries"] > 0]
    mean = {m: macro(c[m] for c in cells) for m in metrics}
    return {"per_lang": per_lang, "mean": mean, "depths": sorted(set(depths)), "truncated": truncated}


def evaluate_retrieval(
    encoder: Encoder,
    rs: RetrievalSet,
    *,
    setting: str = "auto",
    batch_size: int = 64,
    max_k: MaxK = "auto",
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
    block_size: int | None = None,
    use_gpu: bool = True,
    progress: bool = False,
    per_query: PerQueryLog | None = None,
    encode: EncodeOptions | None = None,
) -> dict[str, Any]:
    """Encode ``rs`` once with ``encoder`` and compute every metric of ``setting``.

    ``setting``: ``lareqa`` (pairs matrix, mono / cross / multilingual, language bias),
    ``miracl`` (per-language nDCG@10, R@100, mAP) or ``auto`` (:func:`detect_setting`).
    ``max_k``: search depth (see the module docstring): ``"auto"``, an int >= 1, or None (full).
    ``cache_dir`` streams query and candidate embeddings to ``queries.npy`` / ``candidates.npy``
    memmaps there (large pools); with ``cache_key`` (a fingerprint of the encoder) a later run
    with the same key and texts reuses them instead of encoding again. ``block_size``:
    candidate rows per search block (default: 64 MiB of vectors).
    ``per_query``: a :class:`hybrid_ray.runfiles.PerQueryLog` that receives every scored query
    (metrics, relevant ranks, ranked list) for ``per_query.parquet`` and the TREC run files.
    ``encode``: :class:`hybrid_ray.encode_ray.EncodeOptions` (default: in-process with ``encoder``);
    with ``mode="ray"`` / ``"auto"`` large text sets go through the Ray Data actor pool of
    ``hybrid-ray index``; the search below is the same either way.
    Returns a JSON-able dict; :func:`hybrid_ray.eval_table.format_table` renders it.
    """
    if setting == "auto":
        setting = detect_setting(rs)
    if setting not in ("lareqa", "miracl"):
        raise ConfigError("must be auto, lareqa or miracl", key="setting", value=setting)
    _check_max_k(max_k)
    if rs.queries.num_rows == 0 or rs.corpus.num_rows == 0:
        raise DataError(f"retrieval set {rs.name!r} has no queries or no candidates")
    if per_query is not None and rs.domains:
        per_query.domains = dict(rs.domains)
    t0 = time.perf_counter()
    q_emb, c_emb, backends = _encode(encoder, rs, batch_size, cache_dir, progress, cache_key, encode)
    t_enc = time.perf_counter() - t0
    enc = _Encoded(rs, q_emb, c_emb)
    run = _lareqa if setting == "lareqa" else _miracl
    body = run(enc, rs, max_k, use_gpu, block_size, per_query)
    return {
        "name": rs.name,
        "setting": setting,
        "n_queries": rs.queries.num_rows,
        "n_candidates": rs.corpus.num_rows,
        "query_langs": sorted(set(enc.q_lang.tolist())),
        "candidate_langs": enc.c_langs,
        "dim": int(q_emb.shape[1]),
        "search": {"index": "Flat (exact inner product)", "max_k": max_k, "depths": body.pop("depths"),
                   "truncated": body.pop("truncated"),
                   "embeddings": "memmap" if cache_dir is not None else "memory"},
        "encoding": {"mode": (encode or EncodeOptions()).mode, **backends},
        **body,
        **({"per_domain": domain_breakdown(per_query.table())} if per_query is not None and rs.domains else {}),
        "timing_s": {"encode": round(t_enc, 3), "total": round(time.perf_counter() - t0, 3)},
    }
