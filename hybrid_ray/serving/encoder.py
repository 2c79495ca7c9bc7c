"""The query encoder of a serving replica: loaded once, on the GPU Ray assigned, checked against the index."""

from __future__ import annotations

from typing import Any

from hybrid_ray.errors import ConfigError


def load_encoder(model_dir: str, use_gpu: bool, num_threads: float, backend: str = "torch",
                 onnx_cache_dir: str | None = None) -> Any:
    """The replica's encoder, threads capped at its CPUs (``num_threads``).

    ``backend`` (``torch`` | ``onnx`` | ``onnx-int8`` | ``auto``, :mod:`hybrid_ray.export.backend`):
    a ``DualEncoder`` in eval mode, on CUDA when ``use_gpu`` and one is visible; or an
    ``OnnxEncoder`` on CPU, its graph exported into ``onnx_cache_dir`` first when the model
    directory holds none.
    """
    import torch

    from hybrid_ray.export.backend import open_encoder, resolve_backend

    threads = int(num_threads) if num_threads >= 1 else None
    if threads:
        torch.set_num_threads(threads)
    resolved = resolve_backend(model_dir, backend, cache_dir=onnx_cache_dir)
    encoder = open_encoder(model_dir, resolved, threads=threads)
    if resolved.uses_gpu and use_gpu and torch.cuda.is_available():
        encoder = encoder.to("cuda")
    return encoder


def check_encoder(encoder: Any, manifest: dict[str, Any], model_dir: str) -> None:
    """ConfigError when the encoder's dimension is not the index's: it was built with another model."""
    if int(encoder.dim) != int(manifest["dim"]):
        raise ConfigError(f"encoder dim {encoder.dim} != index dim {manifest['dim']}: the index was built "
                          "with another model", key="model_dir", value=model_dir)
