"""Cluster-wide InfoNCE: every query is scored against the passages of the *whole* global batch.

Why gather across ranks: the paper's batch of 100 is the unit of the method (a mono batch is 100
same-language triplets, the in-batch negatives are the other 99). Split over W ranks, a rank that
only saw its own b = B/W passages would train with W times fewer (and, for a mono batch,
differently distributed) negatives. Gathering passages with gradient makes the W-rank run equal to
the single-process run on the global batch: rank r's loss is the mean over its queries, the
trainer (DDP / DeepSpeed) averages gradients over ranks, and since ``gather_with_grad`` sums each
passage's gradient over all rank losses, the averaged gradient is exactly the gradient of
``mean_r loss_r`` = the global-batch loss (``tests/test_loss.py`` checks this numerically).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_ray.distributed import gather_with_grad, rank
from hybrid_ray.errors import ConfigError, DataError
from hybrid_ray.losses.registry import register_loss


@register_loss("infonce")
class DistributedInfoNCE(nn.Module):
    """InfoNCE over (query, positive, hard negatives) with in-batch negatives from all ranks.

    ``forward(q [b, d], p [b * (1 + n_neg), d])``: ``p`` holds the b positives (row i is query i's)
    followed by the b * n_neg hard negatives. Scores are ``q · p * logit_scale`` with
    ``logit_scale = 1 / temperature`` unless a (possibly learned) ``logit_scale`` is passed.
    Embeddings are expected L2-normalised (cosine similarity, as in the paper).
    """

    needs_encoder = False  # called on embeddings (see hybrid_ray.losses.registry)

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError("must be > 0", key="model.temperature", value=temperature)
        self.temperature = float(temperature)

    def scores_and_labels(
        self, q: torch.Tensor, p: torch.Tensor, logit_scale: torch.Tensor | float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[b, W * b * (1 + n_neg)]`` of local queries vs global passages, and targets.

        Rank r's passages occupy global rows ``[r * m, (r + 1) * m)`` with ``m = p.shape[0]``, and
        local query i's positive is local passage row i, so its label is ``r * m + i``.
        """
        b, m = q.shape[0], p.shape[0]
        if b == 0 or m % b:
            raise DataError(
                f"passages ({m}) must be b positives + b * n_neg negatives for b = {b} queries"
            )
        all_p = gather_with_grad(p)
        scale = 1.0 / self.temperature if logit_scale is None else logit_scale
        logits = (q @ all_p.T) * scale
        labels = torch.arange(b, device=q.device) + rank() * m
        return logits, labels

    def forward(
        self, q: torch.Tensor, p: torch.Tensor, logit_scale: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        logits, labels = self.scores_and_labels(q, p, logit_scale)
        # bf16/fp16 logits lose the small differences the softmax needs: do the CE in >= fp32.
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return F.cross_entropy(logits, labels)
