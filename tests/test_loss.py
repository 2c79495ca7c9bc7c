"""DistributedInfoNCE: labels, and W-rank == single-process equivalence of loss and gradients."""

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
from hybrid_ray.loss import DistributedInfoNCE

B_LOCAL, WORLD, SEQ, VOCAB, N_NEGS = 3, 2, 5, 50, (0, 2)


class TinyEncoder(nn.Module):
    """Bag of embeddings + linear + L2 norm: enough parameters to compare gradients exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(VOCAB, 16, mode="mean")
        self.proj = nn.Linear(16, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.emb(ids)), dim=-1)


def _make_model() -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder().double()


def _global_data(n_neg: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids of the GLOBAL batch: queries [2B], positives [2B], negatives [2B * n_neg]."""
    g = torch.Generator().manual_seed(1 + n_neg)
    n = B_LOCAL * WORLD
    return (
        torch.randint(0, VOCAB, (n, SEQ), generator=g),
        torch.randint(0, VOCAB, (n, SEQ), generator=g),
        torch.randint(0, VOCAB, (n * n_neg, SEQ), generator=g),
    )


def _reference(n_neg: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Plain single-process InfoNCE on the global batch (written independently of the module)."""
    model = _make_model()
    q_ids, p_ids, n_ids = _global_data(n_neg)
    q = model(q_ids)
    p = model(torch.cat([p_ids, n_ids])) if n_neg else model(p_ids)
    logits = q @ p.T / 0.05
    loss = F.cross_entropy(logits, torch.arange(q.shape[0]))
    loss.backward()
    return float(loss.detach()), {k: v.grad.clone() for k, v in model.named_parameters()}


def _worker(r: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=r, world_size=WORLD, init_method=f"tcp://127.0.0.1:{port}")
    try:
        results = {"rank": rank(), "world": world_size()}
        for n_neg in N_NEGS:
            model = _make_model()
            q_ids, p_ids, n_ids = _global_data(n_neg)
            mine = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
            mine_neg = slice(r * B_LOCAL * n_neg, (r + 1) * B_LOCAL * n_neg)
            q = model(q_ids[mine])
            p = model(torch.cat([p_ids[mine], n_ids[mine_neg]]))
            loss_fn = DistributedInfoNCE(temperature=0.05)
            _, labels = loss_fn.scores_and_labels(q.detach(), p.detach())
            loss = loss_fn(q, p)
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= WORLD
            grads = {}
            for k, v in model.named_parameters():  # what DDP / DeepSpeed do: average over ranks
                g = v.grad.clone()
                dist.all_reduce(g)
                grads[k] = g / WORLD
            results[n_neg] = {"loss": float(mean_loss), "rank_loss": float(loss), "grads": grads,
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


@pytest.mark.parametrize("n_neg", N_NEGS)
def test_two_ranks_equal_single_process(two_rank_results: list[dict], n_neg: int) -> None:
    ref_loss, ref_grads = _reference(n_neg)
    for res in two_rank_results:
        got = res[n_neg]
        assert got["loss"] == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
        for k, g in ref_grads.items():
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-9, atol=1e-12)
    # The per-rank losses differ (different queries) but average to the global loss.
    rank_losses = [res[n_neg]["rank_loss"] for res in two_rank_results]
    assert sum(rank_losses) / WORLD == pytest.approx(ref_loss, rel=1e-10)


@pytest.mark.parametrize("n_neg", N_NEGS)
def test_labels_point_at_global_positive_rows(two_rank_results: list[dict], n_neg: int) -> None:
    m = B_LOCAL * (1 + n_neg)  # passages per rank
    for r, res in enumerate(two_rank_results):
        assert res["rank"] == r and res["world"] == WORLD
        assert res[n_neg]["labels"].tolist() == [r * m + i for i in range(B_LOCAL)]


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
