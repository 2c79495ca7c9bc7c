"""Markdown report of one evaluation (``hybrid-ray eval``'s ``table.md``) and its language matrix.

Kept apart from :mod:`hybrid_ray.evaluate` (which computes results) so the report format can change,
or another one be added, without touching the metric computation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hybrid_ray.domains import format_domain_table
from hybrid_ray.evaluate import DEFAULT_MAX_K
from hybrid_ray.metric_registry import get_metric, metrics_over


def map_matrix(results: dict[str, Any], metric: str = "map") -> tuple[np.ndarray, list[str], list[str]]:
    """Query-language x candidate-language matrix of ``metric`` (NaN where a pair had no query)."""
    qls, cls_ = results["query_langs"], results["candidate_langs"]
    mat = np.full((len(qls), len(cls_)), np.nan)
    for i, x in enumerate(qls):
        for j, y in enumerate(cls_):
            cell = results["pairs"].get(x, {}).get(y)
            if cell and cell["n_queries"] > 0:
                mat[i, j] = cell[metric]
    return mat, qls, cls_


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def format_table(results: dict[str, Any]) -> str:
    """A Markdown report: settings summary, language bias and the pair matrix (or MIRACL table)."""
    lines = [f"## {results['name']} ({results['setting']}): {results['n_queries']} queries, "
             f"{results['n_candidates']} candidates", ""]
    s = results["search"]
    cap = s["max_k"] if isinstance(s["max_k"], int) else DEFAULT_MAX_K
    depth = "full ranking" if not s["truncated"] else f"top-{cap} (truncated)"
    if results["setting"] == "miracl":
        ms = list(results["mean"])  # the metrics this evaluation computed, in column order
        lines += ["| lang | " + " | ".join(get_metric(m).label for m in ms) + " | queries |",
                  "|---|" + "---:|" * (len(ms) + 1)]
        for lang, cell in results["per_lang"].items():
            lines.append(f"| {lang} | " + " | ".join(_fmt(cell[m]) for m in ms) + f" | {cell['n_queries']} |")
        lines.append("| **mean** | " + " | ".join(_fmt(results["mean"][m]) for m in ms) + " | |")
        lines += ["", f"Search: exact inner product, {depth}."]
        return "\n".join(lines) + "\n"
    ms = [m for m in results["settings"]["mono"] if m != "n_settings"]
    lines += ["| setting | " + " | ".join(get_metric(m).label for m in ms) + " | settings |",
              "|---|" + "---:|" * (len(ms) + 1)]
    for name, cell in results["settings"].items():
        n = cell["n_settings"] if name != "multilingual" else f"{cell['n_settings']} query langs"
        lines.append(f"| {name} | " + " | ".join(_fmt(cell[m]) for m in ms) + f" | {n} |")
    lines.append("")
    for metric in metrics_over("languages"):
        bias = results.get(metric.name)
        if bias is None:
            continue
        direction = "higher" if metric.higher_is_better else "lower"
        lines += [f"{metric.label} ({metric.description}, {direction} is better): "
                  f"**{_fmt(bias['macro']).rstrip('0').rstrip('.') if bias['n_queries'] else '-'}** "
                  f"macro over {len(bias['per_lang'])} query languages, {bias['n_queries']} queries"]
    lines.append("")
    mat, qls, cls_ = map_matrix(results)
    lines += ["mAP, query language (rows) x candidate language (columns):", "",
              "| q \\ c | " + " | ".join(cls_) + " |", "|---|" + "---:|" * len(cls_)]
    for i, x in enumerate(qls):
        lines.append(f"| {x} | " + " | ".join(_fmt(v) for v in mat[i]) + " |")
    lines += ["", *format_domain_table(results.get("per_domain") or {})]
    lines += [f"Search: exact inner product, {depth}."]
    return "\n".join(lines) + "\n"
