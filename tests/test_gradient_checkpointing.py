"""``model.gradient_checkpointing``: the same loss and gradients as without, at recomputed activations.

Non-reentrant checkpointing restores the RNG state for the recompute, so even with the tiny
BERT's dropout 0.1 the two runs draw the same masks from the same seed: the comparison is exact up
to float32 reduction order, and dropout stays on (the training setting). That the layers really
are recomputed is checked by counting their forwards.
"""

from __future__ import annotations

import pytest
import torch

from hybrid_ray.config import ModelConfig
from hybrid_ray.losses import build_loss, needs_encoder
from hybrid_ray.train_loop import build_encoder

QUERIES = ["god said let there be light", "the cat and the dog", "one two three", "red blue green house"]
PASSAGES = ["let there be light said god", "a dog and a cat", "three two one", "a green house",
            "water and earth", "the night and the day", "hello world", "heaven and earth"]


def _run(checkpointing: bool, loss_name: str = "infonce", kwargs: dict | None = None):
    encoder = build_encoder(ModelConfig(name_or_path="tiny", max_length=32, gradient_checkpointing=checkpointing))
    encoder.train()
    inner = encoder.model.encoder.layer[0].attention  # inside the checkpointed layer forward
    calls = []
    inner.register_forward_pre_hook(lambda *_: calls.append(1))
    q = dict(encoder.tokenize(QUERIES, "query"))
    p = dict(encoder.tokenize(PASSAGES, "passage"))
    loss_fn = build_loss(loss_name, 0.05, kwargs)
    torch.manual_seed(11)
    if needs_encoder(loss_fn):
        loss, _ = loss_fn.step(encoder, q, p)
    else:
        q_emb, scale = encoder(**q, return_scale=True)
        loss = loss_fn(q_emb, encoder(**p), logit_scale=scale)
        loss.backward()
    grads = {k: v.grad.clone() for k, v in encoder.named_parameters() if v.grad is not None}
    return float(loss.detach()), grads, len(calls)


@pytest.mark.parametrize(("loss_name", "kwargs"), [("infonce", {}), ("cached_infonce", {"chunk_size": 3})])
def test_checkpointed_equals_plain(loss_name: str, kwargs: dict) -> None:
    ref_loss, ref_grads, ref_calls = _run(False, loss_name, kwargs)
    loss, grads, calls = _run(True, loss_name, kwargs)
    # Recomputed: the layer's graph forwards run again in the backward (plain: 2 -> 4; cached: its
    # 5 graph chunks, already replayed once by its own checkpoint, replay once more: 15 -> 20).
    assert calls == {"infonce": 2 * ref_calls, "cached_infonce": ref_calls + ref_calls // 3}[loss_name]
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys() and any("encoder.layer.1" in k for k in grads)
    for key, ref in ref_grads.items():
        torch.testing.assert_close(grads[key], ref, rtol=1e-4, atol=1e-7, msg=key)


def test_dropout_is_on_so_the_match_is_not_trivial() -> None:
    """Two plain runs from different seeds differ: the masks matter, and checkpointing replayed them."""
    a, _, _ = _run(False)
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name_or_path="tiny", max_length=32))
    encoder.train()
    q = dict(encoder.tokenize(QUERIES, "query"))
    p = dict(encoder.tokenize(PASSAGES, "passage"))
    torch.manual_seed(12)
    q_emb, scale = encoder(**q, return_scale=True)
    b = float(build_loss("infonce", 0.05)(q_emb, encoder(**p), logit_scale=scale).detach())
    assert b != pytest.approx(a, rel=1e-4)
