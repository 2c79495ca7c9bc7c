"""Is model B better than model A beyond noise? Paired tests over the queries of two evaluations.

Inputs are ``hybrid-ray eval`` output directories (their ``per_query.parquet``, see
:mod:`hybrid_ray.runfiles`). The first one is the baseline A; every other one is compared with it
on exactly the same queries: a row is ``(setting, q_lang, c_lang, qid)``, and two evaluations over
different query sets are an error naming both directories and the number of rows that differ.

What is compared (one "test"): a setting's metric over a group of rows.

* metrics: mono / cross / multi mAP, language bias (per-query values of the ``multi`` rows) and
  every MIRACL metric of the metric table; the direction (higher or lower is better) comes from
  :mod:`hybrid_ray.metric_registry`;
* the statistic is the difference B - A of the metric *as the eval table reports it*: a macro
  mean over (query language, candidate language) cells, so each query carries the weight
  ``1 / (cells x queries in its cell)`` and the overall difference is exactly table(B) - table(A);
* groups: ``overall``, by query ``language``, by ``resource`` class of the query language (low /
  mid / high from :mod:`hybrid_ray.languages`), by language ``family`` (same table;
  ``unclassified`` when unknown), ``seen`` vs ``zero-shot`` (a row is seen when its
  query language and, in a language pair, its candidate language were training languages), and
  by ``domain`` when the per-query table has a ``domain`` column (test sets with genres).

Per test: a paired randomisation test (``scipy.stats.permutation_test`` with
``permutation_type="samples"``: A and B swap within each query, two-sided) for the p-value, and a
paired bootstrap (``scipy.stats.bootstrap(paired=True)``, percentile by default: BCa's jackknife is
O(n^2) on tens of thousands of queries) for the 95% confidence interval. Every test draws from
``np.random.default_rng(seed)`` afresh, so a result does not depend on what else was tested.
Multiple comparisons: Holm (default; family-wise error) or Benjamini-Hochberg (``bh``, false
discovery rate, ``scipy.stats.false_discovery_control``) within each family: the overall tests
form one family, each breakdown (language, resource, family, seen, domain) another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hybrid_ray.errors import ConfigError, DataError
from hybrid_ray.metric_registry import get_metric, metrics_for, metrics_over
from hybrid_ray.runfiles import read_per_query

GROUPINGS: tuple[str, ...] = ("overall", "language", "resource", "family", "seen", "domain")
CORRECTIONS: tuple[str, ...] = ("holm", "bh", "none")
CI_METHODS: tuple[str, ...] = ("percentile", "basic", "BCa")
_KEY = ("setting", "q_lang", "c_lang", "qid")
_SETTING_LABEL = {"mono": "mono", "cross": "cross", "multi": "multilingual", "miracl": "MIRACL"}


@dataclass(frozen=True)
class EvalRun:
    """One evaluation to compare: its label, directory, per-query table and training languages."""

    label: str
    path: Path
    table: pa.Table
    train_langs: list[str] | None

    @classmethod
    def load(cls, path: str | Path, label: str | None = None) -> EvalRun:
        import json

        path = Path(path)
        table = read_per_query(path)
        results = path / "results.json"
        meta = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
        return cls(label or path.name, path, table, meta.get("train_langs"))


def compared_metrics(table: pa.Table) -> list[tuple[str, str]]:
    """``(setting, metric)`` pairs to test, in report order, among the columns ``table`` has."""
    cols, settings = set(table.column_names), set(table.column("setting").to_pylist())
    wanted = [(s, "map") for s in ("mono", "cross", "multi")]
    wanted += [("multi", m.name) for m in metrics_over("languages")]
    wanted += [("miracl", m.name) for m in metrics_for("miracl")]
    return [(s, m) for s, m in wanted if s in settings and m in cols]


def macro_weights(cells: Sequence[Any]) -> np.ndarray:
    """Weights that turn a weighted sum of per-query values into the macro mean over ``cells``."""
    _, inverse, counts = np.unique(np.asarray(cells, dtype=object).astype(str), return_inverse=True,
                                   return_counts=True)
    return 1.0 / (counts[inverse] * len(counts))


def paired_test(
    a: np.ndarray,
    b: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    ci_method: str = "percentile",
) -> dict[str, float]:
    """Difference ``sum(w * (b - a))`` with a paired bootstrap CI and a paired randomisation p-value.

    ``weights`` default to equal (the plain mean difference); they are normalised to sum to 1.
    """
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.full(len(a), 1.0) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    diff = float(np.sum(w * (b - a)))
    batch = max(1, int(2e7 // max(len(a), 1)))  # bound the resample matrix to ~160 MB

    def weighted(x, y, axis=-1):
        return np.sum(w * (y - x), axis=axis)

    perm = stats.permutation_test((a, b), weighted, permutation_type="samples", vectorized=True,
                                  n_resamples=n_resamples, alternative="two-sided", batch=batch,
                                  rng=np.random.default_rng(seed))

    def reweighted(x, y, ww, axis=-1):
        return np.sum(ww * (y - x), axis=axis) / np.sum(ww, axis=axis)

    if len(a) < 2 or np.all(a == b):
        low = high = diff  # no variation to resample (scipy's bootstrap warns and returns NaN)
    else:
        boot = stats.bootstrap((a, b, w), reweighted, paired=True, vectorized=True, n_resamples=n_resamples,
                               confidence_level=confidence, method=ci_method, batch=batch,
                               rng=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return {"diff": diff, "ci_low": low, "ci_high": high, "p": float(perm.pvalue), "n": int(len(a))}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control, no independence assumed)."""
    p = np.asarray(pvalues, np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(scaled, 1.0)
    return out


def adjust(pvalues: Sequence[float], correction: str) -> np.ndarray:
    """Adjusted p-values: ``holm``, ``bh`` (Benjamini-Hochberg) or ``none``."""
    if correction not in CORRECTIONS:
        raise ConfigError(f"must be one of {', '.join(CORRECTIONS)}", key="correction", value=correction)
    if len(pvalues) == 0 or correction == "none":
        return np.asarray(pvalues, np.float64)
    if correction == "holm":
        return holm(pvalues)
    from scipy.stats import false_discovery_control

    return false_discovery_control(np.asarray(pvalues, np.float64), method="bh")


def align(base: EvalRun, other: EvalRun) -> tuple[pa.Table, np.ndarray]:
    """``other``'s rows in ``base``'s order; DataError naming both dirs when the query sets differ."""
    def keys(t: pa.Table) -> list[tuple]:
        return list(zip(*(t.column(c).to_pylist() for c in _KEY), strict=True))

    ka, kb = keys(base.table), keys(other.table)
    pos = {k: i for i, k in enumerate(kb)}
    mismatch = len(set(ka) ^ set(kb))
    if mismatch or len(pos) != len(kb):
        raise DataError(
            f"evaluated on different query sets: {base.path} and {other.path} differ in {mismatch} "
            f"(setting, query language, candidate language, qid) rows ({len(ka)} vs {len(kb)} rows); "
            "compare evaluations of the same data, split, languages and --max-queries"
        )
    order = np.asarray([pos[k] for k in ka], dtype=np.int64)
    return other.table.take(pa.array(order)), order


def _resource_groups(langs: Sequence[str]) -> dict[str, str]:
    """Resource group (low / mid / high / unclassified) of each language, from :mod:`hybrid_ray.languages`."""
    try:
        from hybrid_ray.languages import language_info
    except ImportError:  # the language table lands with the fair-data work; until then: one group
        return {lang: "unclassified" for lang in langs}
    return {lang: language_info(lang).resource_group for lang in langs}


def _family_groups(langs: Sequence[str]) -> dict[str, str]:
    """Language family of each language (:mod:`hybrid_ray.languages`; ``unclassified`` when unknown)."""
    from hybrid_ray.languages import language_info

    return {lang: language_info(lang).family or "unclassified" for lang in langs}


def _groups(grouping: str, q_lang: np.ndarray, c_lang: np.ndarray, seen: set[str] | None,
            resource: Mapping[str, str], domain: np.ndarray | None = None,
            family: Mapping[str, str] | None = None) -> np.ndarray | None:
    if grouping == "domain":
        return domain
    if grouping == "family":
        family = family if family is not None else _family_groups(sorted(set(q_lang.tolist())))
        return np.asarray([family.get(x, "unclassified") for x in q_lang], dtype=object)
    if grouping == "overall":
        return np.full(len(q_lang), "all", dtype=object)
    if grouping == "language":
        return q_lang
    if grouping == "resource":
        return np.asarray([resource.get(x, "unclassified") for x in q_lang], dtype=object)
    if seen is None:
        return None
    return np.asarray(["seen" if x in seen and (y == "all" or y in seen) else "zero-shot"
                       for x, y in zip(q_lang.tolist(), c_lang.tolist(), strict=True)], dtype=object)


def compare_evals(
    runs: Sequence[EvalRun],
    *,
    train_langs: Sequence[str] | None = None,
    resource_groups: Mapping[str, str] | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    correction: str = "holm",
    ci_method: str = "percentile",
    groupings: Sequence[str] = GROUPINGS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare ``runs[1:]`` with the baseline ``runs[0]``; a JSON-able dict (see :func:`format_markdown`).

    ``train_langs``: the seen languages (default: what the evals recorded; they must agree).
    ``resource_groups``: ``{lang: group}`` (default: :mod:`hybrid_ray.languages`).
    """
    if len(runs) < 2:
        raise ConfigError("needs at least two evaluations (a baseline and one to compare)", key="evals")
    if n_resamples < 100:
        raise ConfigError("must be >= 100", key="resamples", value=n_resamples)
    if ci_method not in CI_METHODS:
        raise ConfigError(f"must be one of {', '.join(CI_METHODS)}", key="ci_method", value=ci_method)
    adjust([], correction)  # validate early
    base = runs[0]
    seen = _seen_langs(runs, train_langs)
    q_lang = np.asarray(base.table.column("q_lang").to_pylist(), dtype=object)
    c_lang = np.asarray(base.table.column("c_lang").to_pylist(), dtype=object)
    setting = np.asarray(base.table.column("setting").to_pylist(), dtype=object)
    domain = (np.asarray([d if d is not None else "unlabelled" for d in base.table.column("domain").to_pylist()],
                         dtype=object) if "domain" in base.table.column_names else None)
    resource = dict(resource_groups) if resource_groups is not None else _resource_groups(sorted(set(q_lang)))
    families = _family_groups(sorted(set(q_lang)))
    tests: list[dict[str, Any]] = []
    for other in runs[1:]:
        aligned, _ = align(base, other)
        for s, metric in compared_metrics(base.table):
            if metric not in aligned.column_names:
                raise DataError(f"has no per-query column {metric!r}", path=other.path)
            rows = setting == s
            va = np.asarray(base.table.column(metric).to_numpy(zero_copy_only=False), np.float64)
            vb = np.asarray(aligned.column(metric).to_numpy(zero_copy_only=False), np.float64)
            rows &= ~(np.isnan(va) | np.isnan(vb))  # language bias: queries with < 2 answers carry none
            cells = np.asarray([f"{x}|{y}" for x, y in zip(q_lang, c_lang, strict=True)], dtype=object)
            for grouping in groupings:
                labels = _groups(grouping, q_lang, c_lang, seen, resource, domain, families)
                if labels is None:
                    continue
                for group in sorted(set(labels[rows].tolist())):
                    sel = rows & (labels == group)
                    w = macro_weights(cells[sel])
                    if progress:
                        progress(f"{other.label} vs {base.label}: {s} {metric} {grouping}={group}")
                    res = paired_test(va[sel], vb[sel], w, n_resamples=n_resamples, seed=seed,
                                      confidence=confidence, ci_method=ci_method)
                    tests.append({
                        "a": base.label, "b": other.label, "setting": s, "metric": metric,
                        "grouping": grouping, "group": group,
                        "mean_a": float(np.sum(w * va[sel])), "mean_b": float(np.sum(w * vb[sel])), **res,
                    })
    for grouping in groupings:
        family = [t for t in tests if t["grouping"] == grouping]
        for t, p_adj in zip(family, adjust([t["p"] for t in family], correction), strict=True):
            t["p_adj"] = float(p_adj)
    alpha = 1 - confidence
    for t in tests:
        higher = get_metric(t["metric"]).higher_is_better
        t["significant"] = bool(t["p_adj"] < alpha)
        t["better"] = None if not t["significant"] else (t["b"] if (t["diff"] > 0) == higher else t["a"])
    return {
        "evals": [{"label": r.label, "path": str(r.path), "train_langs": r.train_langs} for r in runs],
        "baseline": base.label, "train_langs": sorted(seen) if seen is not None else None,
        "resource_groups": resource, "families": families, "n_resamples": n_resamples, "seed": seed,
        "confidence": confidence, "correction": correction, "ci_method": ci_method, "tests": tests,
    }


def _seen_langs(runs: Sequence[EvalRun], train_langs: Sequence[str] | None) -> set[str] | None:
    if train_langs:
        return set(train_langs)
    recorded = {tuple(sorted(r.train_langs)) for r in runs if r.train_langs}
    if len(recorded) > 1:
        raise ConfigError("the evaluations record different training languages "
                          f"({'; '.join(f'{r.path}: {r.train_langs}' for r in runs)}); pass --train-langs",
                          key="train_langs")
    return set(recorded.pop()) if recorded else None


def _fmt(v: float) -> str:
    return f"{v:+.4f}" if abs(v) < 10 else f"{v:+.2f}"


def _p(v: float) -> str:
    return f"{v:.4f}" if v >= 1e-4 else f"{v:.1e}"


def comparison_label(t: Mapping[str, Any]) -> str:
    """``mono mAP``, ``multilingual Language bias``, ``MIRACL nDCG@10``."""
    return f"{_SETTING_LABEL.get(t['setting'], t['setting'])} {get_metric(t['metric']).label}"


def format_markdown(result: Mapping[str, Any]) -> str:
    """The overall table, then one table per breakdown (language, resource class, seen / zero-shot)."""
    conf = round(100 * result["confidence"])
    corr = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "uncorrected"}[result["correction"]]
    lines = [f"## Paired comparison against {result['baseline']}", "",
             f"Difference = B - A of the table's macro mean; {conf}% paired bootstrap CI "
             f"({result['ci_method']}), two-sided paired randomisation test, {result['n_resamples']:,} resamples, "
             f"seed {result['seed']}; p adjusted with {corr} within each table.", ""]
    head = f"| B | {{}}| n | A | B | B - A | {conf}% CI | p | p adj. | better |"
    for grouping in GROUPINGS:
        tests = [t for t in result["tests"] if t["grouping"] == grouping]
        if not tests:
            continue
        title = {"overall": "Overall", "language": "By query language", "resource": "By resource class",
                 "family": "By language family",
                 "seen": "Seen (training) vs zero-shot languages", "domain": "By domain"}[grouping]
        group_col = "" if grouping == "overall" else "group | "
        lines += [f"### {title}", "", "| metric " + head.format(group_col),
                  "|---|---|" + ("---|" if group_col else "") + "---:|" * 7 + "---|"]
        for t in tests:
            group = "" if grouping == "overall" else f"{t['group']} | "
            lines.append(
                f"| {comparison_label(t)} | {t['b']} | {group}{t['n']} | {t['mean_a']:.4f} | {t['mean_b']:.4f} | "
                f"{_fmt(t['diff'])} | [{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}] | {_p(t['p'])} | "
                f"{_p(t['p_adj'])} | {t['better'] or '-'} |")
        lines.append("")
    if result["train_langs"] is None:
        lines.append("Seen vs zero-shot: not reported (no training languages recorded; pass --train-langs).")
    else:
        lines.append(f"Seen (training) languages: {', '.join(result['train_langs'])}.")
    return "\n".join(lines) + "\n"


def plot_differences(result: Mapping[str, Any], out_png: str | Path) -> Path:
    """Differences with their CIs: one panel per metric (scales differ: mAP vs ranks), one row per
    overall / resource / seen test (the per-language ones are in the tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid_ray.io import atomic_path

    tests = [t for t in result["tests"] if t["grouping"] != "language"]
    metrics = list(dict.fromkeys(t["metric"] for t in tests))
    rows = [[t for t in tests if t["metric"] == m] for m in metrics]
    heights = [0.3 * len(r) + 0.8 for r in rows]
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, sum(heights) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, metric, group in zip(axes[:, 0], metrics, rows, strict=True):
        y = np.arange(len(group))[::-1]
        for yi, t in zip(y, group, strict=True):
            color = "tab:green" if t["better"] == t["b"] else "tab:red" if t["better"] == t["a"] else "tab:gray"
            ax.errorbar(t["diff"], yi, xerr=[[t["diff"] - t["ci_low"]], [t["ci_high"] - t["diff"]]], fmt="o",
                        color=color, capsize=3)
        ax.axvline(0.0, color="black", lw=0.8)
        labels = [f"{t['b']}: {_SETTING_LABEL.get(t['setting'], t['setting'])}"
                  + ("" if t["grouping"] == "overall" else f" [{t['group']}]") for t in group]
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_title(f"{get_metric(metric).label}: B - {result['baseline']}", fontsize=9)
    axes[-1, 0].set_xlabel(f"difference, {round(100 * result['confidence'])}% CI; green: B better, "
                           "red: B worse (adjusted p), grey: not significant")
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out_png
