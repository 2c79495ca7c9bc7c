"""Describe a data set on disk: sizes per split and language, parallelism, text lengths.

Works on every registered format that can be read (:mod:`hybrid_ray.data.formats`): a pairs
data-set directory or file, a MIRACL directory, a LAReQA directory, a saved :class:`RetrievalSet`
directory, and any format registered later; each split the format lists is described. Lengths are in
characters, not whitespace tokens, because Chinese and other scripts do not separate words with
spaces. ``format_stats`` renders with ``rich`` when it is installed, plain text otherwise.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hybrid_ray.data import formats
from hybrid_ray.data.leakage import duplicate_distractor_fraction, pairs_leakage
from hybrid_ray.data.pairs import read_meta
from hybrid_ray.data.parallel import ParallelPairs
from hybrid_ray.data.retrieval import RetrievalSet


def detect_format(path: str | Path) -> str:
    """The registered format of ``path`` that ``describe`` can read (DataError if none fits).

    A format that can only be converted (mMARCO) is an error telling the user to convert it first.
    """
    return formats.detect_format(path, "read").name


def _mean(values: pa.ChunkedArray | pa.Array) -> float:
    m = pc.mean(values).as_py()
    return round(float(m), 1) if m is not None else 0.0


def pairs_stats(table: pa.Table) -> dict[str, Any]:
    """Statistics of one validated pairs table."""
    pp = ParallelPairs.from_table(table)
    return {
        "rows": table.num_rows,
        "pairs": pp.n_pairs,
        "langs": pp.lang_counts,
        "fully_parallel": round(pp.fully_parallel_fraction, 4),
        "mean_query_chars": _mean(pc.utf8_length(table.column("query"))),
        "mean_passage_chars": _mean(pc.utf8_length(table.column("positive"))),
        "mean_negatives": round(float(_mean(pc.list_value_length(table.column("negatives"))) or 0.0), 2),
        "duplicate_distractors": pairs_leakage(table)["fraction"],
        **_domain_counts(pp),
    }


def _domain_counts(pp: ParallelPairs) -> dict[str, Any]:
    """``{"domains": {domain: pairs}}`` for data with a ``domain`` column, else nothing."""
    doms = pp.pair_domains()
    if doms is None:
        return {}
    names, of = doms
    counts = np.bincount(of, minlength=len(names))
    return {"domains": {n: int(c) for n, c in zip(names, counts, strict=True)}}


def retrieval_stats(rs: RetrievalSet) -> dict[str, Any]:
    """Statistics of one retrieval set (queries, candidates, judgements)."""
    q_counts = {v["values"].as_py(): v["counts"].as_py() for v in pc.value_counts(rs.queries.column("lang"))}
    d_counts = {v["values"].as_py(): v["counts"].as_py() for v in pc.value_counts(rs.corpus.column("lang"))}
    langs = sorted(set(q_counts) | set(d_counts))
    n_rel = [sum(1 for r in rel.values() if r > 0) for rel in rs.qrels.values()]
    return {
        "queries": rs.queries.num_rows,
        "docs": rs.corpus.num_rows,
        "langs": {lang: {"queries": q_counts.get(lang, 0), "docs": d_counts.get(lang, 0)} for lang in langs},
        "judgements": sum(len(rel) for rel in rs.qrels.values()),
        "mean_relevant": round(sum(n_rel) / len(n_rel), 2) if n_rel else 0.0,
        "mean_query_chars": _mean(pc.utf8_length(rs.queries.column("text"))),
        "mean_passage_chars": _mean(pc.utf8_length(rs.corpus.column("text"))),
        "duplicate_distractors": duplicate_distractor_fraction(rs),
        **({"domains": dict(sorted(Counter(rs.domains.values()).items()))} if rs.domains else {}),
    }


def describe(path: str | Path) -> dict[str, Any]:
    """Statistics of any data set path, as a JSON-serialisable dict.

    ``{"path", "format", "kind": "pairs"|"retrieval", "splits": {split: stats}, "meta"}``.
    """
    path = Path(path)
    fmt = formats.resolve_format(path, "auto", "read")
    # A format that reads as training pairs is described as pairs (row counts, parallelism).
    as_pairs = fmt.load_pairs is not None
    splits: dict[str, dict[str, Any]] = {}
    for label, split in fmt.stats_splits(path).items():
        if fmt.load_pairs is not None:
            splits[label] = pairs_stats(fmt.load_pairs(path, split, None))
        elif fmt.load_retrieval is not None:
            splits[label] = retrieval_stats(fmt.load_retrieval(path, split, None))
    out: dict[str, Any] = {
        "path": str(path),
        "format": fmt.name,
        "kind": "pairs" if as_pairs else "retrieval",
        "splits": splits,
    }
    if path.is_dir():
        meta = read_meta(path)
        if meta:
            out["meta"] = meta
    return out


def _render(title: str, headers: list[str], rows: list[list[str]]) -> str:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return _render_plain(title, headers, rows)
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None, force_terminal=False).print(table)
    return buf.getvalue().rstrip("\n")


def _render_plain(title: str, headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), sep, *(line(r) for r in rows)])


PAIRS_HEADERS = ["split", "rows", "pairs", "langs", "parallel", "query chars", "passage chars", "negatives"]
RETRIEVAL_HEADERS = ["split", "queries", "docs", "langs", "judgements", "rel/q", "query chars", "doc chars"]


def _pairs_row(name: str, s: dict[str, Any]) -> list[str]:
    return [
        name, f"{s['rows']:,}", f"{s['pairs']:,}", str(len(s["langs"])), f"{s['fully_parallel']:.1%}",
        f"{s['mean_query_chars']:.1f}", f"{s['mean_passage_chars']:.1f}", f"{s['mean_negatives']:.2f}",
    ]


def _retrieval_row(name: str, s: dict[str, Any]) -> list[str]:
    return [
        name, f"{s['queries']:,}", f"{s['docs']:,}", str(len(s["langs"])), f"{s['judgements']:,}",
        f"{s['mean_relevant']:.2f}", f"{s['mean_query_chars']:.1f}", f"{s['mean_passage_chars']:.1f}",
    ]


def _lang_cell(kind: str, split: dict[str, Any], lang: str) -> str:
    value = split["langs"].get(lang)
    if kind == "pairs":
        return f"{value or 0:,}"
    value = value or {"queries": 0, "docs": 0}
    return f"{value['queries']:,} / {value['docs']:,}"


def format_stats(stats: dict[str, Any]) -> str:
    """A readable summary table plus a per-language table (splits as columns)."""
    splits = stats["splits"]
    names = list(splits)
    langs = sorted({lang for s in splits.values() for lang in s["langs"]})
    pairs = stats["kind"] == "pairs"
    summary = _render(
        f"{stats['path']}  ({stats['format']})",
        PAIRS_HEADERS if pairs else RETRIEVAL_HEADERS,
        [(_pairs_row if pairs else _retrieval_row)(n, s) for n, s in splits.items()],
    )
    per_lang = _render(
        "rows by language" if pairs else "queries / docs",
        ["lang", *names],
        [[lang, *(_lang_cell(stats["kind"], splits[n], lang) for n in names)] for lang in langs],
    )
    leaks = ", ".join(f"{n} {s['duplicate_distractors']:.1%}" for n, s in splits.items()
                      if "duplicate_distractors" in s)
    leak_line = f"\nqueries with a duplicate-text distractor in their pool: {leaks}" if leaks else ""
    domains = sorted({d for s in splits.values() for d in s.get("domains", {})})
    per_domain = "" if not domains else "\n\n" + _render(
        "pairs by domain" if pairs else "queries by domain", ["domain", *names],
        [[d, *(f"{splits[n].get('domains', {}).get(d, 0):,}" for n in names)] for d in domains],
    )
    return summary + leak_line + "\n\n" + per_lang + per_domain
