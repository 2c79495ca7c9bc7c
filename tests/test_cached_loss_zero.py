"""Must-show: under DeepSpeed ZeRO-2 on 2 gloo workers x B, the cached (GradCache) loss and the plain
loss both give the loss and the update of 1 process x 2B plain InfoNCE, with hard negatives.

Why an SGD step and not ``param.grad``: ZeRO-2 reduces and partitions gradients inside its
accumulation hooks (the place where Tevatron's and sentence-transformers' caches break), so the
honest check is the parameter update DeepSpeed actually applies. With plain SGD (no momentum, no
weight decay, no clipping) ``(p_after - p_before) / -lr`` is the rank-averaged gradient, which
must equal the single-process gradient of the 2B batch. The model is the tiny BERT with dropout 0
(chunked and whole-batch forwards cannot draw the same masks) and a learned temperature, so the
gradient of the logit scale is compared too. One Ray cluster and ONE TorchTrainer.fit run every
case: each worker builds a fresh engine per case from the same seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

B, WORLD, N_NEG, LR, T0 = 4, 2, 2, 0.5, 0.07
# (loss name, loss kwargs): chunk 3 leaves a short last chunk (queries 3+1, passages 3+3+3+3).
CASES = [("infonce", {}), ("cached_infonce", {"chunk_size": 3}), ("cached_infonce", {"chunk_size": 1})]
WORDS = ["god", "light", "day", "night", "water", "earth", "heaven", "man", "said", "cat", "dog", "house",
         "red", "blue", "green", "one", "two", "three", "hello", "world"]


def _texts() -> tuple[list[str], list[str]]:
    """Global batch: 2B queries; passages = 2B positives, then N_NEG hard negatives per query."""
    import random

    rng = random.Random(3)
    n = B * WORLD
    sigs = [rng.sample(WORDS, 3 + i % 3) for i in range(n)]  # different lengths: real padding
    queries = [" ".join(s) for s in sigs]
    positives = [" ".join(reversed(s)) + " " + rng.choice(WORDS) for s in sigs]
    negatives = [" ".join(sigs[(i + 1 + k) % n][:2] + [rng.choice(WORDS)]) for i in range(n) for k in range(N_NEG)]
    return queries, positives + negatives


def _encoder():
    from hybrid_ray.modeling.encoder import EncoderConfig
    from hybrid_ray.testing import tiny_encoder

    return tiny_encoder(seed=0, dropout=0.0, config=EncoderConfig(max_length=32, temperature=T0,
                                                                   learn_temperature=True))


def _global_inputs(encoder) -> tuple[dict, dict]:
    queries, passages = _texts()
    return dict(encoder.tokenize(queries, "query")), dict(encoder.tokenize(passages, "passage"))


def _rank_inputs(q: dict, p: dict, rank: int) -> tuple[dict, dict]:
    """Rank r's slice, laid out as the collator does: its B positives then its B * N_NEG negatives."""
    n = B * WORLD
    rows_q = slice(rank * B, (rank + 1) * B)
    rows_p = list(range(rank * B, (rank + 1) * B)) + \
        list(range(n + rank * B * N_NEG, n + (rank + 1) * B * N_NEG))
    return {k: v[rows_q] for k, v in q.items()}, {k: v[rows_p] for k, v in p.items()}


def _ds_config() -> dict:
    from hybrid_ray.deepspeed_config import CONFIG_DIR

    conf = json.loads((CONFIG_DIR / "zero2.json").read_text())
    conf.update(train_micro_batch_size_per_gpu=B, gradient_accumulation_steps=1, train_batch_size=B * WORLD,
                gradient_clipping=0.0, zero_allow_untested_optimizer=True)
    return conf


