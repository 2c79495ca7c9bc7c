"""The experiment report: means and 95% intervals over seeds per alpha, paired tests, breakdowns.

Inputs are the trials' evaluation directories (``<exp>/evals/<label>/<set>/``: ``results.json``
and ``per_query.parquet``), so the report can be rebuilt from disk at any time
(``hybrid-ray experiment --report-only``) and is tested on synthetic per-query results.

* **Over seeds.** For every setting (variant x alpha) and metric: the mean of the seeds' table
  values and a Student-t 95% interval (``mean +- t(0.975, n-1) * sd / sqrt(n)``; none with one
  seed): the spread a user would see rerunning the training with another seed.
* **Paired tests** (:mod:`hybrid_ray.compare`, on the same queries): each setting's per-query
  values are first averaged over its seeds (the expected per-query result of that training
  recipe), then compared with a paired randomisation test and bootstrap CI, Holm-corrected within
  each breakdown. Compared: the hybrid alpha (``report.compare_alpha``: "best" = the highest mean
  cross mAP on the first test set among 0 < alpha < 1, else the number given) against X-X
  (alpha=1) and X-Y (alpha=0), broken down by language, resource class, seen vs zero-shot and
  domain; every variant against the default setting at the same alpha; every setting against the
  off-the-shelf encoder (overall and seen / zero-shot). The seed-level difference (mean over
  seeds of the paired table differences, t-interval) is reported beside it: a query-level test
  can be significant while the seed-to-seed spread is as large as the effect.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hybrid_ray.experiment.config import BASELINE_VARIANT, DEFAULT_VARIANT, TrialSpec
from hybrid_ray.experiment.trial import PER_QUERY_FILE, RESULTS_FILE, headline

HEADLINE = ("mono_map", "cross_map", "multi_map", "language_bias")
LABELS = {"mono_map": "mono mAP", "cross_map": "cross mAP", "multi_map": "multi mAP",
          "language_bias": "language bias", "miracl_ndcg_cut_10": "MIRACL nDCG@10",
          "miracl_recall_100": "MIRACL R@100"}
_KEY = ["setting", "q_lang", "c_lang", "qid"]


# --------------------------------------------------------------------------- statistics
def seed_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and Student-t interval over seeds (``ci_*`` = mean with a single seed)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    n = len(v)
    if n == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "sd": float("nan"), "n": 0,
                "values": []}
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "sd": sd, "n": n,
            "values": [float(x) for x in v]}


def average_per_query(tables: Sequence[pa.Table]) -> pa.Table:
    """Per-query metrics averaged over seeds (rows matched on setting, languages and qid)."""
    if len(tables) == 1:
        return tables[0].drop_columns([c for c in ("relevant_ranks",) if c in tables[0].column_names])
    keys = _KEY + (["domain"] if "domain" in tables[0].column_names else [])
    metrics = [c for c in tables[0].column_names
               if pa.types.is_floating(tables[0].schema.field(c).type)]
    parts = [t.select(keys + metrics) for t in tables]
    merged = pa.concat_tables(parts).group_by(keys, use_threads=False).aggregate(
        [(m, "mean") for m in metrics] + [(metrics[0], "count")])
    n = merged.column(f"{metrics[0]}_count").to_numpy()
    if (n != len(tables)).any():
        from hybrid_ray.errors import DataError

        raise DataError("the seeds' per-query results cover different queries", field="per_query")
    return pa.table({**{k: merged.column(k) for k in keys}, **{m: merged.column(f"{m}_mean") for m in metrics}})


# --------------------------------------------------------------------------- loading
def load_trial_results(exp_dir: str | Path, trials: Sequence[TrialSpec], set_names: Sequence[str]
                       ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{set: {label: results.json}}`` for every finished trial evaluation."""
    out: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in set_names}
    for t in trials:
        for s in set_names:
            f = Path(exp_dir) / "evals" / t.label / s / RESULTS_FILE
            if f.is_file():
                out[s][t.label] = json.loads(f.read_text(encoding="utf-8"))
    return out


def _setting_key(t: TrialSpec) -> str:
    return t.variant if not t.train else f"{t.variant} a={t.alpha:g}"


