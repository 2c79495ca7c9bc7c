"""Pieces of the training loop (the loop itself runs in tests/test_train.py).

The checkpoint-loading tests build a real single-process DeepSpeed ZeRO-2 engine on gloo (a few
seconds): DeepSpeed's own ``load_checkpoint`` only warns and returns ``(None, None)`` when it
finds nothing, so ``load_deepspeed_state`` must turn every such case into an error naming the
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from hybrid_ray.checkpoint import CHECKPOINT_STATE, DS_DIR, DS_TAG, load_deepspeed_state, read_trainer_state
from hybrid_ray.errors import CheckpointError
from hybrid_ray.train_loop import _eta, step_seed


def test_eta_from_the_rate_since_start() -> None:
    assert _eta(done=10, elapsed_s=20.0, remaining=30) == "0:01:00"
    assert _eta(done=1, elapsed_s=3600.0, remaining=2) == "2:00:00"
    assert _eta(done=0, elapsed_s=5.0, remaining=10) == "?"  # nothing timed yet
    assert _eta(done=5, elapsed_s=1.0, remaining=0) == "0:00:00"


def test_report_interval_follows_the_controller_poll(monkeypatch, tmp_path: Path) -> None:
    """Unset: 1.25x Ray Train's controller poll (env, default 2 s), so a report never waits for a
    poll; a set value wins; 0 keeps a report every log_every steps; negative is refused by name."""
    from hybrid_ray.config import load_config
    from hybrid_ray.errors import ConfigError
    from hybrid_ray.train_loop import CONTROLLER_POLL_ENV, report_interval_s

    monkeypatch.delenv(CONTROLLER_POLL_ENV, raising=False)
    assert report_interval_s(None) == 2.5
    monkeypatch.setenv(CONTROLLER_POLL_ENV, "0.2")
    assert report_interval_s(None) == pytest.approx(0.25)
    monkeypatch.setenv(CONTROLLER_POLL_ENV, "soon")  # Ray would fail on it itself; we keep the default
    assert report_interval_s(None) == 2.5
    assert report_interval_s(0) == 0.0 and report_interval_s(7.5) == 7.5
    assert load_config("tiny.yaml", [f"data.path={tmp_path}", "run.report_every_s=0"]).run.report_every_s == 0
    with pytest.raises(ConfigError, match="run.report_every_s"):
        load_config("tiny.yaml", [f"data.path={tmp_path}", "run.report_every_s=-1"])


def test_step_seed_depends_on_seed_step_and_rank() -> None:
    seeds = {step_seed(s, g, r) for s in (7, 8) for g in range(50) for r in range(4)}
    assert len(seeds) == 2 * 50 * 4
    assert step_seed(7, 12, 1) == step_seed(7, 12, 1)


def test_read_trainer_state_names_the_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"{tmp_path}.*{CHECKPOINT_STATE}"):
        read_trainer_state(tmp_path)
    (tmp_path / CHECKPOINT_STATE).write_text('{"global_step": 3}')
    with pytest.raises(CheckpointError, match="unreadable"):
        read_trainer_state(tmp_path)
    good = {"global_step": 3, "sampler": {"epoch": 0, "step": 3, "fingerprint": "x"}}
    (tmp_path / CHECKPOINT_STATE).write_text(json.dumps(good))
    assert read_trainer_state(tmp_path) == good


# --------------------------------------------------------------------------- real DeepSpeed engine
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A one-rank ZeRO-2 DeepSpeed engine over the tiny encoder (torch AdamW + LambdaLR)."""
    import deepspeed
    import torch.distributed as dist

    from hybrid_ray.config import load_config
    from hybrid_ray.deepspeed_config import deepspeed_config
    from hybrid_ray.testing import tiny_encoder
    from hybrid_ray.train_loop import _lr_lambda

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    data = tmp_path_factory.mktemp("ds-data") / "pairs.parquet"
    data.touch()
    cfg = load_config("tiny.yaml", [f"data.path={data}", "scaling.num_workers=1"])
    try:
        deepspeed.init_distributed(dist_backend="gloo")
        encoder = tiny_encoder()
        opt = torch.optim.AdamW(encoder.parameters(), lr=1e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(2, 24))
        eng, _, _, _ = deepspeed.initialize(
            model=encoder, optimizer=opt, lr_scheduler=sched,
            config=deepspeed_config(cfg, per_rank_batch=2, world_size=1, use_gpu=False),
        )
        yield eng
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _train_step(eng) -> float:
    torch.manual_seed(0)  # the same dropout masks every time
    enc = eng.module
    q = enc.tokenize(["hello world", "the red cat"], "query")
    p = enc.tokenize(["world hello", "cat red the"], "passage")
    qe, pe = eng(**q), eng(**p)
    loss = torch.nn.functional.cross_entropy(qe @ pe.T / 0.05, torch.arange(2))
    eng.backward(loss)
    eng.step()
    return float(loss.detach())


def _params(eng) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in eng.module.named_parameters()}


