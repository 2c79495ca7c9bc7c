"""DualEncoder: pooling, normalisation, prefixes, temperature, and the Hugging Face save format.

Everything runs on ``hybrid_ray.testing.tiny_encoder`` (a 2-layer random BERT built offline).
Reference values are computed independently from the HF model's ``last_hidden_state``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybrid_ray.errors import ConfigError, HybridRayError
from hybrid_ray.losses import DistributedInfoNCE
from hybrid_ray.modeling.encoder import ENCODER_FILE, DualEncoder, EncoderConfig
from hybrid_ray.testing import tiny_encoder

# Different lengths, so the short ones are padded inside a batch.
TEXTS = ["hello world", "the cat and the dog said hello to the world", "red", "let there be light"]


def _encoder(**cfg) -> DualEncoder:
    enc = tiny_encoder(config=EncoderConfig(**{"max_length": 64, **cfg}))
    return enc.eval()  # no dropout: outputs must be deterministic


def _hidden(enc: DualEncoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return enc.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


# ---------------------------------------------------------------------------------------- pooling
def test_mean_pooling_matches_manual_and_ignores_padding() -> None:
    enc = _encoder(pooling="mean", normalize=False)
    batch = enc.tokenize(TEXTS, "passage")
    mask = batch["attention_mask"]
    assert (mask == 0).any(), "the batch must contain padding for this test to mean anything"
    hidden = _hidden(enc, batch)
    with torch.no_grad():
        got = enc(batch["input_ids"], mask)
    for i in range(len(TEXTS)):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()  # right padding
        expected = hidden[i, :n].mean(0)  # real tokens only
        torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-6)
        if n < mask.shape[1]:
            # Averaging over the padded positions too gives something else: the check has teeth.
            assert not torch.allclose(hidden[i].mean(0), expected, atol=1e-4)
    # A text encoded alone (no padding) gets the same vector as inside a padded batch.
    for i, text in enumerate(TEXTS):
        alone = enc.tokenize([text], "passage")
        with torch.no_grad():
            single = enc(alone["input_ids"], alone["attention_mask"])[0]
        torch.testing.assert_close(single, got[i], rtol=1e-5, atol=1e-5)


def test_cls_pooling_takes_the_first_token() -> None:
    enc = _encoder(pooling="cls", normalize=False)
    batch = enc.tokenize(TEXTS, "query")
    assert (batch["input_ids"][:, 0] == enc.tokenizer.cls_token_id).all()
    hidden = _hidden(enc, batch)
    with torch.no_grad():
        got = enc(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, hidden[:, 0], rtol=1e-5, atol=1e-6)
    mean = _encoder(pooling="mean", normalize=False)
    with torch.no_grad():
        assert not torch.allclose(mean(batch["input_ids"], batch["attention_mask"]), got, atol=1e-4)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_normalize_gives_unit_vectors_of_the_raw_direction(pooling: str) -> None:
    raw_enc, unit_enc = _encoder(pooling=pooling, normalize=False), _encoder(pooling=pooling, normalize=True)
    batch = raw_enc.tokenize(TEXTS, "query")
    with torch.no_grad():
        raw = raw_enc(batch["input_ids"], batch["attention_mask"])
        unit = unit_enc(batch["input_ids"], batch["attention_mask"])
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-3)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(len(TEXTS)), rtol=0, atol=1e-5)
    torch.testing.assert_close(unit, raw / raw.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    emb = unit_enc.encode(TEXTS, "passage", batch_size=3)
    assert emb.dtype == np.float32 and emb.shape == (len(TEXTS), unit_enc.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_encode_matches_forward_in_input_order() -> None:
    """``encode`` sorts by length internally; rows must come back in the caller's order."""
    enc = _encoder()
    emb = enc.encode(TEXTS, "query", batch_size=2)
    for i, text in enumerate(TEXTS):
        b = enc.tokenize([text], "query")
        with torch.no_grad():
            ref = enc(b["input_ids"], b["attention_mask"])[0].numpy()
        np.testing.assert_allclose(emb[i], ref, rtol=1e-5, atol=1e-5)
    assert enc.encode([], "query").shape == (0, enc.dim)


# --------------------------------------------------------------------------------------- prefixes
def test_prefixes_are_prepended_per_side() -> None:
    enc = _encoder(query_prefix="Query: ", passage_prefix="Passage: ")
    tok = enc.tokenizer
    for kind, prefix in (("query", "Query: "), ("passage", "Passage: ")):
        got = enc.tokenize(["hello world"], kind)["input_ids"][0].tolist()
        assert got == tok(prefix + "hello world")["input_ids"]
        assert got != tok("hello world")["input_ids"]
    tokens = tok.convert_ids_to_tokens(enc.tokenize(["hello"], "query")["input_ids"][0])
    assert tokens[:4] == ["[CLS]", "query", ":", "hello"]
    q, p = enc.encode(["hello world"], "query"), enc.encode(["hello world"], "passage")
    assert not np.allclose(q, p, atol=1e-4)  # different prefixes -> different embeddings

    custom = _encoder(query_prefix="red ", passage_prefix="blue ")
    ids = custom.tokenize(["hello"], "query")["input_ids"][0].tolist()
    assert ids == tok("red hello")["input_ids"]
    assert tok.convert_tokens_to_ids("red") in ids and tok.convert_tokens_to_ids("query") not in ids

    none = _encoder(query_prefix="", passage_prefix="")
    q_ids = none.tokenize(["hello world"], "query")["input_ids"]
    assert torch.equal(q_ids, none.tokenize(["hello world"], "passage")["input_ids"])
    assert q_ids[0].tolist() == tok("hello world")["input_ids"]
    np.testing.assert_array_equal(none.encode(["hello world"], "query"), none.encode(["hello world"], "passage"))


