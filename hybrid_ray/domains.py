"""Per-domain (genre) breakdown of per-query results: the same macro means as the main table.

Why a macro over language cells and not a plain mean over queries: the headline mono / cross
numbers weight every language pair equally (the paper's LAReQA protocol), so a domain's numbers
must too, or a domain row would not be comparable with the overall row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

_SETTING_NAMES = {"mono": "mono", "cross": "cross", "multi": "multilingual", "miracl": "miracl"}


def domain_breakdown(per_query: pa.Table, metric: str = "map") -> dict[str, dict[str, Any]]:
    """``{domain: {setting: macro mean of metric, "n_queries": distinct queries}}`` from a
    ``per_query.parquet`` table with a ``domain`` column ({} without one).

    A setting's value is the mean over its (query language, candidate language) cells of the
    cell's mean ``metric``, as in :func:`hybrid_ray.evaluate.evaluate_retrieval`.
    """
    if "domain" not in per_query.column_names or metric not in per_query.column_names or not per_query.num_rows:
        return {}
    cols = per_query.select(["setting", "q_lang", "c_lang", "qid", "domain", metric]).to_pydict()
    cells: dict[tuple[str, str, str, str], list[float]] = {}
    qids: dict[str, set[str]] = {}
    for setting, ql, cl, qid, dom, v in zip(*cols.values(), strict=True):
        if dom is None or v is None or np.isnan(v):
            continue
        cells.setdefault((dom, setting, ql, cl), []).append(v)
        qids.setdefault(dom, set()).add(qid)
    out: dict[str, dict[str, Any]] = {}
    for dom in sorted(qids):
        row: dict[str, Any] = {}
        for setting, label in _SETTING_NAMES.items():
            means = [float(np.mean(v)) for (d, s, _, _), v in cells.items() if d == dom and s == setting]
            if means:
                row[label] = float(np.mean(means))
        row["n_queries"] = len(qids[dom])
        out[dom] = row
    return out


def format_domain_table(per_domain: dict[str, dict[str, Any]], metric_label: str = "mAP") -> list[str]:
    """Markdown lines of a per-domain table ([] when there is nothing to show)."""
    if not per_domain:
        return []
    settings = [s for s in _SETTING_NAMES.values() if any(s in r for r in per_domain.values())]
    lines = [f"{metric_label} by domain:", "", "| domain | " + " | ".join(settings) + " | queries |",
             "|---|" + "---:|" * (len(settings) + 1)]
    for dom, row in per_domain.items():
        vals = " | ".join(f"{row[s]:.4f}" if s in row else "-" for s in settings)
        lines.append(f"| {dom} | {vals} | {row['n_queries']} |")
    return lines + [""]
