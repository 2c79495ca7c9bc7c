"""``model.train_top_layers``: only the top N layers (+ pooler) keep gradients."""

from __future__ import annotations

import pytest
from torch import nn

from hybrid_ray.config import ModelConfig
from hybrid_ray.errors import ConfigError
from hybrid_ray.modeling.freeze import train_top_layers
from hybrid_ray.testing import tiny_encoder
from hybrid_ray.train_loop import build_encoder


def _trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_top_layer_only_trains() -> None:
    enc = tiny_encoder(layers=3)
    train_top_layers(enc.model, 1)
    names = _trainable(enc.model)
    assert names and all(n.startswith("encoder.layer.2.") for n in names)
    assert len(names) == len(list(enc.model.encoder.layer[2].parameters()))


def test_all_layers_keeps_embeddings_frozen() -> None:
    enc = tiny_encoder(layers=2)
    train_top_layers(enc.model, 2)
    names = _trainable(enc.model)
    assert not any(n.startswith("embeddings.") for n in names)
    assert any(n.startswith("encoder.layer.0.") for n in names)


def test_pooler_trains_when_present() -> None:
    from transformers import AutoModel, BertConfig

    model = AutoModel.from_config(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                             num_attention_heads=1, intermediate_size=32))
    train_top_layers(model, 1)
    names = _trainable(model)
    assert any(n.startswith("pooler.") for n in names)
    assert not any(n.startswith("encoder.layer.0.") for n in names)


@pytest.mark.parametrize("n", [0, 3])
def test_out_of_range_is_a_config_error(n: int) -> None:
    enc = tiny_encoder(layers=2)
    with pytest.raises(ConfigError, match="train_top_layers"):
        train_top_layers(enc.model, n)


def test_model_without_layers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no recognisable transformer layers"):
        train_top_layers(nn.Linear(2, 2), 1)


def test_build_encoder_applies_it() -> None:
    enc = build_encoder(ModelConfig(name_or_path="tiny", train_top_layers=1))
    names = _trainable(enc.model)
    assert names and all(n.startswith("encoder.layer.1.") for n in names)


def test_config_rejects_non_positive() -> None:
    with pytest.raises(ConfigError, match="train_top_layers"):
        ModelConfig(name_or_path="tiny", train_top_layers=0).check()
