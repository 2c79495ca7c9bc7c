"""Figures for evaluation reports (matplotlib, headless Agg backend, atomic PNG writes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hybrid_ray.io import atomic_path


def heatmap(
    matrix: np.ndarray,
    langs: Sequence[str],
    out_png: str | Path,
    *,
    col_langs: Sequence[str] | None = None,
    title: str = "mAP: query language x passage language",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Path:
    """Draw ``matrix[query_lang, passage_lang]`` with the value in every cell; NaN cells stay blank.

    A fixed 0..1 colour scale (not auto-scaled) makes heatmaps of different models comparable
    side by side, which is what they are for (X-X vs X-Y vs hybrid).
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: works on cluster nodes and in CI without a display
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=float)
    col_langs = list(col_langs) if col_langs is not None else list(langs)
    n_r, n_c = matrix.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n_c, 0.8 + 0.5 * n_r), dpi=120)
    try:
        im = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(n_c), labels=col_langs)
        ax.set_yticks(range(n_r), labels=list(langs))
        ax.set_xlabel("passage language")
        ax.set_ylabel("query language")
        ax.set_title(title, fontsize=9)
        if n_r * n_c <= 400:  # beyond ~20x20 the numbers are unreadable anyway
            for i in range(n_r):
                for j in range(n_c):
                    if np.isfinite(matrix[i, j]):
                        v = matrix[i, j]
                        color = "black" if v > vmin + 0.6 * (vmax - vmin) else "white"
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        out_png = Path(out_png)
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out_png
