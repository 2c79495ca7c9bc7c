"""Duplicate-text distractors: does a retrieval pool hold a query's own text as a candidate?

A candidate whose text equals the query (or equals a translation of it) is a trivial match for
any encoder: it outranks the real answer and the metric measures copy detection, not retrieval.
The first Bible demo built its pairs from overlapping (verse v, verse v+1) windows, so verse v was
also the positive of pair v-1, and 72% of its test queries found their own text in their pool.

Definitions (used by ``hybrid-ray data stats`` and asserted by ``build-demo``):

* texts are compared after Unicode NFKC, case folding and whitespace collapsing;
* a query's *parallel versions* are the queries with exactly the same set of relevant documents:
  in a parallel set (``RetrievalSet.from_pairs``, LAReQA) those are its translations (all of
  them share one relevant passage per language), in MIRACL usually none;
* ``own_text``: fraction of queries whose own text is a candidate in their own language's pool
  (the monolingual setting);
* ``fraction``: fraction of queries whose own text or any parallel version's text is a candidate
  anywhere in the pooled corpus (the multilingual setting, which contains every other pool).
  This is the number that must be 0 for a fair evaluation set.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hybrid_ray.data.retrieval import RetrievalSet


def normalize_text(text: str) -> str:
    """The comparison form of a text: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _normalized(column: pa.ChunkedArray | pa.Array) -> list[str]:
    return [normalize_text(t) for t in column.to_pylist()]


def leakage_report(rs: RetrievalSet, *, max_examples: int = 3) -> dict[str, Any]:
    """Duplicate-distractor statistics of a retrieval set (see the module docstring).

    Returns ``{"queries", "fraction", "own_text", "per_lang": {lang: fraction}, "examples":
    [{"qid", "docid"}]}``; ``examples`` names the first leaking queries and one matching candidate.
    One pass of hashing over queries and candidates: cheap even for 10^6 candidates.
    """
    qids = rs.queries.column("qid").to_pylist()
    q_lang = rs.queries.column("lang").to_pylist()
    q_text = _normalized(rs.queries.column("text"))
    d_ids = rs.corpus.column("docid").to_pylist()
    d_lang = rs.corpus.column("lang").to_pylist()
    d_text = _normalized(rs.corpus.column("text"))
    where: dict[str, tuple[str, str]] = {}  # normalised text -> (first docid, its language)
    by_lang_text: set[tuple[str, str]] = set()
    for docid, lang, text in zip(d_ids, d_lang, d_text, strict=True):
        where.setdefault(text, (docid, lang))
        by_lang_text.add((lang, text))

    n = len(qids)
    in_pool = np.array([t in where for t in q_text], dtype=bool)
    own = np.array([(lang, t) in by_lang_text for lang, t in zip(q_lang, q_text, strict=True)], dtype=bool)
    # Parallel groups: queries sharing one non-empty relevant set.
    group_of: dict[frozenset[str], int] = {}
    group = np.empty(n, dtype=np.int64)
    for i, qid in enumerate(qids):
        rel = frozenset(d for d, r in rs.qrels.get(qid, {}).items() if r >= 1)
        group[i] = group_of.setdefault(rel, len(group_of)) if rel else -1 - i
    _, inverse = np.unique(group, return_inverse=True)
    group_leaks = np.zeros(int(inverse.max()) + 1 if n else 0, dtype=bool)
    np.logical_or.at(group_leaks, inverse, in_pool)
    leak = group_leaks[inverse] if n else in_pool

    per_lang: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for lang, bad in zip(q_lang, leak.tolist(), strict=True):
        per_lang[lang][0] += int(bad)
        per_lang[lang][1] += 1
    examples = []
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(inverse.tolist()):
        members[g].append(i)
    for i in np.nonzero(leak)[0][:max_examples].tolist():
        j = next(k for k in members[int(inverse[i])] if in_pool[k])
        examples.append({"qid": qids[i], "docid": where[q_text[j]][0], "via": qids[j]})
    return {
        "queries": n,
        "fraction": round(float(leak.mean()), 4) if n else 0.0,
        "own_text": round(float(own.mean()), 4) if n else 0.0,
        "per_lang": {lang: round(b / t, 4) for lang, (b, t) in sorted(per_lang.items())},
        "examples": examples,
    }


def duplicate_distractor_fraction(rs: RetrievalSet) -> float:
    """Fraction of queries whose own text or a parallel version's is a candidate of their pool."""
    return leakage_report(rs, max_examples=0)["fraction"]


def pairs_leakage(table: pa.Table) -> dict[str, Any]:
    """:func:`leakage_report` of the LAReQA-like set a pairs table evaluates as."""
    return leakage_report(RetrievalSet.from_pairs(table))


def leaking_pair_ids(table: pa.Table) -> set[str]:
    """Pair ids whose query, in any language, equals a positive of the table in any language.

    Dropping those pairs (in every language) leaves a pool without duplicate distractors:
    removing pairs only removes candidates, so no new leak can appear.
    """
    positives = set(_normalized(table.column("positive")))
    pids = table.column("pair_id").to_pylist()
    queries = _normalized(table.column("query"))
    bad = {p for p, q in zip(pids, queries, strict=True) if q in positives}
    return bad


def drop_pairs(table: pa.Table, pair_ids: set[str]) -> pa.Table:
    """``table`` without the rows of ``pair_ids``."""
    if not pair_ids:
        return table
    mask = pc.is_in(table.column("pair_id"), value_set=pa.array(sorted(pair_ids), pa.string()))
    return table.filter(pc.invert(mask))
