"""``model.lora``: peft adapters train alone, and every export is a plain HF encoder with them merged.

The adapters are trained a few steps first (peft starts LoRA's B at zero, so an untrained adapter
is the base model and "merged == adapter" would hold trivially); the test checks the trained
adapter model differs from the base, then that the merged copy, its saved directory (loaded as a
plain ``BertModel``), and an adapter saved and merged from disk all reproduce its embeddings.
The Ray Train run (2 workers, ZeRO-2 and, marked slow, ZeRO-3; 2 steps, cached loss + gradient checkpointing) checks the
same through the real loop: ``adapter/`` in the checkpoint, a merged ``encoder/`` and export.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hybrid_ray.config import LoraSettings, ModelConfig, load_config
from hybrid_ray.data.pairs import write_pairs
from hybrid_ray.errors import ConfigError
from hybrid_ray.losses import build_loss
from hybrid_ray.modeling.encoder import DualEncoder
from hybrid_ray.testing import signature_pairs
from hybrid_ray.train_loop import build_encoder

peft = pytest.importorskip("peft")

TEXTS = ["god said let there be light", "the cat and the dog", "one two three", "red blue green house"]
PASSAGES = ["let there be light said god", "a dog and a cat", "three two one", "a green house"]


def _lora_encoder() -> DualEncoder:
    return build_encoder(ModelConfig(name_or_path="tiny", max_length=32, lora=LoraSettings(r=4, alpha=8.0)))


def _train(encoder: DualEncoder, steps: int = 5) -> None:
    encoder.train()
    opt = torch.optim.Adam([p for p in encoder.parameters() if p.requires_grad], lr=2e-2)
    q, p = dict(encoder.tokenize(TEXTS, "query")), dict(encoder.tokenize(PASSAGES, "passage"))
    loss_fn = build_loss("infonce", 0.05)
    for _ in range(steps):
        q_emb, scale = encoder(**q, return_scale=True)
        loss_fn(q_emb, encoder(**p), logit_scale=scale).backward()
        opt.step()
        opt.zero_grad()


def _emb(encoder: DualEncoder) -> np.ndarray:
    return np.concatenate([encoder.encode(TEXTS, "query"), encoder.encode(PASSAGES, "passage")])


def _assert_same(a: np.ndarray, b: np.ndarray) -> None:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999, cos
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def trained() -> DualEncoder:
    encoder = _lora_encoder()
    _train(encoder)
    return encoder


def test_only_adapters_train() -> None:
    encoder = _lora_encoder()
    trainable = [k for k, v in encoder.named_parameters() if v.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    # every linear layer of both blocks got an adapter (query, key, value, the three dense layers)
    assert len({k.rsplit(".lora_", 1)[0] for k in trainable}) == 2 * 6


def test_merged_copy_reproduces_the_adapter_model(trained: DualEncoder, tmp_path: Path) -> None:
    from hybrid_ray.modeling.lora import is_lora, merged_copy

    base = build_encoder(ModelConfig(name_or_path="tiny", max_length=32))
    adapted = _emb(trained)
    assert np.abs(adapted - _emb(base)).max() > 1e-2  # the adapters did train
    merged = merged_copy(trained)
    assert not is_lora(merged) and is_lora(trained)  # a copy: the live model keeps its adapters
    _assert_same(_emb(merged), adapted)
    merged.save_pretrained(tmp_path / "merged")
    loaded = DualEncoder.from_pretrained(tmp_path / "merged")
    assert type(loaded.model).__name__ == "BertModel"  # plain HF: serving needs nothing new
    assert not any("lora" in k for k in loaded.model.state_dict())
    _assert_same(_emb(loaded), adapted)


def test_saved_adapter_merges_from_disk(trained: DualEncoder, tmp_path: Path) -> None:
    from hybrid_ray.modeling.lora import load_adapter, merge_adapter, save_adapter

    save_adapter(trained, tmp_path / "adapter", base="tiny")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "hybrid_ray_encoder.json"} <= files
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000  # adapters only
    _assert_same(_emb(load_adapter(tmp_path / "adapter")), _emb(trained))
    merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    _assert_same(_emb(DualEncoder.from_pretrained(tmp_path / "merged")), _emb(trained))
    # hybrid-ray export takes the adapter directory too, and writes a plain (merged) encoder.
    from hybrid_ray.export import export_model

    out = export_model(tmp_path / "adapter", "hf", tmp_path / "exported")
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    _assert_same(_emb(DualEncoder.from_pretrained(out)), _emb(trained))


def test_checkpoint_export_merges_and_keeps_the_adapter(trained: DualEncoder, tmp_path: Path) -> None:
    from hybrid_ray.checkpoint import export_encoder

    engine = SimpleNamespace(module=trained)
    export_encoder(engine, trained, tmp_path / "encoder", zero_stage=2, rank=0,
                   adapter_dir=tmp_path / "adapter", base="tiny")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "encoder" / "adapter_config.json").exists()
    _assert_same(_emb(DualEncoder.from_pretrained(tmp_path / "encoder")), _emb(trained))


def test_bad_lora_settings_are_named(tmp_path: Path) -> None:
    data = tmp_path / "pairs.parquet"
    write_pairs(signature_pairs(4), data)
    with pytest.raises(ConfigError, match="model.lora.alpha"):
        load_config("tiny.yaml", [f"data.path={data}", "model.lora.alpha=0"])
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        build_encoder(ModelConfig(name_or_path="tiny", lora=LoraSettings(target_modules=["no_such_layer"])))


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_ray_train_two_steps_with_lora(stage: int, tmp_path: Path) -> None:
    """2 workers, 2 steps, cached loss + gradient checkpointing + LoRA: the real loop. ZeRO-3 (slow:
    another ~2-4 min) merges inside GatheredParameters, from partitioned weights."""
    import ray

    from hybrid_ray.checkpoint import ADAPTER_DIR, ENCODER_DIR
    from hybrid_ray.local import init_ray
    from hybrid_ray.modeling.lora import load_adapter
    from hybrid_ray.train import run_training

    data = tmp_path / "pairs.parquet"
    write_pairs(signature_pairs(24), data)
    cfg = load_config("tiny.yaml", [f"data.path={data}", f"run.storage_path={tmp_path}", "run.name=lora",
                                    "optim.max_steps=2", "run.checkpoint_every=0", "optim.lr=0.01",
                                    "model.lora.r=4", "model.gradient_checkpointing=true",
                                    "loss.name=cached_infonce", "loss.kwargs.chunk_size=3",
                                    f"deepspeed.zero_stage={stage}"])
    init_ray(num_cpus=2)
    try:
        result, exported = run_training(cfg)
    finally:
        ray.shutdown()
    ckpt = Path(result.checkpoint.path)
    assert (ckpt / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    merged = DualEncoder.from_pretrained(exported)
    assert type(merged.model).__name__ == "BertModel"
    adapter = load_adapter(ckpt / ADAPTER_DIR)
    _assert_same(_emb(merged), _emb(adapter))
    _assert_same(_emb(DualEncoder.from_pretrained(ckpt / ENCODER_DIR)), _emb(adapter))
    base = build_encoder(ModelConfig(name_or_path="tiny", max_length=32))
    assert np.abs(_emb(merged) - _emb(base)).max() > 1e-4  # two steps at lr 0.01 moved the adapters


def test_lora_run_resumes_from_its_checkpoint_exactly(tmp_path: Path) -> None:
    """A LoRA run started from its own step-2 checkpoint repeats the uninterrupted run's steps 3-4
    (batches and losses): the adapters, their AdamW moments and the schedule all came back."""
    import ray

    from hybrid_ray.hooks import BatchTrace
    from hybrid_ray.local import init_ray
    from hybrid_ray.train import run_training

    data = tmp_path / "pairs.parquet"
    write_pairs(signature_pairs(24), data)
    common = [f"data.path={data}", f"run.storage_path={tmp_path}", "optim.max_steps=4", "optim.lr=0.01",
              "model.lora.r=4", "run.log_every=1"]
    ref_cfg = load_config("tiny.yaml", [*common, "run.name=lora-ref", "run.checkpoint_every=2", "run.num_to_keep=2"])
    init_ray(num_cpus=2)
    try:
        ref_trace = BatchTrace(tmp_path / "trace-ref")
        run_training(ref_cfg, step_hooks=[ref_trace])
        import json

        from hybrid_ray.train import METRICS_LOG

        reports = [json.loads(line) for line in (ref_cfg.run.run_dir / METRICS_LOG).read_text().splitlines()]
        ckpt2 = next(r["checkpoint"] for r in reports if r["metrics"][0]["step"] == 2)
        res_cfg = load_config("tiny.yaml", [*common, "run.name=lora-resumed", "run.checkpoint_every=0",
                                            f"run.resume_from={ckpt2}"])
        res_trace = BatchTrace(tmp_path / "trace-res")
        run_training(res_cfg, step_hooks=[res_trace])
    finally:
        ray.shutdown()
    for rank in (0, 1):
        ref = {r["global_step"]: r for r in ref_trace.read(rank)}
        got = res_trace.read(rank)
        assert [r["global_step"] for r in got] == [3, 4]
        for r in got:
            assert r["pairs"] == ref[r["global_step"]]["pairs"]
            assert r["loss"] == pytest.approx(ref[r["global_step"]]["loss"], rel=1e-5, abs=1e-6)
        assert ref[4]["loss"] != ref[1]["loss"]  # the adapters moved: the comparison means something