def _worker(config: dict) -> None:
    """Ray Train worker: one ZeRO-2 SGD step per case on this rank's B rows; params + mean loss saved."""
    import deepspeed
    import ray.train
    import torch.distributed as dist

    from hybrid_ray.losses import build_loss, needs_encoder

    deepspeed.init_distributed(dist_backend="gloo")
    rank = ray.train.get_context().get_world_rank()
    results = {}
    for i, (name, kwargs) in enumerate(CASES):
        encoder = _encoder()
        q, p = _rank_inputs(*_global_inputs(encoder), rank)
        params = [x for x in encoder.parameters() if x.requires_grad]
        engine, *_ = deepspeed.initialize(model=encoder, optimizer=torch.optim.SGD(params, lr=LR),
                                          config=_ds_config())
        engine.train()
        loss_fn = build_loss(name, T0, kwargs)
        if needs_encoder(loss_fn):
            loss, _ = loss_fn.step(engine, q, p)
        else:
            q_emb, scale = engine(**q, return_scale=True)
            loss = loss_fn(q_emb, engine(**p), logit_scale=scale)
            engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        results[i] = {"loss": float(mean) / WORLD, "rank_loss": float(loss.detach()),
                      "params": {k: v.detach().clone() for k, v in engine.module.named_parameters()}}
    torch.save(results, Path(config["out"]) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def zero2_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from hybrid_ray.local import init_ray, worker_env

    out = tmp_path_factory.mktemp("zero2-equivalence")
    init_ray(num_cpus=2)
    try:
        TorchTrainer(
            train_loop_per_worker=_worker,
            train_loop_config={"out": str(out)},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=WORLD, resources_per_worker={"CPU": 0.9}),
            run_config=RunConfig(name="zero2-eq", storage_path=str(out / "ray"),
                                 worker_runtime_env={"env_vars": {**worker_env(), "OMP_NUM_THREADS": "1"}}),
        ).fit()
    finally:
        ray.shutdown()
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _reference(n_neg: int = N_NEG) -> tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """1 process x 2B, plain loss, no DeepSpeed: (loss, params before, params after one SGD step)."""
    from hybrid_ray.losses import DistributedInfoNCE

    encoder = _encoder()
    encoder.train()
    q, p = _global_inputs(encoder)
    if n_neg < N_NEG:  # the negative control: keep only the first n_neg negatives of each query
        n = B * WORLD
        keep = list(range(n)) + [n + i * N_NEG + k for i in range(n) for k in range(n_neg)]
        p = {k: v[keep] for k, v in p.items()}
    before = {k: v.detach().clone() for k, v in encoder.named_parameters()}
    q_emb, scale = encoder(**q, return_scale=True)
    loss = DistributedInfoNCE(T0)(q_emb, encoder(**p), logit_scale=scale)
    loss.backward()
    after = {k: (v - LR * v.grad).detach() if v.grad is not None else v.detach().clone()
             for k, v in encoder.named_parameters()}
    return float(loss.detach()), before, after


def _updates(params: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (params[k].double() - before[k].double()) / -LR for k in before}  # = the applied gradient


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{n}{k.get('chunk_size', '')}" for n, k in CASES])
def test_two_zero2_workers_equal_one_process_2b(zero2_results: list[dict], case: int) -> None:
    ref_loss, before, after = _reference()
    ref_grad = _updates(after, before)
    trained = [k for k, g in ref_grad.items() if g.abs().max() > 0]
    assert "logit_scale" in trained and any("encoder.layer.1" in k for k in trained)
    for rank, res in enumerate(zero2_results):
        got = res[case]
        assert got["loss"] == pytest.approx(ref_loss, rel=1e-5), rank
        grad = _updates(got["params"], before)
        assert grad.keys() == ref_grad.keys()
        for key in ref_grad:
            scale = float(ref_grad[key].abs().max()) or 1.0
            # float32 forward/backward over a different reduction order; the update itself is
            # read back as a difference of float32 weights (|w| ~ 0.02-1, ulp ~ 1e-7 x |w| / LR).
            torch.testing.assert_close(grad[key], ref_grad[key], rtol=2e-3, atol=2e-6 + 1e-4 * scale,
                                       msg=f"{CASES[case]} rank {rank} {key}")
    # The two ranks saw different queries: their own losses differ, their mean is the global loss.
    losses = [res[case]["rank_loss"] for res in zero2_results]
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    assert sum(losses) / WORLD == pytest.approx(ref_loss, rel=1e-5)


def test_hard_negatives_change_the_update_beyond_the_tolerance(zero2_results: list[dict]) -> None:
    """Negative control: dropping one hard negative per query moves the reference update well past the
    tolerance above, so the equivalence really covers the hard negatives and the cross-rank gather."""
    ref_loss, before, after = _reference()
    fewer_loss, _, fewer_after = _reference(n_neg=1)
    assert abs(fewer_loss - ref_loss) > 1e-3
    ref_grad, fewer_grad = _updates(after, before), _updates(fewer_after, before)
    worst = max(float((ref_grad[k] - fewer_grad[k]).abs().max() / (ref_grad[k].abs().max() or 1.0))
                for k in ref_grad)
    assert worst > 1e-2  # 100x the relative tolerance
    cached = _updates(zero2_results[0][1]["params"], before)
    worst_cached = max(float((cached[k] - fewer_grad[k]).abs().max() / (ref_grad[k].abs().max() or 1.0))
                       for k in ref_grad)
    assert worst_cached > 1e-2
