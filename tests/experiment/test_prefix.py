"""The frozen-prefix evaluation path gives the full encoder's embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid_ray.errors import ConfigError
from hybrid_ray.experiment.prefix import FrozenPrefix, TopLayersEncoder
from hybrid_ray.modeling.encoder import EncoderConfig
from hybrid_ray.testing import tiny_encoder

TEXTS = ["en text one", "de text two is longer than the first", "x", "es text three three three"]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_top_layers_over_the_prefix_equal_the_full_encoder(tmp_path: Path, pooling: str) -> None:
    base = tiny_encoder(layers=3, config=EncoderConfig(max_length=16, pooling=pooling, query_prefix="query: "))
    FrozenPrefix.build(base, {"query": TEXTS, "passage": TEXTS[:2]}, n_bottom=2, root=tmp_path / "p",
                                batch_size=3)
    # a "trained" copy: same bottom, different top layer
    trained = tiny_encoder(layers=3, config=base.config)
    trained.model.load_state_dict(base.model.state_dict())
    with torch.no_grad():
        for p in trained.model.encoder.layer[2].parameters():
            p.add_(0.05 * torch.randn_like(p))
    fast = TopLayersEncoder(trained, FrozenPrefix(tmp_path / "p"))
    for kind, texts in (("query", TEXTS), ("passage", TEXTS[:2])):
        np.testing.assert_allclose(fast.encode(texts, kind, batch_size=2), trained.encode(texts, kind), atol=1e-5)
    # texts outside the prefix fall back to the full encoder
    np.testing.assert_allclose(fast.encode(["unseen text"], "passage"), trained.encode(["unseen text"], "passage"),
                               atol=1e-6)
    # the model is left whole
    assert len(trained.model.encoder.layer) == 3


def test_a_model_with_other_frozen_layers_is_refused(tmp_path: Path) -> None:
    base = tiny_encoder(layers=2, seed=0)
    FrozenPrefix.build(base, {"query": TEXTS}, n_bottom=1, root=tmp_path / "p")
    other = tiny_encoder(layers=2, seed=1)
    with pytest.raises(ConfigError, match="frozen layers differ"):
        TopLayersEncoder(other, FrozenPrefix(tmp_path / "p"))
