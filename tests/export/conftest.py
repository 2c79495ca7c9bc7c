"""Fixtures for the export tests: tiny encoders (mean / cls pooling) and one full export.

The ONNX export is the slow step (~10 s), so it runs once per session through ``export_all``,
which also exercises the all-in-one layout that ``hybrid-ray train`` writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_ray.modeling.encoder import EncoderConfig

# Words from the tiny tokenizer's vocabulary; the last text is longer than max_length (truncation).
TEXTS = [
    "hello world",
    "god said let there be light and there was light",
    "the cat and the dog in the red house",
    "one two three",
    " ".join(["water earth heaven night day"] * 12),
]


def tiny_dir(root: Path, **overrides) -> Path:
    """A tiny BERT encoder dir whose embeddings clearly differ between texts.

    BERT's default init (std 0.02) gives a random tiny model near-identical embeddings for every
    text (cosine ~0.9999), which would make the "cosine > 0.9999" parity checks vacuous; wider
    random weights make different texts and different prefixes land far apart
    (``test_fixture_is_discriminative`` pins that).
    """
    import torch

    from hybrid_ray.testing import tiny_encoder

    cfg = EncoderConfig(max_length=24, query_prefix="query: ", passage_prefix="passage: ", **overrides)
    path = root / f"tiny-{cfg.pooling}-{'norm' if cfg.normalize else 'raw'}"
    if not path.exists():
        enc = tiny_encoder(config=cfg, seed=1)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in enc.model.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        enc.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def export_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def mean_dir(export_root) -> Path:
    return tiny_dir(export_root, pooling="mean")


@pytest.fixture(scope="session")
def full_export(export_root, mean_dir) -> Path:
    """export_all of the mean-pooled tiny encoder: HF + ST + ONNX + int8 + model card."""
    from hybrid_ray.export import export_all

    train_cfg = {"model": {"name_or_path": "intfloat/multilingual-e5-small", "pooling": "mean"},
                 "data": {"path": "runs/demo-data", "langs": ["de", "en", "sw"]},
                 "sampler": {"alpha": 0.5, "seed": 0}}
    return export_all(mean_dir, export_root / "full", train_cfg=train_cfg)
