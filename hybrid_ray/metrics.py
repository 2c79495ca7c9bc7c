"""Ranking metrics through trec_eval (``pytrec_eval``) plus the language-bias metric.

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

DEFAULT_METRICS: tuple[str, ...] = ("map", "recall_1", "recall_10", "recall_100", "ndcg_cut_10")

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def _measure_family(metric: str) -> str:
    """``recall_10`` -> ``recall``: pytrec_eval is configured by families, reports per cut-off."""
    family, _, cut = metric.rpartition("_")
    if family and cut.isdigit():
        return family
    return metric


def _check_metrics(metrics: Sequence[str]) -> None:
    supported = pytrec_eval.supported_measures
    for m in metrics:
        if _measure_family(m) not in supported:
            raise ConfigError(
                f"unknown metric (trec_eval measures: {', '.join(sorted(supported))}; "
                "add '_k' for a cut-off, e.g. recall_10)",
                key="metrics", value=m,
            )


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
    _check_metrics(metrics)
    judged = {
        qid: {d: int(r) for d, r in rel.items()}
        for qid, rel in qrels.items()
        if any(int(r) >= 1 for r in rel.values())
    }
    skipped = sorted(q for q in qrels if q not in judged)
    per_query: dict[str, dict[str, float]] = {}
    if judged:
        evaluator = pytrec_eval.RelevanceEvaluator(judged, set(metrics))  # "recall_1" = family + cut
        # Only pass judged queries: trec_eval would ignore the others anyway.
        sub_run = {q: {d: float(s) for d, s in run[q].items()} for q in judged if q in run and run[q]}
        raw = evaluator.evaluate(sub_run) if sub_run else {}
        for qid in judged:
            values = raw.get(qid)
            per_query[qid] = {m: float(values[m]) if values else 0.0 for m in metrics}
    mean = {m: (float(np.mean([v[m] for v in per_query.values()])) if per_query else 0.0) for m in metrics}
    return {"per_query": per_query, "mean": mean, "n_queries": len(per_query), "skipped": skipped}


def language_bias(
    ranks: Mapping[str, Sequence[int] | np.ndarray],
    query_lang: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """Language bias (Huang et al. 2023): how far apart a query's parallel answers are ranked.

    ``ranks[qid]`` holds the 1-based ranks, in the pooled multilingual candidate list, of the
    query's relevant candidates (one per language in LAReQA). Per query the bias is
    ``max(rank) - min(rank)``: 0 means the retriever ranks the answer in every language equally,
    regardless of language. Queries with fewer than two relevant candidates carry no information
    and are skipped. The result is the mean over queries within each query language and the
    macro average over languages (lower is better); without ``query_lang`` all queries form one
    group.
    """
    per_lang: dict[str, list[float]] = defaultdict(list)
    per_query: dict[str, float] = {}
    for qid, r in ranks.items():
        r = np.asarray(r)
        if r.size < 2:
            continue
        bias = float(r.max() - r.min())
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
