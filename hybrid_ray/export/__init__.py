"""Exports of a trained encoder directory for the wider ecosystem.

A hybrid-ray encoder directory is a Hugging Face ``save_pretrained`` layout plus
``hybrid_ray_encoder.json`` (pooling, prefixes, normalisation). Tools outside this project never
read that file, so they silently embed with the wrong pooling and without the prefixes. The
modules here translate it into what those tools do read:

- :mod:`hybrid_ray.export.sentence_transformers`: the sentence-transformers layout (modules.json,
  pooling, normalisation, prompts), which MTEB and the vector-database integrations load;
- :mod:`hybrid_ray.export.onnx`: an ONNX graph (+ int8) and :class:`OnnxEncoder`, a drop-in CPU
  backend for ``DualEncoder.encode``;
- :mod:`hybrid_ray.export.backend`: the ``torch | onnx | onnx-int8 | auto`` switch of eval, index
  and Serve (:func:`load_encoder`), exporting a missing graph once into the ONNX cache;
- :mod:`hybrid_ray.export.model_card`: README.md with Hugging Face model-card metadata;
- :mod:`hybrid_ray.export.bundle`: whole exports (``hybrid-ray export``, :func:`export_all`).

Nothing here is imported by ``import hybrid_ray.export``: onnxruntime and torch load on first use.
"""

from __future__ import annotations

__all__ = ["export_all", "export_model", "load_encoder"]


def __getattr__(name: str):
    """Lazy re-exports, so importing the package does not import torch or onnxruntime."""
    if name in ("export_all", "export_model"):
        from hybrid_ray.export import bundle

        return getattr(bundle, name)
    if name == "load_encoder":
        from hybrid_ray.export.onnx import load_encoder

        return load_encoder
    raise AttributeError(f"module 'hybrid_ray.export' has no attribute {name!r}")