def test_unknown_kind_and_bad_config_are_rejected() -> None:
    enc = _encoder()
    with pytest.raises(ValueError, match="kind"):
        enc.tokenize(["x"], "document")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pooling"):
        EncoderConfig(pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="temperature"):
        EncoderConfig(temperature=0)


def test_max_length_truncates() -> None:
    enc = _encoder(max_length=4)
    batch = enc.tokenize(TEXTS, "query")
    assert batch["input_ids"].shape[1] == 4


# ------------------------------------------------------------------------------------ temperature
def _loss_backward(enc: DualEncoder) -> torch.Tensor:
    enc.train()
    q = enc.tokenize(TEXTS, "query")
    p = enc.tokenize(TEXTS, "passage")
    q_emb, scale = enc(q["input_ids"], q["attention_mask"], return_scale=True)
    p_emb = enc(p["input_ids"], p["attention_mask"])
    loss = DistributedInfoNCE(temperature=enc.config.temperature)(q_emb, p_emb, logit_scale=scale)
    loss.backward()
    return scale


def test_learnable_temperature_is_a_parameter_with_gradient() -> None:
    enc = tiny_encoder(config=EncoderConfig(temperature=0.1, learn_temperature=True))
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert "logit_scale" in trainable
    scale = _loss_backward(enc)
    assert float(scale.detach()) == pytest.approx(10.0, rel=1e-6)  # starts at 1 / T
    grad = enc.logit_scale.grad
    assert grad is not None and grad.shape == (1,) and torch.isfinite(grad).all() and float(grad.abs()) > 0
    # One optimiser step changes it.
    before = float(enc.logit_scale.detach())
    torch.optim.SGD([enc.logit_scale], lr=1.0).step()
    assert float(enc.logit_scale.detach()) != before


def test_fixed_temperature_gets_no_gradient() -> None:
    enc = tiny_encoder(config=EncoderConfig(temperature=0.1, learn_temperature=False))
    assert "logit_scale" not in {n for n, p in enc.named_parameters() if p.requires_grad}
    scale = _loss_backward(enc)
    assert float(scale.detach()) == pytest.approx(10.0, rel=1e-6)
    assert enc.logit_scale.grad is None
    # ...while the encoder weights do train.
    assert enc.model.get_input_embeddings().weight.grad is not None


# --------------------------------------------------------------------------------- save and load
def _custom_config() -> EncoderConfig:
    return EncoderConfig(
        pooling="cls", normalize=True, query_prefix="q: ", passage_prefix="p: ", max_length=32,
        temperature=0.2, learn_temperature=True,
    )


def test_save_load_roundtrip(tmp_path: Path) -> None:
    enc = tiny_encoder(config=_custom_config()).eval()
    enc.logit_scale.data.fill_(2.5)  # as if learned
    out = enc.save_pretrained(tmp_path / "enc")
    assert (out / ENCODER_FILE).is_file() and (out / "config.json").is_file()
    meta = json.loads((out / ENCODER_FILE).read_text())
    assert meta["logit_scale"] == pytest.approx(2.5)

    back = DualEncoder.from_pretrained(out)
    assert asdict(back.config) == asdict(enc.config)
    assert float(back.logit_scale.detach()) == pytest.approx(2.5)
    assert back.logit_scale.requires_grad  # learn_temperature survives
    for kind in ("query", "passage"):
        np.testing.assert_array_equal(back.encode(TEXTS, kind), enc.encode(TEXTS, kind))
    for (name, a), (_, b) in zip(enc.model.state_dict().items(), back.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    # Overrides replace saved fields; an explicit temperature also resets the stored scale.
    mean = DualEncoder.from_pretrained(out, pooling="mean")
    assert mean.config.pooling == "mean" and mean.config.query_prefix == "q: "
    assert float(mean.logit_scale.detach()) == pytest.approx(2.5)
    hot = DualEncoder.from_pretrained(out, temperature=0.5)
    assert float(hot.scale().detach()) == pytest.approx(2.0, rel=1e-6)


def test_from_pretrained_missing_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HybridRayError, match="does not exist"):
        DualEncoder.from_pretrained(tmp_path / "nope")


def test_saved_dir_is_a_plain_hf_model(tmp_path: Path) -> None:
    """Usable outside this project: AutoModel + AutoTokenizer + mean pooling + prefix by hand."""
    from transformers import AutoModel, AutoTokenizer

    cfg = EncoderConfig(pooling="mean", normalize=True, query_prefix="Query: ", passage_prefix="Passage: ")
    enc = tiny_encoder(config=cfg).eval()
    out = enc.save_pretrained(tmp_path / "hf")

    model = AutoModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    for kind, prefix in (("query", "Query: "), ("passage", "Passage: ")):
        batch = tok([prefix + t for t in TEXTS], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        manual = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
        ours = enc.encode(TEXTS, kind)
        np.testing.assert_allclose(ours, manual, rtol=1e-5, atol=1e-5)
        # Cosine of matching rows ~1, and the prefix matters (without it the vectors differ).
        assert math.isclose(float((ours[0] * manual[0]).sum()), 1.0, abs_tol=1e-5)
    plain = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**plain).last_hidden_state
    mask = plain["attention_mask"].unsqueeze(-1).float()
    no_prefix = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert not np.allclose(enc.encode(TEXTS, "query"), no_prefix, atol=1e-4)
