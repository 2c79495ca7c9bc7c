"""Partial fine-tuning: train only the top N transformer layers of a BERT / XLM-R style encoder.

Why: on a CPU the backward pass through all 12 layers of e5-small dominates a step; training the
top few layers (everything below, the embeddings included, frozen) keeps most of the adaptation at
a fraction of the cost, which is what makes a seeds x alpha experiment fit on a small machine. The
logit scale (on the DualEncoder, not the HF model) is left as configured.
"""

from __future__ import annotations

from torch import nn

from hybrid_ray.errors import ConfigError

KEY = "model.train_top_layers"


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers (``model.encoder.layer``: BERT, XLM-R, E5, LaBSE, ...)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ConfigError(f"{type(model).__name__} has no recognisable transformer layers (expected "
                          "model.encoder.layer as in BERT / XLM-R)", key=KEY)
    return layers


def train_top_layers(model: nn.Module, n: int) -> None:
    """Freeze every parameter of ``model`` except those of its top ``n`` layers and its pooler."""
    layers = encoder_layers(model)
    if not 1 <= n <= len(layers):
        raise ConfigError(f"must be between 1 and the model's {len(layers)} layers", key=KEY, value=n)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(layers[len(layers) - n:])
    pooler = getattr(model, "pooler", None)
    if isinstance(pooler, nn.Module):
        trainable.append(pooler)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
