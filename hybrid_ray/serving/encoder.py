"""The query encoder of a serving replica: loaded once, on the GPU Ray assigned, checked against the index."""

from __future__ import annotations

from typing import Any

from hybrid_ray.errors import ConfigError


def load_encoder(model_dir: str, use_gpu: bool, num_threads: float) -> Any:
    """A ``DualEncoder`` in eval mode; torch threads capped at the replica's CPUs (``num_threads``)."""
    import torch

    from hybrid_ray.modeling.encoder import DualEncoder

    if num_threads >= 1:
        torch.set_num_threads(int(num_threads))
    encoder = DualEncoder.from_pretrained(model_dir)
    if use_gpu and torch.cuda.is_available():
        encoder = encoder.to("cuda")
    return encoder.eval()


def check_encoder(encoder: Any, manifest: dict[str, Any], model_dir: str) -> None:
    """ConfigError when the encoder's dimension is not the index's: it was built with another model."""
    if int(encoder.dim) != int(manifest["dim"]):
        raise ConfigError(f"encoder dim {encoder.dim} != index dim {manifest['dim']}: the index was built "
                          "with another model", key="model_dir", value=model_dir)
