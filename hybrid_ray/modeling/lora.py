"""LoRA adapters (``model.lora``) through ``peft``, and merging them back into a plain encoder.

Why merge at every export: serving, ONNX, sentence-transformers and the index all load a plain
Hugging Face directory (``hybrid_ray.export.model_dir``); a merged LoRA model is exactly that, so
nothing downstream learns about adapters. The adapter itself (a few hundred KB) is kept apart in
checkpoints (``adapter/``) for whoever wants to ship or stack it.

Merging builds a *fresh* copy (a new base model from the config, the trained state loaded into a
new ``PeftModel``, ``merge_and_unload``) instead of deep-copying the training module: under ZeRO-3
that module carries DeepSpeed's partitioning hooks, and the copy must not disturb the live one.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hybrid_ray.errors import ConfigError, ModelError
from hybrid_ray.io import atomic_dir
from hybrid_ray.modeling.encoder import ENCODER_FILE, DualEncoder

if TYPE_CHECKING:
    from hybrid_ray.config import LoraSettings

BASE_KEY = "lora_base_model"  # in an adapter directory's hybrid_ray_encoder.json: the model it adapts


def _peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - peft is a dependency
        raise ConfigError(f"model.lora needs the 'peft' package ({exc}); run 'make env'", key="model.lora") from exc
    return peft


def is_lora(encoder: DualEncoder) -> bool:
    """True when the encoder's transformer is wrapped in peft adapters."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(encoder.model, PeftModel)


def apply_lora(encoder: DualEncoder, settings: LoraSettings) -> DualEncoder:
    """Wrap ``encoder.model`` in LoRA adapters (in place; returns the encoder). Base weights freeze."""
    peft = _peft()
    lora = peft.LoraConfig(r=int(settings.r), lora_alpha=float(settings.alpha), lora_dropout=float(settings.dropout),
                           target_modules=list(settings.target_modules), bias="none")
    try:
        encoder.model = peft.get_peft_model(encoder.model, lora)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"LoRA cannot be applied: {exc}", key="model.lora.target_modules",
                          value=list(settings.target_modules)) from exc
    return encoder


def _fresh_base(base: torch.nn.Module) -> torch.nn.Module:
    """A new, randomly initialised model of ``base``'s class and config (its weights are loaded next)."""
    config = copy.deepcopy(base.config)
    try:
        return type(base)(config, add_pooling_layer=False)
    except TypeError:  # models without a pooler option
        return type(base)(config)


def merged_copy(encoder: DualEncoder) -> DualEncoder:
    """A plain-HF ``DualEncoder`` (float32, CPU) whose weights are the LoRA model's, adapters merged.

    Under ZeRO-3, call it inside ``deepspeed.zero.GatheredParameters`` (``hybrid_ray.checkpoint``).
    """
    if not is_lora(encoder):
        raise ModelError("merged_copy needs an encoder with LoRA adapters (model.lora)")
    peft = _peft()
    live = encoder.model
    fresh = peft.get_peft_model(_fresh_base(live.get_base_model()), copy.deepcopy(live.peft_config["default"]))
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in live.state_dict().items()}
    fresh.load_state_dict(state, strict=True)
    merged = fresh.merge_and_unload()
    merged.eval()
    out = DualEncoder(merged, encoder.tokenizer, copy.deepcopy(encoder.config))
    out.logit_scale.data.copy_(encoder.logit_scale.detach().to("cpu", torch.float32).reshape(1))
    return out


def save_adapter(encoder: DualEncoder, out_dir: str | Path, base: str | None = None) -> Path:
    """Write the adapter (peft layout) + ``hybrid_ray_encoder.json`` + tokenizer, atomically.

    ``base``: the ``model.name_or_path`` it was trained on, recorded for :func:`load_adapter`.
    """
    if not is_lora(encoder):
        raise ModelError("save_adapter needs an encoder with LoRA adapters (model.lora)")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in encoder.model.state_dict().items()}
        encoder.model.save_pretrained(tmp, state_dict=state)
        encoder.tokenizer.save_pretrained(tmp)
        meta = asdict(encoder.config) | {"logit_scale": float(encoder.logit_scale.detach().reshape(-1)[0])}
        if base:
            meta[BASE_KEY] = str(base)
        (tmp / ENCODER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def load_adapter(adapter_dir: str | Path, base: str | Path | None = None) -> DualEncoder:
    """A LoRA ``DualEncoder`` from :func:`save_adapter`'s directory on its base model.

    ``base``: the base encoder directory (default: ``base_model_name_or_path`` of the adapter).
    """
    peft = _peft()
    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{str(adapter_dir)!r} is not a LoRA adapter directory: adapter_config.json is missing")
    from hybrid_ray.modeling.builders import get_model_builder
    from hybrid_ray.modeling.encoder_config import EncoderConfig

    meta = json.loads((adapter_dir / ENCODER_FILE).read_text()) if (adapter_dir / ENCODER_FILE).is_file() else {}
    base = str(base or meta.get(BASE_KEY) or json.loads(cfg_path.read_text()).get("base_model_name_or_path") or "")
    if not base:
        raise ModelError(f"{str(adapter_dir)!r} names no base model; pass the base encoder directory")
    builder = get_model_builder(base)
    encoder = builder(EncoderConfig.from_dict(meta)) if builder is not None else DualEncoder.from_pretrained(base)
    encoder.model = peft.PeftModel.from_pretrained(encoder.model, str(adapter_dir))
    if meta:
        encoder.config = EncoderConfig.from_dict(meta)
        if "logit_scale" in meta:
            encoder.logit_scale.data.fill_(float(meta["logit_scale"]))
    return encoder


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base: str | Path | None = None) -> Path:
    """Export a saved adapter as a plain, merged hybrid-ray encoder directory (what serving loads)."""
    return merged_copy(load_adapter(adapter_dir, base)).save_pretrained(out_dir)
