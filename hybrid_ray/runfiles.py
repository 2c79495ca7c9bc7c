"""Per-query results of an evaluation, and the standard files outside tools score.

Macro means alone cannot be checked or compared: :class:`PerQueryLog` records, for every
query scored in every setting, its metrics and the ranks of its relevant passages, plus the
ranked list it was scored on. :meth:`PerQueryLog.write` turns that into

* ``per_query.parquet``: one row per (setting, query language, candidate language, query):
  ``setting`` (``mono`` / ``cross`` / ``multi`` / ``miracl``), ``q_lang``, ``c_lang`` (the candidate
  language searched, ``"all"`` for the pooled multilingual setting), ``qid``, ``run_qid`` (its id
  in the run file), ``n_relevant``, one float column per metric (trec_eval names: ``map`` is the
  query's AP, ``recip_rank`` its RR, ``ndcg_cut_10`` its nDCG@10, plus the setting's own metrics and
  ``language_bias`` on ``multi`` rows; NaN where a setting does not compute one) and
  ``relevant_ranks`` (list<int32>: 1-based ranks of the relevant passages in the searched list;
  one beyond the search depth is absent, so ``len(relevant_ranks) < n_relevant`` says so). This is
  what ``hybrid-ray compare`` pairs queries on. A set with domains adds a ``domain`` column.
* ``runs/{setting}.trec``: the standard 6-column TREC run ``qid Q0 docid rank score tag``;
* ``qrels/{setting}.txt``: TREC qrels ``qid 0 docid relevance`` of exactly the judgements each
  query was scored against (in a language pair only the answers in the candidate language).

So trec_eval, ``pytrec_eval`` or ranx reproduce our numbers from our files alone
(``tests/test_runfiles.py`` does it with pytrec_eval). Three choices make that exact:

* **Ids.** A query appears once per run. In ``cross`` a query is searched against every other
  language, so its run id there is ``{qid}@{c_lang}``; elsewhere it is the qid itself.
* **Depth.** Each query's list holds its top ``run_depth`` candidates (default: the largest metric
  cut-off of the setting, 10 or 100), extended down to its last relevant candidate, and never
  beyond the search depth the evaluation used (``max_k``). AP, RR, R@k (k <= depth) and nDCG@10
  depend on nothing below that point, so trec_eval scores these lists exactly as we did; a run
  truncated at ``max_k`` is scored at that same depth, as ours was. A larger ``run_depth`` (or 0:
  the whole searched list) gives the plain top-N run. The extension stops at ``max_depth``
  (default 1000, the TREC convention): a weak model on a fully ranked pool would otherwise list
  thousands of candidates per query (the demo's off-the-shelf multilingual run: ~600 MB). Queries
  cut there are counted (``cut`` in :meth:`PerQueryLog.write`'s answer); trec_eval then scores
  them like a ``--max-k 1000`` evaluation. Evaluate with ``max_k <= max_depth`` for files that
  reproduce every number exactly.
* **Scores.** trec_eval re-sorts by score and breaks ties by docid, not by our order (score, then
  lower row), and it holds scores in single precision. The score column is the cosine with 6
  decimals, made strictly decreasing (a tie is written 1e-6 below the previous line; float32
  still tells such values apart for |score| < 8), so every tool reads back our ranking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hybrid_ray.errors import DataError
from hybrid_ray.io import atomic_path

PER_QUERY_FILE = "per_query.parquet"
RUNS_DIR = "runs"
QRELS_DIR = "qrels"
#: trec_eval measures recorded per query in every setting, besides the setting's own metrics.
PER_QUERY_METRICS: tuple[str, ...] = ("map", "recip_rank", "ndcg_cut_10")
SETTINGS: tuple[str, ...] = ("mono", "cross", "multi", "miracl")
_KEY_COLUMNS = ("setting", "q_lang", "c_lang", "qid", "run_qid", "n_relevant")
_SCALE = 10**6  # 6 decimals in the score column (trec_eval reads scores as float32)


@dataclass
class _Query:
    setting: str
    q_lang: str
    c_lang: str
    qid: str
    run_qid: str
    metrics: dict[str, float]
    relevant_ranks: list[int]
    n_relevant: int
    docids: list[str]
    scores: np.ndarray
    qrels: dict[str, int]


@dataclass
class PerQueryLog:
    """Collects per-query results while :func:`hybrid_ray.evaluate.evaluate_retrieval` runs.

    ``run_depth``: candidates per query in the run files (None: the setting's largest metric
    cut-off; 0: the whole searched list); ``max_depth``: the cap on the extension down to the last
    relevant candidate (None: no cap); see the module docstring.
    """

    run_depth: int | None = None
    max_depth: int | None = 1000
    queries: list[_Query] = field(default_factory=list)
    cut: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    extra: dict[tuple[str, str], dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    domains: dict[str, str] | None = None  # qid -> domain: adds a ``domain`` column to the table

    def depth(self, min_depth: int, k: int) -> int:
        """Listed candidates per query before extension to the last relevant one."""
        d = min_depth if self.run_depth is None else (k if self.run_depth == 0 else self.run_depth)
        return min(max(d, 1), k)

    def add(
        self,
        setting: str,
        c_lang: str,
        qids: Sequence[str],
        q_langs: Sequence[str],
        per_query: Mapping[str, Mapping[str, float]],
        ranked_rows: np.ndarray,
        scores: np.ndarray,
        is_rel: np.ndarray,
        docids: np.ndarray,
        qrels: Mapping[str, Mapping[str, int]],
        min_depth: int,
    ) -> None:
        """Record one search: ``ranked_rows`` / ``scores`` / ``is_rel`` are ``[n_queries, k]``, best first.

        Only queries present in ``per_query`` (those with a relevant candidate) are recorded.
        """
        k = ranked_rows.shape[1]
        base = self.depth(min_depth, k)
        for i, qid in enumerate(qids):
            if qid not in per_query:
                continue
            pos = np.flatnonzero(is_rel[i])
            n = max(base, int(pos[-1]) + 1 if len(pos) else 0)
            if self.max_depth and n > max(self.max_depth, base):
                n = max(self.max_depth, base)
                self.cut[setting] += 1
            judged = {d: int(r) for d, r in qrels.get(qid, {}).items()}
            self.queries.append(_Query(
                setting=setting, q_lang=q_langs[i], c_lang=c_lang, qid=qid,
                run_qid=f"{qid}@{c_lang}" if setting == "cross" else qid,
                metrics=dict(per_query[qid]), relevant_ranks=(pos + 1).tolist(),
                n_relevant=sum(r >= 1 for r in judged.values()),
                docids=docids[ranked_rows[i, :n]].tolist(), scores=np.asarray(scores[i, :n], np.float64),
                qrels=judged,
            ))

    def set_metric(self, setting: str, metric: str, values: Mapping[str, float]) -> None:
        """Attach a per-query value computed outside the ranking (language bias) to ``setting``'s rows."""
        for qid, v in values.items():
            self.extra[(setting, qid)][metric] = float(v)

    def table(self) -> pa.Table:
        """The ``per_query.parquet`` table (schema in the module docstring)."""
        metric_names: list[str] = []
        for q in self.queries:
            metric_names += [m for m in q.metrics if m not in metric_names]
        for values in self.extra.values():
            metric_names += [m for m in values if m not in metric_names]
        cols: dict[str, list] = {c: [] for c in (*_KEY_COLUMNS, *metric_names, "relevant_ranks")}
        for q in self.queries:
            extra = self.extra.get((q.setting, q.qid), {})
            for c in _KEY_COLUMNS:
                cols[c].append(getattr(q, c))
            for m in metric_names:
                cols[m].append(q.metrics.get(m, extra.get(m, float("nan"))))
            cols["relevant_ranks"].append(q.relevant_ranks)
        types = {"n_relevant": pa.int32(), "relevant_ranks": pa.list_(pa.int32())}
        types |= {m: pa.float64() for m in metric_names}
        if self.domains:
            cols["domain"] = [self.domains.get(q.qid) for q in self.queries]
        return pa.table({c: pa.array(v, types.get(c, pa.string())) for c, v in cols.items()})

    def write(self, out_dir: str | Path, tag: str = "hybrid-ray") -> dict[str, Any]:
        """Write ``per_query.parquet``, ``runs/{setting}.trec`` and ``qrels/{setting}.txt`` under ``out_dir``.

        Returns the files written and ``cut``: per setting, the queries whose list stopped at
        ``max_depth`` above their last relevant candidate (empty: the files reproduce every number).
        """
        out = Path(out_dir)
        _check_token(tag, "tag")
        with atomic_path(out / PER_QUERY_FILE) as tmp:
            pq.write_table(self.table(), tmp, compression="zstd")
        written: dict[str, Any] = {"per_query": [PER_QUERY_FILE], "runs": [], "qrels": [],
                                   "max_depth": self.max_depth, "cut": dict(self.cut)}
        for setting in SETTINGS:
            queries = [q for q in self.queries if q.setting == setting]
            if not queries:
                continue
            run_path, qrels_path = out / RUNS_DIR / f"{setting}.trec", out / QRELS_DIR / f"{setting}.txt"
            with atomic_path(run_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                for q in queries:
                    _check_token(q.run_qid, "qid")
                    for rank, (docid, score) in enumerate(zip(q.docids, _strict_scores(q.scores), strict=True), 1):
                        _check_token(docid, "docid")
                        f.write(f"{q.run_qid} Q0 {docid} {rank} {score} {tag}\n")
            with atomic_path(qrels_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                for q in queries:
                    f.writelines(f"{q.run_qid} 0 {d} {r}\n" for d, r in q.qrels.items())
            written["runs"].append(f"{RUNS_DIR}/{setting}.trec")
            written["qrels"].append(f"{QRELS_DIR}/{setting}.txt")
        return written


def _check_token(value: str, what: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise DataError("TREC files are whitespace-separated: an id may not be empty or contain spaces",
                        field=what, value=value)


def _strict_scores(scores: np.ndarray) -> list[str]:
    """Scores with 6 decimals, strictly decreasing (ties stepped down by 1e-6), as strings."""
    ints = np.rint(np.asarray(scores, np.float64) * _SCALE).astype(np.int64)
    if len(ints) > 1:
        # v_i = min(s_i, v_{i-1} - 1), vectorised: v_i + i = running minimum of s_j + j.
        idx = np.arange(len(ints), dtype=np.int64)
        ints = np.minimum.accumulate(ints + idx) - idx
    return [f"{'-' if v < 0 else ''}{abs(v) // _SCALE}.{abs(v) % _SCALE:06d}" for v in ints.tolist()]


def read_run(path: str | Path) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` from a 6-column TREC run; a malformed line names file and line."""
    run: dict[str, dict[str, float]] = defaultdict(dict)
    for lineno, parts in _lines(path, 6):
        try:
            run[parts[0]][parts[2]] = float(parts[4])
        except ValueError:
            raise DataError("score is not a number", path=path, line=lineno, value=parts[4]) from None
    return dict(run)


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``{qid: {docid: relevance}}`` from TREC qrels (``qid iter docid rel``)."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for lineno, parts in _lines(path, 4):
        try:
            qrels[parts[0]][parts[2]] = int(parts[3])
        except ValueError:
            raise DataError("relevance is not an integer", path=path, line=lineno, value=parts[3]) from None
    return dict(qrels)


def _lines(path: str | Path, n_fields: int):
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != n_fields:
                raise DataError(f"expected {n_fields} whitespace-separated fields, got {len(parts)}",
                                path=path, line=lineno)
            yield lineno, parts


def read_per_query(eval_dir: str | Path) -> pa.Table:
    """The ``per_query.parquet`` of an eval output directory (DataError naming it when absent)."""
    path = Path(eval_dir) / PER_QUERY_FILE
    if not path.is_file():
        raise DataError(f"no {PER_QUERY_FILE}: not a 'hybrid-ray eval' output directory (or one from before "
                        "per-query results; rerun eval)", path=eval_dir)
    return pq.read_table(path)
