"""Validation at a training checkpoint: the numbers Ray Tune optimises.

``hybrid_ray.train_loop`` calls :func:`validate` on rank 0 at every checkpoint (when the config's
``eval.miracl_path`` or ``eval.pairs_path`` is set) and merges the returned dict into the metrics it
passes to ``ray.train.report``; through ``TuneReportCallback`` they reach Ray Tune, whose searcher
and ASHA scheduler act on them (``val_miracl_map`` by default).

Two validation sets, both optional:

* MIRACL format (topics / qrels / corpus, monolingual per language): ``val_miracl_map``,
  ``val_miracl_ndcg10``, ``val_miracl_recall100``, each the macro mean over languages;
* parallel pairs (LAReQA-like, :meth:`RetrievalSet.from_pairs`): ``val_mono_map``,
  ``val_cross_map``, ``val_multi_map`` and ``val_lang_bias`` (lower is better).

Why the result is a flat ``{str: float}`` dict: Tune logs, plots and compares scalar metrics only,
and a flat key is what ``TuneConfig(metric=...)`` names.

Speed matters: every other rank waits in ``ray.train.report`` while rank 0 validates. Queries are
capped per language (``eval.max_queries_per_lang``), and the loaded sets are cached per worker
process, so only the first checkpoint of a run pays for reading the corpus.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid_ray.data.retrieval import RetrievalSet

if TYPE_CHECKING:
    from hybrid_ray.config import EvalConfig

#: Metric names produced by :func:`validate`, by the eval source that produces them.
MIRACL_KEYS: tuple[str, ...] = ("val_miracl_map", "val_miracl_ndcg10", "val_miracl_recall100")
PAIRS_KEYS: tuple[str, ...] = ("val_mono_map", "val_cross_map", "val_multi_map", "val_lang_bias")
#: Metrics where lower is better (everything else: higher is better).
LOWER_IS_BETTER: frozenset[str] = frozenset({"val_lang_bias", "loss"})

# (kind, path, split, langs, max_queries) -> subsampled RetrievalSet. Per worker process: a
# training run validates several times against the same files.
_CACHE: dict[tuple[Any, ...], RetrievalSet] = {}


def _langs_key(langs: Any) -> tuple[str, ...] | None:
    return tuple(langs) if langs else None


def miracl_set(path: str | Path, langs: list[str] | None, split: str, max_per_lang: int | None) -> RetrievalSet:
    """The MIRACL-format validation set (cached), first ``max_per_lang`` queries per language."""
    from hybrid_ray.data.miracl import load_miracl
    from hybrid_ray.evaluate import subsample_queries

    key = ("miracl", str(path), split, _langs_key(langs), max_per_lang)
    if key not in _CACHE:
        rs = load_miracl(path, langs=list(langs) if langs else None, split=split, name=f"miracl-{split}")
        _CACHE[key] = subsample_queries(rs, max_per_lang)
    return _CACHE[key]


def pairs_set(path: str | Path, split: str | None, langs: list[str] | None, max_per_lang: int | None) -> RetrievalSet:
    """The parallel-pairs validation set (cached), first ``max_per_lang`` queries per language.

    ``split`` applies to a data-set directory; a single ``.parquet`` / ``.jsonl`` file is read whole.
    The candidate pool keeps only the subsampled pairs' positives in every language, so the pool
    stays parallel and the multilingual setting and language bias remain meaningful.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from hybrid_ray.data.pairs import read_pairs

    key = ("pairs", str(path), split, _langs_key(langs), max_per_lang)
    if key not in _CACHE:
        table = read_pairs(path, split=split if Path(path).is_dir() else None)
        if langs:
            table = table.filter(pc.is_in(table.column("lang"), value_set=pa.array(list(langs), pa.string())))
        if max_per_lang:
            # Keep the first N pair ids (file order) and all their languages: same effect as
            # subsample_queries on the queries, but the candidates shrink with them.
            keep = list(dict.fromkeys(table.column("pair_id").to_pylist()))[:max_per_lang]
            table = table.filter(pc.is_in(table.column("pair_id"), value_set=pa.array(keep, pa.string())))
        _CACHE[key] = RetrievalSet.from_pairs(table, name=f"pairs-{split or Path(path).name}")
    return _CACHE[key]


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def validate(encoder_dir: str | Path, eval_cfg: EvalConfig) -> dict[str, float]:
    """Load the encoder exported at a checkpoint and score it on the configured validation sets.

    ``eval_cfg`` is the ``eval`` section of the training config (:class:`hybrid_ray.config.EvalConfig`).
    Returns the keys of :data:`MIRACL_KEYS` and/or :data:`PAIRS_KEYS` plus ``val_time_s``.
    """
    import torch

    from hybrid_ray.evaluate import evaluate_retrieval
    from hybrid_ray.modeling.encoder import DualEncoder

    t0 = time.perf_counter()
    out: dict[str, float] = {}
    if not (eval_cfg.miracl_path or eval_cfg.pairs_path):
        return out
    use_gpu = torch.cuda.is_available()
    encoder = DualEncoder.from_pretrained(encoder_dir)
    if use_gpu:
        encoder = encoder.to("cuda")
    batch_size = int(eval_cfg.batch_size or 64)
    langs = eval_cfg.langs
    max_q = eval_cfg.max_queries_per_lang
    if eval_cfg.miracl_path:
        rs = miracl_set(eval_cfg.miracl_path, langs, eval_cfg.miracl_split or "dev", max_q)
        res = evaluate_retrieval(encoder, rs, setting="miracl", batch_size=batch_size, use_gpu=use_gpu)
        mean = res["mean"]
        out["val_miracl_map"] = _float(mean["map"])
        out["val_miracl_ndcg10"] = _float(mean["ndcg_cut_10"])
        out["val_miracl_recall100"] = _float(mean["recall_100"])
    if eval_cfg.pairs_path:
        rs = pairs_set(eval_cfg.pairs_path, eval_cfg.pairs_split, langs, max_q)
        res = evaluate_retrieval(encoder, rs, setting="lareqa", batch_size=batch_size, use_gpu=use_gpu)
        s = res["settings"]
        out["val_mono_map"] = _float(s["mono"]["map"])
        out["val_cross_map"] = _float(s["cross"]["map"])
        out["val_multi_map"] = _float(s["multilingual"]["map"])
        bias = res["language_bias"]
        out["val_lang_bias"] = _float(bias["macro"]) if bias.get("n_queries") else math.nan
    out["val_time_s"] = time.perf_counter() - t0
    return out
