"""``SentenceTransformer(exported)`` must embed exactly like ``DualEncoder.encode``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid_ray.export import export_model
from hybrid_ray.modeling.encoder import DualEncoder
from tests.export.conftest import TEXTS, tiny_dir


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _load_st(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_st_matches_hybrid_ray(export_root, pooling):
    src = tiny_dir(export_root, pooling=pooling)
    out = export_model(src, "st", export_root / f"st-{pooling}")
    ours = DualEncoder.from_pretrained(src)
    st = _load_st(out)
    for kind in ("query", "passage"):
        ref = ours.encode(TEXTS, kind)
        got = st.encode(TEXTS, prompt_name=kind, convert_to_numpy=True)
        assert got.shape == ref.shape
        assert _cosines(got, ref).min() > 0.9999, kind
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Plain encode (vector-store ingestion) gets the passage prompt; the two prompts really differ.
    plain = st.encode(TEXTS, convert_to_numpy=True)
    assert _cosines(plain, ours.encode(TEXTS, "passage")).min() > 0.9999
    assert _cosines(ours.encode(TEXTS, "query"), ours.encode(TEXTS, "passage")).min() < 0.9999


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_fixture_is_discriminative(export_root, pooling):
    """Guards the parity tests: distinct texts / prefixes must give clearly distinct embeddings."""
    ours = DualEncoder.from_pretrained(tiny_dir(export_root, pooling=pooling))
    q, p = ours.encode(TEXTS, "query"), ours.encode(TEXTS, "passage")
    sims = q @ q.T
    assert sims[~np.eye(len(TEXTS), dtype=bool)].max() < 0.99
    assert _cosines(q, p).max() < 0.999


def test_st_without_export_is_wrong(export_root):
    """The reason for the export: the bare HF dir loads with mean pooling and no prompts."""
    from sentence_transformers import SentenceTransformer

    src = tiny_dir(export_root, pooling="cls")
    bare = SentenceTransformer(str(src), device="cpu", local_files_only=True)
    ref = DualEncoder.from_pretrained(src).encode(TEXTS, "query")
    assert _cosines(bare.encode(TEXTS, convert_to_numpy=True), ref).min() < 0.9999


def test_unnormalised_model_keeps_raw_vectors(export_root):
    src = tiny_dir(export_root, pooling="mean", normalize=False)
    out = export_model(src, "st", export_root / "st-raw")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"]
    cfg = json.loads((out / "config_sentence_transformers.json").read_text())
    assert cfg["similarity_fn_name"] == "dot"
    ref = DualEncoder.from_pretrained(src).encode(TEXTS, "query")
    got = _load_st(out).encode(TEXTS, prompt_name="query", convert_to_numpy=True)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_st_files_and_source_untouched(export_root, mean_dir):
    before = sorted(p.name for p in mean_dir.iterdir())
    out = export_model(mean_dir, "st", export_root / "st-files")
    assert sorted(p.name for p in mean_dir.iterdir()) == before  # the source is not modified
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"] and pooling["include_prompt"]
    sbert = json.loads((out / "sentence_bert_config.json").read_text())
    assert sbert["max_seq_length"] == 24 and sbert["model_args"] == {"add_pooling_layer": False}
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())
    assert prompts["prompts"]["query"] == "query: " and prompts["prompts"]["passage"] == "passage: "
    assert prompts["default_prompt_name"] == "passage"
    assert (out / "2_Normalize").is_dir() and (out / "README.md").is_file()
    assert _load_st(out).max_seq_length == 24
