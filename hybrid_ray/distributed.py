"""torch.distributed helpers for the cross-rank contrastive loss.

``gather_with_grad`` is the one place that moves embeddings between ranks. torch 2.13 deprecates
``torch.distributed.nn.functional.all_gather`` and its named successor in
``torch.distributed._functional_collectives`` back-propagates through ``reduce_scatter``, which
gloo (our CPU / test backend) does not implement. So we use a small autograd Function over the
stable c10d collectives instead: forward ``all_gather``, backward the *sum* over ranks of the
gradient of the rank's own slice (``reduce_scatter`` on NCCL/XCCL, ``all_reduce`` + slice
elsewhere). Summing is what makes the gradient right: every rank's loss depends on every rank's
passages, so a passage's gradient is the sum of the gradients of all rank losses.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate equal-shaped tensors of all ranks along dim 0, keeping gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        world = dist.get_world_size()
        ctx.rank, ctx.world, ctx.n = dist.get_rank(), world, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        backend = dist.get_backend()
        if backend in ("nccl", "xccl"):
            out = torch.empty((ctx.n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        # gloo has no reduce_scatter: all_reduce the whole (small) gradient, keep our rows.
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated along dim 0 in rank order, differentiable.

    Every rank must pass the same shape (the sampler and collator guarantee equal local batches)
    and must later call backward (the backward is itself a collective). Identity when not
    distributed, so the same loss code runs single-process.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)
