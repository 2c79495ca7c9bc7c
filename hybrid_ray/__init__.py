"""hybrid-ray: train, tune and serve multilingual dense retrievers with hybrid batch training.

The public API is small; everything else is an implementation detail of the drivers.
"""

from __future__ import annotations

from hybrid_ray.local import apply_loopback_env as _apply_loopback_env
from hybrid_ray.local import on_cluster as _on_cluster

__version__ = "0.1.0"

# Local runs stay on 127.0.0.1: this must happen before Ray is imported anywhere.
if not _on_cluster():
    _apply_loopback_env()

_LAZY = {
    "DualEncoder": "hybrid_ray.modeling.encoder",
    "EncoderConfig": "hybrid_ray.modeling.encoder",
    "HybridBatchSampler": "hybrid_ray.sampler",
    "GlobalBatch": "hybrid_ray.sampler",
    "DistributedInfoNCE": "hybrid_ray.losses",
    "RetrievalSet": "hybrid_ray.data.retrieval",
    "ParallelPairs": "hybrid_ray.data.parallel",
    "read_pairs": "hybrid_ray.data.pairs",
    "write_pairs": "hybrid_ray.data.pairs",
    "load_config": "hybrid_ray.config",
    "build_trainer": "hybrid_ray.train",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """Import lazily so ``import hybrid_ray`` does not pull in torch / Ray."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hybrid_ray' has no attribute {name!r}")
