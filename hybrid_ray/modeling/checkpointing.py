"""``model.gradient_checkpointing``: recompute each transformer layer's activations in the backward.

Why: activation memory grows with batch x sequence x layers; recomputing a layer's forward during
the backward keeps only the layer inputs, for about a third more compute. Applied to
``encoder.model`` in ``train_loop.build_encoder`` (before LoRA, which wraps the model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybrid_ray.modeling.encoder import DualEncoder


def enable_gradient_checkpointing(encoder: DualEncoder) -> None:
    """``model.gradient_checkpointing``: HF per-layer activation checkpointing, non-reentrant.

    Non-reentrant because it works with frozen inputs (frozen embeddings, LoRA), inside
    ``cached_infonce``'s own checkpointed chunks and under ZeRO-3, and it replays the RNG state,
    so dropout masks (and so the gradients) equal the un-checkpointed run's.
    """
    kwargs = {"use_reentrant": False}
    model = encoder.model
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
