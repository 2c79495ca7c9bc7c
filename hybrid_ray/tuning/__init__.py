"""Ray Tune over the hybrid-batch mixing ratio alpha (and lr, temperature, ...) against validation mAP.

``config``: the tune spec (schema, loading, checks); ``search``: the Ray Tune glue (one driver
function per trial running a TorchTrainer); ``results``: rows, best trial, tables, plot, export.
The CLI is ``hybrid_ray.driver.tune`` (``hybrid-ray tune``). Imports are lazy so that
``import hybrid_ray.tuning`` stays cheap.
"""

from __future__ import annotations

_LAZY = {
    "TuneSpec": "hybrid_ray.tuning.config",
    "TuneSchema": "hybrid_ray.tuning.config",
    "load_tune_config": "hybrid_ray.tuning.config",
    "run_search": "hybrid_ray.tuning.search",
    "run_search_from_config": "hybrid_ray.tuning.search",
    "pick_best": "hybrid_ray.tuning.results",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hybrid_ray.tuning' has no attribute {name!r}")
