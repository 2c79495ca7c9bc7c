"""The model card: Hugging Face metadata, usage facts, training config, evaluation table."""

from __future__ import annotations

import json

import pytest
import yaml

from hybrid_ray.errors import HybridRayError
from hybrid_ray.export.model_card import load_eval_results, render_model_card

LAREQA = {
    "name": "demo-data/test", "setting": "lareqa", "n_queries": 12, "n_candidates": 30,
    "query_langs": ["de", "en"], "candidate_langs": ["de", "en"],
    "settings": {"mono": {"map": 0.4321, "recall_1": 0.25, "recall_10": 0.75, "n_settings": 2},
                 "cross": {"map": 0.1234, "recall_1": 0.125, "recall_10": 0.5, "n_settings": 2},
                 "multilingual": {"map": 0.2, "recall_1": 0.1, "recall_10": 0.6, "n_settings": 2, "per_lang": {}}},
    "language_bias": {"macro": 3.5, "n_queries": 12, "per_lang": {}},
}
MIRACL = {"name": "miracl-dev", "setting": "miracl", "n_queries": 4, "n_candidates": 9,
          "per_lang": {"sw": {"ndcg_cut_10": 0.61, "recall_100": 0.9, "n_queries": 4}},
          "mean": {"ndcg_cut_10": 0.61, "recall_100": 0.9}}


def _meta(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_metadata_and_table(mean_dir):
    cfg = {"model": {"name_or_path": "intfloat/multilingual-e5-small"},
           "data": {"path": "runs/demo-data", "langs": ["de", "en", "sw"]},
           "sampler": {"alpha": 0.3}}
    card = render_model_card(mean_dir, train_cfg=cfg, eval_results=[LAREQA, MIRACL])
    meta = _meta(card)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert meta["language"] == ["de", "en", "sw"]
    assert meta["base_model"] == "intfloat/multilingual-e5-small"
    assert meta["datasets"] == ["demo-data"] and "sentence-transformers" in meta["tags"]
    assert "alpha (P(monolingual batch)) = **0.3**" in card
    assert "| mono | 0.4321 | 0.2500 | 0.7500 |" in card
    assert "| cross | 0.1234 | 0.1250 | 0.5000 |" in card
    assert "| sw | 0.6100 | 0.9000 |" in card and "nDCG@10" in card
    assert "`'query: '`" in card and "| pooling | mean |" in card
    for section in ("## Base model", "## Languages", "## Training data", "## Training: alpha", "## Evaluation"):
        assert section in card


def test_card_without_training_facts(mean_dir):
    card = render_model_card(mean_dir)
    meta = _meta(card)
    assert "base_model" not in meta and "language" not in meta
    assert "## Evaluation" not in card and "No training configuration" in card


def test_converted_e5_dir_names_its_hub_base(mean_dir, tmp_path):
    import shutil

    d = tmp_path / "e5"
    shutil.copytree(mean_dir, d)
    (d / "hybrid_ray_convert.json").write_text("{}")
    assert _meta(render_model_card(d))["base_model"] == "intfloat/multilingual-e5-small"


def test_full_export_card(full_export):
    card = (full_export / "README.md").read_text()
    meta = _meta(card)
    assert meta["language"] == ["de", "en", "sw"] and meta["base_model"] == "intfloat/multilingual-e5-small"
    assert "alpha (P(monolingual batch)) = **0.5**" in card


def test_load_eval_results(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(LAREQA))
    assert load_eval_results(tmp_path)["name"] == "demo-data/test"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": 1}))
    with pytest.raises(HybridRayError, match="bad.json"):
        load_eval_results(bad)
    with pytest.raises(HybridRayError, match="missing.json"):
        load_eval_results(tmp_path / "missing.json")
