"""Tune results: one row per trial, the best trial, its exported encoder, tables and the alpha plot.

Under ``<run.storage_path>/<run.name>/`` a finished search holds ``results.csv`` / ``results.json``
(one row per trial), ``table.md``, ``alpha_vs_map.png``, ``best.json``; the best trial's encoder is
copied atomically to ``run.export_dir`` (default ``.../best-encoder``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid_ray.errors import HybridRayError
from hybrid_ray.tuning.config import HPARAMS
from hybrid_ray.validation import MIRACL_KEYS, PAIRS_KEYS

if TYPE_CHECKING:
    from hybrid_ray.tuning.config import TuneSpec


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def pick_best(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    """The row with the best final ``metric`` among trials that have it and an encoder.

    Ties go to the earlier trial (Tune's creation order, see :func:`collect_rows`), so a restored
    search picks the same trial again.
    """
    candidates = [r for r in rows if _finite(r.get(metric)) and r.get("encoder")]
    if not candidates:
        errors = "; ".join(f"{r['trial_id']}: {r.get('error', r['status'])}" for r in rows)
        raise HybridRayError(f"no trial reported {metric} with an encoder to export ({errors})")
    sign = 1.0 if mode == "max" else -1.0
    best = candidates[0]
    for r in candidates[1:]:
        if sign * r[metric] > sign * best[metric]:
            best = r
    return best


def export_best(src: str | Path, dst: Path, info: dict[str, Any]) -> None:
    """Copy the best encoder to ``dst`` atomically (readers never see a half-copied model)."""
    from hybrid_ray.io import atomic_dir

    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        (tmp / "hybrid_ray_tune.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


COLUMNS: tuple[tuple[str, str], ...] = (
    ("val_miracl_map", "MIRACL mAP"), ("val_miracl_ndcg10", "nDCG@10"), ("val_miracl_recall100", "R@100"),
    ("val_mono_map", "mono mAP"), ("val_cross_map", "cross mAP"), ("val_multi_map", "multi mAP"),
    ("val_lang_bias", "lang bias"),
)


def format_results(rows: list[dict[str, Any]], best_id: str | None, metric: str) -> str:
    """A Markdown table of the trials (best marked ``*``), sorted by alpha then trial id."""
    hp_cols = [n for n in HPARAMS if any(n in r for r in rows)]
    cols = [(k, label) for k, label in COLUMNS if any(k in r for r in rows)]
    head = ["trial", *hp_cols, *(label for _, label in cols), "step", "status"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]

    def fmt(v: Any) -> str:
        if not _finite(v):
            return "-"
        return f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.4g}"

    for r in sorted(rows, key=lambda r: (r.get("alpha", 0.0), r["trial_id"])):
        mark = "*" if r["trial_id"] == best_id else ""
        hps = (f"{r[h]:.4g}" if _finite(r.get(h)) else "-" for h in hp_cols)  # lr 3e-05 stays readable
        cells = [f"{r['trial_id']}{mark}", *hps, *(fmt(r.get(k)) for k, _ in cols),
                 str(r.get("step", "-")), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"* best by final {metric}. Language bias: lower is better.")
    return "\n".join(lines) + "\n"


def plot_alpha(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    """alpha vs mAP per setting (MIRACL / mono / cross / multi) and language bias on a 2nd panel.

    With several trials per alpha (``num_samples`` > 1 or other searched hyper-parameters) every
    trial is a dot and the line joins the per-alpha means.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: cluster nodes and CI have no display
    import matplotlib.pyplot as plt
    import numpy as np

    from hybrid_ray.io import atomic_path

    pts = [r for r in rows if _finite(r.get("alpha"))]
    series = [(k, label) for k, label in (("val_miracl_map", "MIRACL"), ("val_mono_map", "mono"),
                                          ("val_cross_map", "cross"), ("val_multi_map", "multi"))
              if any(_finite(r.get(k)) for r in pts)]
    has_bias = any(_finite(r.get("val_lang_bias")) for r in pts)
    if not pts or not (series or has_bias):
        return None

    def by_alpha(key: str) -> tuple[list[float], list[float], list[float], list[float]]:
        xs = [float(r["alpha"]) for r in pts if _finite(r.get(key))]
        ys = [float(r[key]) for r in pts if _finite(r.get(key))]
        ux = sorted(set(xs))
        means = [float(np.mean([y for x, y in zip(xs, ys, strict=True) if x == u])) for u in ux]
        return xs, ys, ux, means

    n_panels = 2 if (series and has_bias) else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 3.8), dpi=120, squeeze=False)
    try:
        ax = axes[0][0]
        if series:
            for key, label in series:
                xs, ys, ux, means = by_alpha(key)
                (line,) = ax.plot(ux, means, marker="o", label=label)
                ax.scatter(xs, ys, s=12, color=line.get_color(), alpha=0.5)
            ax.set_xlabel("alpha (P(monolingual batch))")
            ax.set_ylabel("validation mAP")
            ax.set_xlim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.set_title("mAP vs alpha", fontsize=10)
        if has_bias:
            bx = axes[0][n_panels - 1]
            xs, ys, ux, means = by_alpha("val_lang_bias")
            (line,) = bx.plot(ux, means, marker="s", color="tab:red")
            bx.scatter(xs, ys, s=12, color="tab:red", alpha=0.5)
            bx.set_xlabel("alpha (P(monolingual batch))")
            bx.set_ylabel("language bias (lower is better)")
            bx.set_xlim(-0.05, 1.05)
            bx.grid(alpha=0.3)
            bx.set_title("language bias vs alpha", fontsize=10)
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out_png


def _csv_text(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in keys})
    return buf.getvalue()


def finish(spec: TuneSpec, rows: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    """Pick the best trial, export its encoder, write the result files, print the table."""
    from hybrid_ray.io import write_json_atomic, write_text_atomic

    exp = spec.exp_dir
    best = pick_best(rows, spec.metric, spec.mode)
    hparams = {n: best[n] for n in HPARAMS if n in best}
    info = {
        "metric": spec.metric,
        "mode": spec.mode,
        "value": best[spec.metric],
        "trial_id": best["trial_id"],
        **hparams,
        "hparams": hparams,
        "metrics": {k: best[k] for k in (*MIRACL_KEYS, *PAIRS_KEYS) if k in best},
        "encoder": str(spec.export_dir),
        "source_encoder": best["encoder"],
        "experiment": str(exp),
        "n_trials": len(rows),
        "search_time_s": round(elapsed_s, 1),
    }
    export_best(best["encoder"], spec.export_dir, info)
    table = format_results(rows, best["trial_id"], spec.metric)
    write_json_atomic(exp / "results.json", {"metric": spec.metric, "mode": spec.mode, "best": best["trial_id"],
                                             "trials": rows})
    write_text_atomic(exp / "results.csv", _csv_text(rows))
    write_text_atomic(exp / "table.md", table)
    plot = plot_alpha(rows, exp / "alpha_vs_map.png")
    write_json_atomic(exp / "best.json", info)
    print(table)
    print(f"[hybrid-ray tune] best trial {best['trial_id']} ({', '.join(f'{k}={v}' for k, v in hparams.items())}): "
          f"{spec.metric} {best[spec.metric]:.4f}; encoder exported to {spec.export_dir}")
    print(f"[hybrid-ray tune] results: {exp / 'results.csv'}, {exp / 'results.json'}"
          + (f", {plot}" if plot else "") + f"; TensorBoard: tensorboard --logdir {exp}")
    return info


