"""DistributedInfoNCE: labels, and W-rank == single-process equivalence of loss and gradients.

The equivalence covers the fixed temperature and the learnable one the training loop uses
(``engine(**q, return_scale=True)`` -> ``loss_fn(q, p, logit_scale=scale)``), including the gradient
of the temperature parameter itself.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from hybrid_ray.distributed import gather_with_grad, rank, world_size
from hybrid_ray.losses import DistributedInfoNCE

B_LOCAL, WORLD, SEQ, VOCAB, N_NEGS = 3, 2, 5, 50, (0, 2)
# (n_neg, learn_temperature); a learned temperature starts away from the loss's fixed 0.05 so
# that using the wrong one would show.
CASES = [(n, learn) for n in N_NEGS for learn in (False, True)]
FIXED_T, LEARNED_T0 = 0.05, 0.07


class TinyEncoder(nn.Module):
    """Bag of embeddings + linear + L2 norm: enough parameters to compare gradients exactly.

    Like ``DualEncoder``, the temperature lives in the model as ``logit_scale`` = log(1/T), shape
    [1], trainable only when ``learn``, and ``forward(..., return_scale=True)`` returns exp of it.
    """

    def __init__(self, learn: bool = False) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(VOCAB, 16, mode="mean")
        self.proj = nn.Linear(16, 8)
        t0 = LEARNED_T0 if learn else FIXED_T
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1 / t0)]), requires_grad=learn)

    def forward(self, ids: torch.Tensor, return_scale: bool = False):
        emb = F.normalize(self.proj(self.emb(ids)), dim=-1)
        return (emb, self.logit_scale.exp().reshape(())) if return_scale else emb


def _make_model(learn: bool = False) -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder(learn).double()


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


def _global_data(n_neg: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids of the GLOBAL batch: queries [2B], positives [2B], negatives [2B * n_neg]."""
    g = torch.Generator().manual_seed(1 + n_neg)
    n = B_LOCAL * WORLD
    return (
        torch.randint(0, VOCAB, (n, SEQ), generator=g),
        torch.randint(0, VOCAB, (n, SEQ), generator=g),
        torch.randint(0, VOCAB, (n * n_neg, SEQ), generator=g),
    )


def _reference(n_neg: int, learn: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """Plain single-process InfoNCE on the global batch (written independently of the module)."""
    model = _make_model(learn)
    q_ids, p_ids, n_ids = _global_data(n_neg)
    q = model(q_ids)
    p = model(torch.cat([p_ids, n_ids])) if n_neg else model(p_ids)
    scale = torch.exp(model.logit_scale[0]) if learn else 1 / FIXED_T
    logits = q @ p.T * scale
    loss = F.cross_entropy(logits, torch.arange(q.shape[0]))
    loss.backward()
    return float(loss.detach()), {k: v.grad.clone() for k, v in _trainable(model).items()}


def _worker(r: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=r, world_size=WORLD, init_method=f"tcp://127.0.0.1:{port}")
    try:
        results = {"rank": rank(), "world": world_size()}
        for n_neg, learn in CASES:
            model = _make_model(learn)
            q_ids, p_ids, n_ids = _global_data(n_neg)
            mine = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
            mine_neg = slice(r * B_LOCAL * n_neg, (r + 1) * B_LOCAL * n_neg)
            loss_fn = DistributedInfoNCE(temperature=FIXED_T)
            if learn:  # as hybrid_ray/train_loop.py does it
                q, scale = model(q_ids[mine], return_scale=True)
                p = model(torch.cat([p_ids[mine], n_ids[mine_neg]]))
                loss = loss_fn(q, p, logit_scale=scale)
            else:
                q = model(q_ids[mine])
                p = model(torch.cat([p_ids[mine], n_ids[mine_neg]]))
                loss = loss_fn(q, p)
            _, labels = loss_fn.scores_and_labels(q.detach(), p.detach())
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= WORLD
            grads = {}
            for k, v in _trainable(model).items():  # what DDP / DeepSpeed do: average over ranks
                g = v.grad.clone()
                dist.all_reduce(g)
                grads[k] = g / WORLD
            results[(n_neg, learn)] = {"loss": float(mean_loss), "rank_loss": float(loss), "grads": grads,
                              "labels": labels}
        torch.save(results, Path(out_dir) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize(("n_neg", "learn"), CASES)
def test_two_ranks_equal_single_process(two_rank_results: list[dict], n_neg: int, learn: bool) -> None:
    ref_loss, ref_grads = _reference(n_neg, learn)
    # The temperature is a trained parameter exactly when it is learnable.
    assert ("logit_scale" in ref_grads) is learn
    if learn:
        assert float(ref_grads["logit_scale"].abs()) > 1e-6  # a real gradient to compare
    for res in two_rank_results:
        got = res[(n_neg, learn)]
        assert got["loss"] == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
        assert set(got["grads"]) == set(ref_grads)
        for k, g in ref_grads.items():
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-9, atol=1e-12)
    # The per-rank losses differ (different queries) but average to the global loss.
    rank_losses = [res[(n_neg, learn)]["rank_loss"] for res in two_rank_results]
    assert sum(rank_losses) / WORLD == pytest.approx(ref_loss, rel=1e-10)


def test_learned_temperature_changes_the_loss(two_rank_results: list[dict]) -> None:
    """The passed scale is really used: T=0.07 and the fixed T=0.05 give different losses."""
    for n_neg in N_NEGS:
        fixed, learned = (two_rank_results[0][(n_neg, learn)]["loss"] for learn in (False, True))
        assert learned != pytest.approx(fixed, rel=1e-6)


@pytest.mark.parametrize("n_neg", N_NEGS)
def test_labels_point_at_global_positive_rows(two_rank_results: list[dict], n_neg: int) -> None:
    m = B_LOCAL * (1 + n_neg)  # passages per rank
    for r, res in enumerate(two_rank_results):
        assert res["rank"] == r and res["world"] == WORLD
        for learn in (False, True):
            assert res[(n_neg, learn)]["labels"].tolist() == [r * m + i for i in range(B_LOCAL)]


def test_single_process_hand_built_case() -> None:
    """Query i matches passage i exactly; negatives are orthogonal: labels and logits by hand."""
    e = torch.eye(6, dtype=torch.float64)
    q = e[:2]
    p = torch.cat([e[:2], e[2:6]])  # 2 positives, then 2 * 2 negatives
    loss_fn = DistributedInfoNCE(temperature=0.5)
    logits, labels = loss_fn.scores_and_labels(q, p)
    assert labels.tolist() == [0, 1]
    assert logits.shape == (2, 6)
    assert torch.equal(logits.argmax(1), labels)
    # positive logit 2, five others 0: loss = -log(e^2 / (e^2 + 5))
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 5))
    assert float(loss_fn(q, p)) == pytest.approx(expected, rel=1e-12)
    # A learned logit scale overrides the temperature.
    assert float(loss_fn(q, p, logit_scale=2.0)) == pytest.approx(expected, rel=1e-12)


def test_gather_is_identity_without_process_group() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
    assert rank() == 0 and world_size() == 1


def test_rejects_misshaped_passages() -> None:
    with pytest.raises(ValueError, match="positives"):
        DistributedInfoNCE()(torch.randn(3, 4), torch.randn(4, 4))