def _per_lang(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per query language: mono mAP (X-X) and cross mAP (mean over Y != X)."""
    out = {}
    pairs = results.get("pairs") or {}
    for x, row in pairs.items():
        cross = [c["map"] for y, c in row.items() if y != x and c["n_queries"] > 0]
        out[x] = {"mono_map": row[x]["map"] if x in row and row[x]["n_queries"] > 0 else float("nan"),
                  "cross_map": float(np.mean(cross)) if cross else float("nan")}
    return out


# --------------------------------------------------------------------------- the report
def build_report(spec, *, elapsed_s: float | None = None, estimate_s: float | None = None,
                 errors: Sequence[str] = (), n_resamples: int | None = None) -> dict[str, Any]:
    """Everything the report shows, as a JSON-able dict (see the module docstring)."""
    cfg = spec.cfg
    conf = float(cfg.report.confidence)
    resamples = int(n_resamples or cfg.report.resamples)
    set_names = [e.name for e in cfg.eval_sets]
    results = load_trial_results(spec.exp_dir, spec.trials, set_names)
    groups: dict[str, list[TrialSpec]] = defaultdict(list)
    for t in spec.trials:
        groups[_setting_key(t)].append(t)
    settings_meta = {k: {"variant": ts[0].variant, "alpha": ts[0].alpha, "trained": ts[0].train,
                         "overrides": dict(ts[0].overrides), "seeds": [t.seed for t in ts]}
                     for k, ts in groups.items()}
    report: dict[str, Any] = {
        "experiment": str(spec.exp_dir), "trials": len(spec.trials), "trained_trials": spec.n_trained,
        "alphas": list(cfg.alphas), "seeds": list(cfg.seeds), "confidence": conf, "resamples": resamples,
        "settings": settings_meta, "elapsed_s": elapsed_s, "estimate_s": estimate_s, "errors": list(errors),
        "eval_sets": [{"name": e.name, "path": e.path, "split": e.split,
                       "max_queries_per_lang": e.max_queries_per_lang} for e in cfg.eval_sets],
        "sets": {},
    }
    for s in set_names:
        report["sets"][s] = _set_report(spec, s, results[s], groups, conf, resamples)
    return report


def _metric_keys(res: dict[str, dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in res.values():
        keys += [k for k in headline(r) if k not in keys]
    return keys


def _set_report(spec, set_name: str, res: dict[str, dict[str, Any]], groups: dict[str, list[TrialSpec]],
                conf: float, resamples: int) -> dict[str, Any]:
    metrics = _metric_keys(res)
    summary: dict[str, dict[str, Any]] = {}
    per_lang: dict[str, dict[str, dict[str, float]]] = {}
    per_domain: dict[str, dict[str, dict[str, float]]] = {}
    n_queries = None
    for key, trials in groups.items():
        done = [t for t in trials if t.label in res]
        if not done:
            continue
        heads = [headline(res[t.label]) for t in done]
        summary[key] = {m: seed_interval([h.get(m, float("nan")) for h in heads], conf) for m in metrics}
        n_queries = res[done[0].label].get("n_queries", n_queries)
        langs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        doms: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for t in done:
            for x, row in _per_lang(res[t.label]).items():
                for m, v in row.items():
                    langs[x][m].append(v)
            for d, row in (res[t.label].get("per_domain") or {}).items():
                for m, v in row.items():
                    if m != "n_queries":
                        doms[d][m].append(v)
        per_lang[key] = {x: {m: float(np.nanmean(v)) for m, v in row.items()} for x, row in sorted(langs.items())}
        per_domain[key] = {d: {m: float(np.mean(v)) for m, v in row.items()} for d, row in sorted(doms.items())}
    out: dict[str, Any] = {"metrics": metrics, "n_queries": n_queries, "summary": summary, "per_lang": per_lang,
                           "per_domain": per_domain}
    out["comparisons"] = _comparisons(spec, set_name, res, groups, summary, conf, resamples)
    return out


def pick_compare_alpha(spec, summary: dict[str, dict[str, Any]]) -> float | None:
    """The hybrid alpha to test against X-X and X-Y (see the module docstring)."""
    choice = str(spec.cfg.report.compare_alpha)
    if choice != "best":
        return float(choice)
    best, best_v = None, -math.inf
    for a in spec.cfg.alphas:
        key = f"{DEFAULT_VARIANT} a={float(a):g}"
        if 0 < float(a) < 1 and key in summary and "cross_map" in summary[key]:
            v = summary[key]["cross_map"]["mean"]
            if v > best_v:
                best, best_v = float(a), v
    return best if best is not None else (0.5 if 0.5 in [float(a) for a in spec.cfg.alphas] else None)


def _eval_run(spec, set_name: str, key: str, trials: list[TrialSpec], res: dict[str, Any]):
    from hybrid_ray.compare import EvalRun

    done = [t for t in trials if t.label in res]
    if not done:
        return None
    tables = [pq.read_table(Path(spec.exp_dir) / "evals" / t.label / set_name / PER_QUERY_FILE) for t in done]
    return EvalRun(key, Path(spec.exp_dir) / "evals" / done[0].label / set_name, average_per_query(tables),
                   res[done[0].label].get("train_langs"))


def _seed_diff(res: dict[str, Any], a: list[TrialSpec], b: list[TrialSpec], metrics: list[str], conf: float
               ) -> dict[str, Any]:
    """Seed-level B - A: table differences paired by seed (same seed = same batch-order seed)."""
    from scipy import stats

    by_seed_a = {t.seed: headline(res[t.label]) for t in a if t.label in res}
    by_seed_b = {t.seed: headline(res[t.label]) for t in b if t.label in res}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    out = {}
    for m in metrics:
        d = [by_seed_b[s][m] - by_seed_a[s][m] for s in seeds if m in by_seed_a[s] and m in by_seed_b[s]]
        iv = seed_interval(d, conf)
        iv["p_ttest"] = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) > 1 and np.std(d) > 0 else float("nan")
        out[m] = iv
    return out


def _comparisons(spec, set_name: str, res: dict[str, Any], groups: dict[str, list[TrialSpec]],
                 summary: dict[str, Any], conf: float, resamples: int) -> dict[str, Any]:
    from hybrid_ray.compare import compare_evals

    runs = {k: _eval_run(spec, set_name, k, ts, res) for k, ts in groups.items()}
    runs = {k: r for k, r in runs.items() if r is not None}
    out: dict[str, Any] = {"tests": [], "seed_level": []}
    kw = dict(n_resamples=resamples, confidence=conf, seed=0)
    metrics = _metric_keys(res)

    def add(a_key: str, b_key: str, groupings: Sequence[str], why: str) -> None:
        if a_key not in runs or b_key not in runs:
            return
        result = compare_evals([runs[a_key], runs[b_key]], groupings=groupings, **kw)
        for t in result["tests"]:
            t["why"] = why
        out["tests"] += result["tests"]
        if groups[a_key][0].train and groups[b_key][0].train:
            out["seed_level"].append({"a": a_key, "b": b_key, "why": why,
                                      **_seed_diff(res, groups[a_key], groups[b_key], metrics, conf)})

    hybrid = pick_compare_alpha(spec, summary)
    out["compare_alpha"] = hybrid
    full = ("overall", "language", "resource", "family", "seen", "domain")
    if hybrid is not None:
        hk = f"{DEFAULT_VARIANT} a={hybrid:g}"
        for ref, name in ((1.0, "X-X"), (0.0, "X-Y")):
            add(f"{DEFAULT_VARIANT} a={ref:g}", hk, full, f"hybrid vs {name}")
    for v in spec.cfg.variants:
        for a in (v.alphas if v.alphas is not None else spec.cfg.alphas):
            add(f"{DEFAULT_VARIANT} a={float(a):g}", f"{v.name} a={float(a):g}", full, f"variant {v.name} vs default")
    if BASELINE_VARIANT in runs:
        for k in runs:
            if k != BASELINE_VARIANT:
                add(BASELINE_VARIANT, k, ("overall", "seen"), "vs off-the-shelf")
    return out


# --------------------------------------------------------------------------- files
def _cell(iv: dict[str, Any]) -> str:
    if not iv or iv.get("n", 0) == 0:
        return "-"
    if iv["n"] == 1:
        return f"{iv['mean']:.4f}"
    return f"{iv['mean']:.4f} [{iv['ci_low']:.4f}, {iv['ci_high']:.4f}]"


def _p(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.4f}" if v >= 1e-4 else f"{v:.1e}")


def format_markdown(report: dict[str, Any], header: Sequence[str] = ()) -> str:
    conf = round(100 * report["confidence"])
    lines = ["# Experiment report", "", *header]
    lines += [f"{report['trials']} trials ({report['trained_trials']} trained), alphas {report['alphas']}, "
              f"seeds {report['seeds']}. Cells: mean over seeds [{conf}% t-interval over seeds].", ""]
    if report.get("errors"):
        lines += ["**Failed trials:** " + "; ".join(report["errors"]), ""]
    for s, sr in report["sets"].items():
        ms = sr["metrics"]
        lines += [f"## Test set `{s}` ({sr['n_queries']} queries)", "",
                  "| setting | seeds | " + " | ".join(LABELS.get(m, m) for m in ms) + " |",
                  "|---|---:|" + "---|" * len(ms)]
        for key, row in sr["summary"].items():
            n = next(iter(row.values()))["n"] if row else 0
            lines.append(f"| {key} | {n} | " + " | ".join(_cell(row.get(m, {})) for m in ms) + " |")
        lines += ["", "Language bias: lower is better (rank spread of a query's answers across languages).", ""]
        comps = sr["comparisons"]
        tests = comps["tests"]
        if comps.get("compare_alpha") is not None:
            lines += [f"Hybrid alpha compared with X-X / X-Y: **{comps['compare_alpha']:g}**.", ""]
        for why in dict.fromkeys(t["why"] for t in tests):
            chosen = [t for t in tests if t["why"] == why and t["grouping"] != "language"]
            title = why if why != "vs off-the-shelf" else "every setting vs the off-the-shelf encoder"
            lines += [f"### Paired tests: {title} (seed-averaged per-query values)", "",
                      "| A | B | metric | group | n | A | B | B - A | 95% CI | p adj. | better |",
                      "|---|---|---|---|---:|---:|---:|---:|---|---:|---|"]
            for t in chosen:
                grp = "overall" if t["grouping"] == "overall" else f"{t['grouping']}={t['group']}"
                lines.append(f"| {t['a']} | {t['b']} | {t['setting']} {t['metric']} | {grp} | {t['n']} | "
                             f"{t['mean_a']:.4f} | {t['mean_b']:.4f} | {t['diff']:+.4f} | "
                             f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] | {_p(t['p_adj'])} | {t['better'] or '-'} |")
            lines.append("")
            lines += _per_language_tests([t for t in tests if t["why"] == why and t["grouping"] == "language"])
        if comps["seed_level"]:
            lines += ["### Seed-level differences (B - A per seed, mean [t-interval], one-sample t-test p)", "",
                      "| A | B | " + " | ".join(LABELS.get(m, m) for m in ms) + " |", "|---|---|" + "---|" * len(ms)]
            for row in comps["seed_level"]:
                cells = []
                for m in ms:
                    iv = row.get(m)
                    cells.append("-" if not iv or not iv["n"] else
                                 f"{iv['mean']:+.4f} [{iv['ci_low']:+.4f}, {iv['ci_high']:+.4f}] p={_p(iv['p_ttest'])}")
                lines.append(f"| {row['a']} | {row['b']} | " + " | ".join(cells) + " |")
            lines.append("")
        if sr["per_lang"]:
            keys = list(sr["per_lang"])
            langs = sorted({x for k in keys for x in sr["per_lang"][k]})
            for m in ("mono_map", "cross_map"):
                lines += [f"### {LABELS[m]} by query language (mean over seeds)", "",
                          "| lang | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
                for x in langs:
                    vals = [sr["per_lang"][k].get(x, {}).get(m, float("nan")) for k in keys]
                    lines.append(f"| {x} | " + " | ".join("-" if math.isnan(v) else f"{v:.4f}" for v in vals) + " |")
                lines.append("")
        if any(sr["per_domain"].values()):
            keys = list(sr["per_domain"])
            doms = sorted({d for k in keys for d in sr["per_domain"][k]})
            lines += ["### By domain (mAP, mean over seeds)", "", "| domain | setting | mono | cross | multi |",
                      "|---|---|---:|---:|---:|"]
            for d in doms:
                for k in keys:
                    row = sr["per_domain"][k].get(d)
                    if row:
                        lines.append(f"| {d} | {k} | " + " | ".join(
                            f"{row[c]:.4f}" if c in row else "-" for c in ("mono", "cross", "multilingual")) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _per_language_tests(tests: list[dict[str, Any]]) -> list[str]:
    """Compact per-language rows: B - A and the adjusted p for each compared metric."""
    if not tests:
        return []
    metrics = list(dict.fromkeys(f"{t['setting']} {t['metric']}" for t in tests))
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for t in tests:
        star = "*" if t["significant"] else ""
        cells[t["group"]][f"{t['setting']} {t['metric']}"] = f"{t['diff']:+.4f}{star} (p {_p(t['p_adj'])})"
    lines = [f"By query language, B - A (p adjusted within the language breakdown; * significant), "
             f"{tests[0]['b']} vs {tests[0]['a']}:", "", "| lang | " + " | ".join(metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for lang in sorted(cells):
        lines.append(f"| {lang} | " + " | ".join(cells[lang].get(m, "-") for m in metrics) + " |")
    return lines + [""]


def plot_alpha_curves(report: dict[str, Any], out_png: str | Path) -> Path:
    """Per test set (rows) and metric (columns): mean over seeds vs alpha with its interval band;
    variants as points with error bars, the off-the-shelf encoder as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid_ray.io import atomic_path

    sets = list(report["sets"])
    metrics = [m for m in HEADLINE if any(m in report["sets"][s]["metrics"] for s in sets)]
    fig, axes = plt.subplots(len(sets), len(metrics), figsize=(3.4 * len(metrics), 2.8 * len(sets)), squeeze=False)
    for i, s in enumerate(sets):
        summ = report["sets"][s]["summary"]
        for j, m in enumerate(metrics):
            ax = axes[i, j]
            pts = sorted((meta["alpha"], summ[k][m]) for k, meta in report["settings"].items()
                         if meta["variant"] == DEFAULT_VARIANT and k in summ and m in summ[k])
            if pts:
                x = [p[0] for p in pts]
                ax.plot(x, [p[1]["mean"] for p in pts], "o-", color="tab:blue", label="hybrid (alpha)")
                ax.fill_between(x, [p[1]["ci_low"] for p in pts], [p[1]["ci_high"] for p in pts], color="tab:blue",
                                alpha=0.2)
            for k, meta in report["settings"].items():
                if meta["variant"] in (DEFAULT_VARIANT, BASELINE_VARIANT) or k not in summ or m not in summ[k]:
                    continue
                iv = summ[k][m]
                err = [[iv["mean"] - iv["ci_low"]], [iv["ci_high"] - iv["mean"]]]
                ax.errorbar([meta["alpha"]], [iv["mean"]], yerr=err, fmt="s", color="tab:orange", capsize=3,
                            label=meta["variant"])
            if BASELINE_VARIANT in summ and m in summ[BASELINE_VARIANT]:
                ax.axhline(summ[BASELINE_VARIANT][m]["mean"], color="gray", ls="--", lw=1, label="off-the-shelf")
            ax.set_title(f"{s}: {LABELS.get(m, m)}", fontsize=9)
            ax.set_xlabel("alpha (1 = X-X mono, 0 = X-Y)", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out_png


def write_report(report: dict[str, Any], base: str | Path, header: Sequence[str] = ()) -> list[Path]:
    """``<base>.md``, ``<base>.json``, ``<base>.png`` (alpha curves) and per-language heatmaps
    ``<base>-<set>-<metric>.png`` (query language x setting), each written atomically."""
    from hybrid_ray.io import write_json_atomic, write_text_atomic
    from hybrid_ray.plots import heatmap

    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".md"), base.with_suffix(".json"), base.with_suffix(".png")]
    write_text_atomic(paths[0], format_markdown(report, header))
    write_json_atomic(paths[1], report)
    plot_alpha_curves(report, paths[2])
    for s, sr in report["sets"].items():
        keys = list(sr["per_lang"])
        langs = sorted({x for k in keys for x in sr["per_lang"][k]})
        if not keys or not langs:
            continue
        for m in ("mono_map", "cross_map"):
            mat = np.array([[sr["per_lang"][k].get(x, {}).get(m, np.nan) for k in keys] for x in langs])
            finite = mat[np.isfinite(mat)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            p = Path(f"{base}-{s}-{m.split('_')[0]}.png")
            heatmap(mat, langs, p, col_langs=keys, title=f"{s}: {LABELS[m]} by query language",
                    vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
            paths.append(p)
    return paths
