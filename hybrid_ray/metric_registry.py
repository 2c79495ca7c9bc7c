"""The metric table: every number hybrid-ray reports, with its label, direction and how it is computed.

Evaluation (:mod:`hybrid_ray.evaluate`) computes the metrics listed here for each setting,
validation (:mod:`hybrid_ray.validation`) derives its ``val_*`` keys from the same rows, and the
tuning and report code looks up labels and ``max`` / ``min`` modes with :func:`get_metric` /
:func:`metric_mode` (which also accept those ``val_*`` keys). So a new metric is one
:func:`register_metric` call, from any module or test, and nothing else changes.

How a metric is computed (``over``):

* ``"ranking"``: per query, over one ranked candidate list. Either a trec_eval measure
  (``trec_measure``, run by pytrec_eval, see :mod:`hybrid_ray.metrics`) or ``per_query(ranks,
  n_relevant)``: a callable over the 1-based ranks (ascending) of the query's relevant documents
  in the ranking and the number of relevant documents in the searched pool. Either way the mean
  is over the queries that have a relevant document;
* ``"languages"``: per query, over the best pool rank of its relevant candidate in each language
  of the multilingual (LAReQA) setting, ``per_query(ranks, n_languages)``; language bias is one;
* ``"training"``: reported by the training loop (the loss); listed for its direction only.

``settings`` says where evaluation reports a ranking metric, as ``{setting: column position}``:
``lareqa`` (every language pair, mono / cross / multilingual) and ``miracl`` (every language).
``val_name`` makes validation report it (``val_miracl_<val_name>``, ``val_mono_<val_name>``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hybrid_ray.errors import ConfigError
from hybrid_ray.registry import Registry

Over = Literal["ranking", "languages", "training"]
PerQuery = Callable[[np.ndarray, int], float]


@dataclass(frozen=True)
class Metric:
    """One row of the metric table."""

    name: str
    label: str
    higher_is_better: bool
    trec_measure: str | None = None
    per_query: PerQuery | None = None
    over: Over = "ranking"
    settings: Mapping[str, int] = field(default_factory=dict)
    val_name: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        computed = (self.trec_measure is not None) + (self.per_query is not None)
        if self.over == "ranking" and computed != 1:
            raise ConfigError("a ranking metric needs exactly one of trec_measure or per_query",
                              key="metric", value=self.name)
        if self.over == "languages" and self.per_query is None:
            raise ConfigError("a languages metric needs per_query", key="metric", value=self.name)
        if self.over != "ranking" and self.settings:
            raise ConfigError("only ranking metrics are reported per setting", key="metric", value=self.name)

    @property
    def mode(self) -> Literal["max", "min"]:
        """Ray Tune's ``mode`` for this metric."""
        return "max" if self.higher_is_better else "min"


def _metric_error(message: str, name: str) -> ConfigError:
    return ConfigError(message, key="metric", value=name)


METRICS: Registry[Metric] = Registry("metric", _metric_error)


def register_metric(metric: Metric, *, replace: bool = False) -> Metric:
    """Add ``metric`` to the table (ConfigError if the name is taken, unless ``replace``)."""
    return METRICS.register(metric.name, metric, replace=replace)


def unregister_metric(name: str) -> Metric:
    return METRICS.unregister(name)


def find_metric(name: str) -> Metric | None:
    """The metric registered as ``name`` exactly, None when unknown (no ``val_*`` resolution)."""
    return METRICS.find(name)


def val_key(metric: Metric, scope: str | None = None) -> str:
    """The validation key of ``metric``: ``val_<scope>_<val_name>`` (``val_<val_name>`` without scope)."""
    if metric.val_name is None:
        raise ConfigError("metric is not reported at validation (no val_name)", key="metric", value=metric.name)
    return f"val_{scope}_{metric.val_name}" if scope else f"val_{metric.val_name}"


def get_metric(name: str) -> Metric:
    """The metric called ``name``, or the one a validation key (``val_mono_map``) reports.

    A ``val_*`` key resolves to the metric whose ``val_name`` ends it (the longest such name,
    so ``val_name``s may share suffixes). ConfigError listing the known names otherwise.
    """
    metric = METRICS.find(name)
    if metric is not None:
        return metric
    if name.startswith("val_"):
        rest = name[len("val_"):]
        hits = [m for m in METRICS if m.val_name and (rest == m.val_name or rest.endswith("_" + m.val_name))]
        if hits:
            return max(hits, key=lambda m: len(m.val_name or ""))
    return METRICS.get(name)  # raises, listing the registered names


def metric_mode(name: str) -> Literal["max", "min"]:
    """``max`` or ``min`` for a metric name or validation key (what ``TuneConfig(mode=...)`` takes)."""
    return get_metric(name).mode


def metric_label(name: str) -> str:
    return get_metric(name).label


def metrics_for(setting: str) -> list[Metric]:
    """The ranking metrics evaluation reports in ``setting``, in column order."""
    rows = [(m.settings[setting], i, m) for i, m in enumerate(METRICS) if setting in m.settings]
    return [m for _, _, m in sorted(rows, key=lambda r: (r[0], r[1]))]


def metrics_over(over: Over) -> list[Metric]:
    """The metrics computed ``over`` rankings / languages / training, in table order."""
    return [m for m in METRICS if m.over == over]


def rank_spread(ranks: np.ndarray, n: int) -> float:
    """``max(rank) - min(rank)``: language bias of one query (0 = every language ranked alike)."""
    return float(ranks.max() - ranks.min())


# The built-in table. Its order is the default order of trec_eval metrics (DEFAULT_METRICS).
for _metric in (
    Metric("map", "mAP", True, trec_measure="map", settings={"lareqa": 0, "miracl": 2}, val_name="map",
           description="mean average precision over the retrieved list"),
    Metric("recall_1", "R@1", True, trec_measure="recall_1", settings={"lareqa": 1}),
    Metric("recall_10", "R@10", True, trec_measure="recall_10", settings={"lareqa": 2}),
    Metric("recall_100", "R@100", True, trec_measure="recall_100", settings={"miracl": 1}, val_name="recall100"),
    Metric("ndcg_cut_10", "nDCG@10", True, trec_measure="ndcg_cut_10", settings={"miracl": 0}, val_name="ndcg10"),
    Metric("language_bias", "Language bias", False, per_query=rank_spread, over="languages", val_name="lang_bias",
           description="max rank - min rank of parallel answers"),
    Metric("loss", "loss", False, over="training", description="training loss"),
):
    register_metric(_metric)
