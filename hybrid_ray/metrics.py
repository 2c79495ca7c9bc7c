"""Ranking metrics through trec_eval (``pytrec_eval``), registered per-query metrics, language bias.

Which metrics exist, their labels and directions is the metric table
(:mod:`hybrid_ray.metric_registry`); this module computes them. :func:`evaluate_run` takes any
registered ranking metric (a trec_eval measure or a ``per_query`` callable over the ranks of the
relevant documents) and, as before, any raw trec_eval measure name.

Why pytrec_eval: it is the trec_eval C code behind Python bindings, so our MAP / Recall@k /
nDCG@10 are the numbers every IR paper reports, and the ``pytrec-eval-terrier`` wheel installs and
imports instantly. ``ranx`` gives the same values on the same runs (checked) but pulls numba and
spends ~50 s JIT-compiling on first use, which is too slow for tests and short CLI runs.

trec_eval semantics, and what we do about each one deliberately:

* **Queries missing from the run** are silently dropped by trec_eval (it averages only over the
  queries it saw). A retriever that returns nothing for a query must score 0 for it, so
  :func:`evaluate_run` adds such queries back with every metric = 0.
* **Queries with no relevant document** (absent from qrels, or judged only with relevance 0) have
  undefined recall / AP. trec_eval drops the first kind and scores the second 0. We *exclude both*
  from the means and report them in ``skipped`` so the choice is visible: a query with nothing
  to find says nothing about the retriever (MIRACL and LAReQA queries always have a relevant one).
* **Ties**: trec_eval re-sorts each query's run by score descending and breaks ties by docid
  *descending*, ignoring the order we produced. Our searcher already fixed a deterministic order
  (score desc, then lower index first), so :func:`run_from_ranking` turns that order into strictly
  decreasing scores (``n - rank``); trec_eval then evaluates exactly our ranking.
* **R@k** is trec_eval's ``recall_k`` (relevant retrieved in the top k / all relevant), **mAP**
  is ``map`` (AP over the retrieved list, so a truncated run under-counts relevant documents
  beyond the cut-off: see :mod:`hybrid_ray.evaluate` for how the depth is chosen).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pytrec_eval

from hybrid_ray.errors import ConfigError
from hybrid_ray.metric_registry import PerQuery, find_metric, metrics_over, rank_spread

#: The trec_eval metrics of the table, in table order (the default of :func:`evaluate_run`).
DEFAULT_METRICS: tuple[str, ...] = tuple(m.name for m in metrics_over("ranking") if m.trec_measure)

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def _measure_family(metric: str) -> str:
    """``recall_10`` -> ``recall``: pytrec_eval is configured by families, reports per cut-off."""
    family, _, cut = metric.rpartition("_")
    if family and cut.isdigit():
        return family
    return metric


def _resolve_metrics(metrics: Sequence[str]) -> tuple[dict[str, str], dict[str, PerQuery]]:
    """Split ``metrics`` into ``{name: trec_eval measure}`` and ``{name: per-query callable}``.

    Registered ranking metrics come from the table; any other name must be a trec_eval measure
    (family plus optional ``_k`` cut-off), else a ConfigError lists both.
    """
    trec: dict[str, str] = {}
    custom: dict[str, PerQuery] = {}
    supported = pytrec_eval.supported_measures
    for m in metrics:
        metric = find_metric(m)
        if metric is not None and metric.over != "ranking":
            raise ConfigError(f"not a ranking metric (computed over {metric.over})", key="metrics", value=m)
        if metric is not None and metric.per_query is not None:
            custom[m] = metric.per_query
        elif metric is not None and metric.trec_measure is not None:
            trec[m] = metric.trec_measure
        elif _measure_family(m) in supported:
            trec[m] = m
        else:
            raise ConfigError(
                f"unknown metric (trec_eval measures: {', '.join(sorted(supported))}; "
                "add '_k' for a cut-off, e.g. recall_10; registered metrics: "
                f"{', '.join(mt.name for mt in metrics_over('ranking'))})",
                key="metrics", value=m,
            )
    return trec, custom


def _relevant_ranks(run_q: Mapping[str, float], relevant: set[str]) -> np.ndarray:
    """1-based ranks (ascending) of ``relevant`` in a run, in the order trec_eval evaluates it:
    score descending, ties by docid descending (a run from :func:`run_from_ranking` has no ties)."""
    order = sorted(run_q, reverse=True)  # docid descending ...
    order.sort(key=lambda d: -float(run_q[d]))  # ... then a stable sort by score descending
    return np.asarray([i + 1 for i, d in enumerate(order) if d in relevant], dtype=np.int64)


def run_from_ranking(ranking: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """Turn ``{qid: [docid best first, ...]}`` into a run whose scores trec_eval cannot reorder.

    Scores are ``n - position`` (strictly decreasing), so trec_eval's own tie-breaking by docid
    never applies and the evaluated ranking is exactly the one given.
    """
    run: dict[str, dict[str, float]] = {}
    for qid, docids in ranking.items():
        n = len(docids)
        scores: dict[str, float] = {}
        for pos, docid in enumerate(docids):
            scores.setdefault(docid, float(n - pos))  # a repeated docid keeps its best position
        run[qid] = scores
    return run


def evaluate_run(
    qrels: Qrels,
    run: Run,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, object]:
    """Evaluate ``run`` against ``qrels`` with trec_eval.

    Returns ``{"per_query": {qid: {metric: value}}, "mean": {metric: value}, "n_queries": int,
    "skipped": [qids without any relevant document]}``. The mean is over queries that have at
    least one relevant document (relevance >= 1); those missing from the run count as 0.
    """
    metrics = tuple(metrics)
    trec, custom = _resolve_metrics(metrics)
    judged = {
        qid: {d: int(r) for d, r in rel.items()}
        for qid, rel in qrels.items()
        if any(int(r) >= 1 for r in rel.values())
    }
    skipped = sorted(q for q in qrels if q not in judged)
    per_query: dict[str, dict[str, float]] = {}
    if judged:
        raw: dict[str, dict[str, float]] = {}
        # Only pass judged queries: trec_eval would ignore the others anyway.
        sub_run = {q: {d: float(s) for d, s in run[q].items()} for q in judged if q in run and run[q]}
        if trec and sub_run:
            evaluator = pytrec_eval.RelevanceEvaluator(judged, set(trec.values()))  # "recall_1" = family + cut
            raw = evaluator.evaluate(sub_run)
        for qid in judged:
            values = raw.get(qid)
            row = {m: float(values[trec[m]]) if values else 0.0 for m in trec}
            if custom:
                relevant = {d for d, r in judged[qid].items() if r >= 1}
                ranks = _relevant_ranks(sub_run[qid], relevant) if qid in sub_run else None
                for m, fn in custom.items():
                    row[m] = float(fn(ranks, len(relevant))) if ranks is not None else 0.0
            per_query[qid] = {m: row[m] for m in metrics}
    mean = {m: (float(np.mean([v[m] for v in per_query.values()])) if per_query else 0.0) for m in metrics}
    return {"per_query": per_query, "mean": mean, "n_queries": len(per_query), "skipped": skipped}


def language_bias(
    ranks: Mapping[str, Sequence[int] | np.ndarray],
    query_lang: Mapping[str, str] | None = None,
    spread: PerQuery = rank_spread,
) -> dict[str, object]:
    """Language bias (Huang et al. 2023): how far apart a query's parallel answers are ranked.

    ``ranks[qid]`` holds the 1-based ranks, in the pooled multilingual candidate list, of the
    query's relevant candidates (one per language in LAReQA). Per query the bias is
    ``max(rank) - min(rank)``: 0 means the retriever ranks the answer in every language equally,
    regardless of language. Queries with fewer than two relevant candidates carry no information
    and are skipped. The result is the mean over queries within each query language and the
    macro average over languages (lower is better); without ``query_lang`` all queries form one
    group. ``spread`` is the metric table's per-query callable (``rank_spread`` for language bias), so
    any ``over="languages"`` metric aggregates the same way.
    """
    per_lang: dict[str, list[float]] = defaultdict(list)
    per_query: dict[str, float] = {}
    for qid, r in ranks.items():
        r = np.asarray(r)
        if r.size < 2:
            continue
        bias = float(spread(r, r.size))
        per_query[qid] = bias
        lang = query_lang[qid] if query_lang is not None else "all"
        per_lang[lang].append(bias)
    lang_means = {lang: float(np.mean(v)) for lang, v in sorted(per_lang.items())}
    macro = float(np.mean(list(lang_means.values()))) if lang_means else float("nan")
    return {"per_query": per_query, "per_lang": lang_means, "macro": macro, "n_queries": len(per_query)}


def macro(values: Iterable[float]) -> float:
    """Unweighted mean (NaN for nothing): settings and languages count equally, as in the paper."""
    vals = [float(v) for v in values]
    return float(np.mean(vals)) if vals else float("nan")
