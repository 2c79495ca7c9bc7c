"""CachedInfoNCE (GradCache): the same loss and gradients as the plain DistributedInfoNCE.

Single process, several chunk sizes, fixed and learned temperature, with and without hard
negatives, on the exact (float64) toy encoder of ``tests/test_loss.py``; and a dropout model where
the chunks must replay their own dropout masks (the RNG save/restore) to match the chunked forward.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybrid_ray.errors import ConfigError
from hybrid_ray.losses import CachedInfoNCE, DistributedInfoNCE, build_loss, needs_encoder
from tests.test_loss import CASES, FIXED_T, _global_data, _make_model, _trainable


def _plain(model: nn.Module, q: torch.Tensor, p: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    q_emb, scale = model(q, return_scale=True)
    loss = DistributedInfoNCE(FIXED_T)(q_emb, model(p), logit_scale=scale)
    loss.backward()
    return float(loss.detach()), {k: v.grad.clone() for k, v in _trainable(model).items()}


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 100])
@pytest.mark.parametrize(("n_neg", "learn"), CASES)
def test_cached_equals_plain_single_process(chunk_size: int, n_neg: int, learn: bool) -> None:
    q, p, n = _global_data(n_neg)
    passages = torch.cat([p, n])
    ref_loss, ref_grads = _plain(_make_model(learn), q, passages)
    model = _make_model(learn)
    calls = []
    loss, scale = CachedInfoNCE(FIXED_T, chunk_size=chunk_size).step(
        model, {"ids": q}, {"ids": passages}, backward=lambda t: (calls.append(1), t.backward()))
    assert calls == [1]  # ONE backward per step, whatever the number of chunks
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    got = {k: v.grad for k, v in _trainable(model).items()}
    assert set(got) == set(ref_grads)
    for k, g in ref_grads.items():
        torch.testing.assert_close(got[k], g, rtol=1e-10, atol=1e-12)


class _DropoutEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.EmbeddingBag(50, 16, mode="mean")
        self.drop = nn.Dropout(0.3)
        self.proj = nn.Linear(16, 8)

    def forward(self, ids: torch.Tensor, return_scale: bool = False):
        emb = nn.functional.normalize(self.proj(self.drop(self.emb(ids))), dim=-1)
        return (emb, torch.tensor(1 / FIXED_T)) if return_scale else emb


def test_dropout_masks_replayed_per_chunk() -> None:
    """With dropout, cached == the loss over the same chunked forwards (same masks, same RNG order)."""
    q, p, n = _global_data(2)
    passages = torch.cat([p, n]).to(torch.long)
    ref = _DropoutEncoder().double()
    torch.manual_seed(5)
    q_emb = torch.cat([ref(c) for c in q.split(2)])
    p_emb = torch.cat([ref(c) for c in passages.split(2)])
    ref_loss = DistributedInfoNCE(FIXED_T)(q_emb, p_emb)
    ref_loss.backward()
    model = _DropoutEncoder().double()
    torch.manual_seed(5)
    loss, _ = CachedInfoNCE(FIXED_T, chunk_size=2).step(model, {"ids": q}, {"ids": passages})
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12)
    for (name, a), b in zip(ref.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_registered_and_checked() -> None:
    loss = build_loss("cached_infonce", 0.05, {"chunk_size": 8})
    assert isinstance(loss, CachedInfoNCE) and loss.chunk_size == 8 and needs_encoder(loss)
    assert not needs_encoder(build_loss("infonce", 0.05))
    with pytest.raises(ConfigError, match="chunk_size"):
        CachedInfoNCE(chunk_size=0)
