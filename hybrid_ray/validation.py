"""Validation at a training checkpoint: the numbers Ray Tune optimises.

``hybrid_ray.train_loop`` calls :func:`validate` on rank 0 at every checkpoint (when the config's
``eval.miracl_path`` or ``eval.pairs_path`` is set) and merges the returned dict into the metrics it
passes to ``ray.train.report``; through ``TuneReportCallback`` they reach Ray Tune, whose searcher
and ASHA scheduler act on them (``val_miracl_map`` by default).

Two validation sets, both optional, read through the format registry
(:mod:`hybrid_ray.data.formats`); the keys come from the metric table
(:mod:`hybrid_ray.metric_registry`: every metric with a ``val_name``), so with the built-in table:

* MIRACL format (topics / qrels / corpus, monolingual per language): ``val_miracl_map``,
  ``val_miracl_ndcg10``, ``val_miracl_recall100``, each the macro mean over languages;
* parallel pairs (LAReQA-like, :meth:`RetrievalSet.from_pairs`): ``val_mono_map``,
  ``val_cross_map``, ``val_multi_map`` and ``val_lang_bias`` (lower is better).

Tune code looks a key's direction up with :func:`hybrid_ray.metric_registry.metric_mode`.

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

from hybrid_ray.data.formats import get_format
from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.metric_registry import Metric, metric_mode, metrics_for, metrics_over, val_key

if TYPE_CHECKING:
    from hybrid_ray.config import EvalConfig

#: Evaluation settings of the pairs set -> the scope of their keys (``val_mono_map``, ...).
PAIRS_SCOPES: dict[str, str] = {"mono": "mono", "cross": "cross", "multilingual": "multi"}


def _validated(metrics: list[Metric]) -> list[Metric]:
    return [m for m in metrics if m.val_name]


def miracl_keys() -> tuple[str, ...]:
    """Keys :func:`validate` reports for the MIRACL set, sorted (independent of registration order)."""
    return tuple(sorted(val_key(m, "miracl") for m in _validated(metrics_for("miracl"))))


def pairs_keys() -> tuple[str, ...]:
    """Keys for the pairs set: per setting (mono, cross, multilingual), then the language metrics."""
    per_setting = [
        val_key(m, scope) for scope in PAIRS_SCOPES.values()
        for m in sorted(_validated(metrics_for("lareqa")), key=lambda m: m.val_name or "")
    ]
    return (*per_setting, *(val_key(m) for m in _validated(metrics_over("languages"))))


def lower_is_better() -> frozenset[str]:
    """Reported keys where lower is better (everything else: higher is better), plus training ones."""
    keys = {k for k in (*miracl_keys(), *pairs_keys()) if metric_mode(k) == "min"}
    return frozenset(keys | {m.name for m in metrics_over("training") if m.mode == "min"})


_LIVE_NAMES = {"MIRACL_KEYS": miracl_keys, "PAIRS_KEYS": pairs_keys, "LOWER_IS_BETTER": lower_is_better}


def __getattr__(name: str) -> Any:
    """``MIRACL_KEYS``, ``PAIRS_KEYS``, ``LOWER_IS_BETTER``: the functions' values at access time.

    Module attributes rather than import-time constants, so they never disagree with the table
    depending on whether a metric was registered before or after this module was first imported.
    Code that runs long after importing (Tune) should call the functions instead.
    """
    if name in _LIVE_NAMES:
        return _LIVE_NAMES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# (kind, path, split, langs, max_queries) -> subsampled RetrievalSet. Per worker process: a
# training run validates several times against the same files.
_CACHE: dict[tuple[Any, ...], RetrievalSet] = {}


def _langs_key(langs: Any) -> tuple[str, ...] | None:
    return tuple(langs) if langs else None


def miracl_set(path: str | Path, langs: list[str] | None, split: str, max_per_lang: int | None) -> RetrievalSet:
    """The MIRACL-format validation set (cached), first ``max_per_lang`` queries per language."""
    from hybrid_ray.evaluate import subsample_queries

    key = ("miracl", str(path), split, _langs_key(langs), max_per_lang)
    if key not in _CACHE:
        load = get_format("miracl", "retrieval").load_retrieval
        assert load is not None  # get_format checked the capability
        rs = load(Path(path), split, list(langs) if langs else None)  # named f"miracl-{split}"
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

    key = ("pairs", str(path), split, _langs_key(langs), max_per_lang)
    if key not in _CACHE:
        load = get_format("pairs", "pairs").load_pairs
        assert load is not None  # get_format checked the capability
        table = load(Path(path), split if Path(path).is_dir() else None, list(langs) if langs else None)
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


def miracl_values(res: dict[str, Any]) -> dict[str, float]:
    """The MIRACL-set keys of an ``evaluate_retrieval(setting="miracl")`` result (macro means)."""
    values = {val_key(m, "miracl"): _float(res["mean"][m.name]) for m in _validated(metrics_for("miracl"))}
    return {k: values[k] for k in miracl_keys()}


def pairs_values(res: dict[str, Any]) -> dict[str, float]:
    """The pairs-set keys of an ``evaluate_retrieval(setting="lareqa")`` result."""
    values: dict[str, float] = {}
    for setting, scope in PAIRS_SCOPES.items():
        for m in _validated(metrics_for("lareqa")):
            values[val_key(m, scope)] = _float(res["settings"][setting][m.name])
    for m in _validated(metrics_over("languages")):
        agg = res[m.name]
        values[val_key(m)] = _float(agg["macro"]) if agg.get("n_queries") else math.nan
    return {k: values[k] for k in pairs_keys()}


def validation_results(encoder_dir: str | Path, eval_cfg: EvalConfig) -> list[dict[str, Any]]:
    """The full ``evaluate_retrieval`` results of ``encoder_dir`` on the configured sets (MIRACL, pairs).

    What :func:`validate` condenses into Tune's flat keys, and what ``train --export-all`` puts in
    the model card's evaluation table. Empty when no validation set is configured.
    """
    import torch

    from hybrid_ray.evaluate import evaluate_retrieval
    from hybrid_ray.modeling.encoder import DualEncoder

    if not (eval_cfg.miracl_path or eval_cfg.pairs_path):
        return []
    use_gpu = torch.cuda.is_available()
    encoder = DualEncoder.from_pretrained(encoder_dir)
    if use_gpu:
        encoder = encoder.to("cuda")
    batch_size = int(eval_cfg.batch_size or 64)
    langs = eval_cfg.langs
    max_q = eval_cfg.max_queries_per_lang
    out: list[dict[str, Any]] = []
    if eval_cfg.miracl_path:
        rs = miracl_set(eval_cfg.miracl_path, langs, eval_cfg.miracl_split or "dev", max_q)
        out.append(evaluate_retrieval(encoder, rs, setting="miracl", batch_size=batch_size, use_gpu=use_gpu))
    if eval_cfg.pairs_path:
        rs = pairs_set(eval_cfg.pairs_path, eval_cfg.pairs_split, langs, max_q)
        out.append(evaluate_retrieval(encoder, rs, setting="lareqa", batch_size=batch_size, use_gpu=use_gpu))
    return out


def validate(encoder_dir: str | Path, eval_cfg: EvalConfig) -> dict[str, float]:
    """Load the encoder exported at a checkpoint and score it on the configured validation sets.

    ``eval_cfg`` is the ``eval`` section of the training config (:class:`hybrid_ray.config.EvalConfig`).
    Returns the keys of :func:`miracl_keys` and/or :func:`pairs_keys` plus ``val_time_s``.
    """
    t0 = time.perf_counter()
    out: dict[str, float] = {}
    if not (eval_cfg.miracl_path or eval_cfg.pairs_path):
        return out
    for res in validation_results(encoder_dir, eval_cfg):
        out.update(miracl_values(res) if res["setting"] == "miracl" else pairs_values(res))
    out["val_time_s"] = time.perf_counter() - t0
    return out