def test_load_deepspeed_state_restores_weights_optimizer_and_schedule(engine, tmp_path: Path) -> None:
    _train_step(engine)
    engine.save_checkpoint(str(tmp_path / DS_DIR), tag=DS_TAG)
    saved, lr = _params(engine), engine.get_lr()[0]
    next_loss = _train_step(engine)  # the reference continuation
    after_next = _params(engine)
    _train_step(engine)  # drift further: weights, Adam moments and LR all move on
    assert engine.get_lr()[0] != lr

    load_deepspeed_state(engine, tmp_path)
    for k, v in _params(engine).items():
        assert torch.equal(v, saved[k]), k
    assert engine.get_lr()[0] == lr
    # The same next step as before: the AdamW moments came back too, not only the weights.
    assert _train_step(engine) == pytest.approx(next_loss, rel=1e-6)
    for k, v in _params(engine).items():
        torch.testing.assert_close(v, after_next[k], rtol=1e-6, atol=1e-7)


def test_load_deepspeed_state_fails_loudly(engine, tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=f"checkpoint {empty} has no DeepSpeed state"):
        load_deepspeed_state(engine, empty)

    good = tmp_path / "good"
    engine.save_checkpoint(str(good / DS_DIR), tag=DS_TAG)
    shard = next((good / DS_DIR / DS_TAG).glob("*optim_states.pt"))
    partial = tmp_path / "partial"
    shutil.copytree(good, partial)
    (partial / DS_DIR / DS_TAG / shard.name).unlink()
    with pytest.raises(CheckpointError, match=f"checkpoint {partial} is incomplete.*{shard.name}"):
        load_deepspeed_state(engine, partial)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / DS_DIR / DS_TAG / shard.name).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=f"checkpoint {corrupt}: DeepSpeed could not load"):
        load_deepspeed_state(engine, corrupt)

    # DeepSpeed's own "not found": a warning and (None, None); never a silent fresh start.
    monkeypatch.setattr(engine, "load_checkpoint", lambda *a, **k: (None, None))
    with pytest.raises(CheckpointError, match=f"checkpoint {good}: DeepSpeed found no state"):
        load_deepspeed_state(engine, good, label=str(good))


def test_toy_loss_through_the_registry_only(engine, tmp_path: Path) -> None:
    """A new loss is one registered factory: the config selects it and the engine trains with it."""
    from hybrid_ray.config import apply_overrides, load_config
    from hybrid_ray.errors import ConfigError
    from hybrid_ray.losses import LOSSES, build_loss, register_loss

    class ToyMargin:
        """Hinge on cosine: the positive must beat every in-batch negative by ``margin``."""

        needs_encoder = False

        def __init__(self, temperature: float, margin: float = 0.2) -> None:
            self.margin = margin

        def __call__(self, q, p, logit_scale=None):
            scores = q @ p.T
            pos = scores.diagonal().unsqueeze(1)
            off = ~torch.eye(len(q), dtype=torch.bool)
            return torch.relu(self.margin - pos + scores)[off].mean()

    data = tmp_path / "pairs.parquet"
    data.touch()
    base = load_config("tiny.yaml", [f"data.path={data}", "scaling.num_workers=1"])
    with pytest.raises(ConfigError, match="loss.name"):
        build_loss(apply_overrides(base, {"loss.name": "toy_margin"}).loss.name, 0.05)
    register_loss("toy_margin")(ToyMargin)
    try:
        cfg = apply_overrides(base, {"loss.name": "toy_margin", "loss.kwargs": {"margin": 0.5}})
        loss_fn = build_loss(cfg.loss.name, cfg.model.temperature, dict(cfg.loss.kwargs))
        assert isinstance(loss_fn, ToyMargin) and loss_fn.margin == 0.5
        before = _params(engine)
        enc = engine.module
        q = enc.tokenize(["hello world", "the red cat", "a blue sky"], "query")
        p = enc.tokenize(["world hello", "cat red the", "sky blue a"], "passage")
        loss = loss_fn(engine(**q), engine(**p))
        assert loss.item() > 0
        engine.backward(loss)
        engine.step()
        after = _params(engine)
        assert any(not torch.equal(before[k], after[k]) for k in before)  # the toy loss trained the model
    finally:
        LOSSES.pop("toy_margin", None)


@pytest.mark.parametrize("fused", [True, False])
def test_build_optimizer_is_the_papers_adamw_fused_or_not(fused: bool) -> None:
    """``optim.fused`` picks torch's fused AdamW kernel; 5 steps from the same weights and gradients
    land where the for-loop AdamW lands (to float rounding), with the config's lr and weight decay."""
    from hybrid_ray.config import OptimConfig
    from hybrid_ray.train_loop import build_optimizer

    torch.manual_seed(0)
    init = [torch.randn(64, 32), torch.randn(32)]
    grads = [[torch.randn_like(w) for w in init] for _ in range(5)]

    def run(opt_fused: bool) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(w.clone()) for w in init]
        opt = build_optimizer(OptimConfig(lr=1e-2, weight_decay=0.1, fused=opt_fused), params)
        assert opt.defaults["fused"] is opt_fused and opt.defaults["lr"] == 1e-2
        assert opt.defaults["weight_decay"] == 0.1
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        return [p.detach() for p in params]

    got, ref = run(fused), run(False)
    for a, b, w in zip(got, ref, init, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert not torch.equal(a, w)  # it stepped
