"""``hybrid-ray train --export-all``: the trained encoder goes through ``hybrid_ray.export.export_all``.

Training itself is replaced by a stub (tests/test_train.py covers it): this checks the wiring only.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from hybrid_ray import train
from hybrid_ray.errors import ConfigError
from hybrid_ray.export.model_card import eval_table  # before any test stubs hybrid_ray.export


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """``run_training`` that 'exports' to ``<tmp>/encoder`` at once; no Ray."""
    encoder = tmp_path / "encoder"
    result = types.SimpleNamespace(metrics={"step": 3, "loss": 1.0}, checkpoint=types.SimpleNamespace(path="ck"))
    monkeypatch.setattr(train, "run_training", lambda cfg, **kw: (result, encoder))
    monkeypatch.setattr("hybrid_ray.local.init_ray", lambda *a, **kw: None)
    return ["--config", "tiny.yaml", f"run.storage_path={tmp_path / 'runs'}", f"data.path={tmp_path}"]


def _stub_export(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    module = types.ModuleType("hybrid_ray.export")

    def export_all(model_dir, out_dir, train_cfg=None, eval_results=None):
        calls.append((Path(model_dir), Path(out_dir), train_cfg, eval_results))
        return out_dir

    module.export_all = export_all
    monkeypatch.setitem(sys.modules, "hybrid_ray.export", module)
    return calls


def test_export_all_after_training_default_dir(monkeypatch, tmp_path, fake_training, capsys) -> None:
    calls = _stub_export(monkeypatch)
    assert train.main([*fake_training, "--export-all"]) == 0
    [(model, out, cfg, evals)] = calls
    assert model == tmp_path / "encoder" and out == tmp_path / "encoder-export"
    assert cfg.run.storage_path == str(tmp_path / "runs"), "the resolved training config goes to the model card"
    assert evals is None, "no validation set configured: no evaluation table"
    assert f"model card: {tmp_path / 'encoder-export'}" in capsys.readouterr().out


def test_export_all_to_a_chosen_dir_and_not_by_default(monkeypatch, tmp_path, fake_training) -> None:
    calls = _stub_export(monkeypatch)
    assert train.main(fake_training) == 0
    assert calls == [], "plain training exports nothing extra"
    assert train.main([*fake_training, "--export-all", str(tmp_path / "bundle")]) == 0
    assert calls[0][1] == tmp_path / "bundle"


def test_export_all_without_the_export_package_is_a_clear_error(monkeypatch, fake_training) -> None:
    monkeypatch.setitem(sys.modules, "hybrid_ray.export", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="--export-all"):
        train.main([*fake_training, "--export-all"])


def test_export_all_card_gets_the_validation_table(monkeypatch, tmp_path, fake_training) -> None:
    """With eval.pairs_path set, the final encoder is evaluated and the results reach the card."""
    import pyarrow as pa

    from hybrid_ray.data.pairs import write_pairs
    from hybrid_ray.testing import tiny_encoder

    tiny_encoder(tmp_path / "encoder")
    rows = [{"pair_id": f"p{i}", "lang": lang, "query": f"god light {i}", "positive": f"day night {i} water"}
            for i in range(4) for lang in ("en", "de")]
    write_pairs(pa.Table.from_pylist(rows), tmp_path / "val" / "dev.parquet")
    calls = _stub_export(monkeypatch)
    assert train.main([*fake_training, f"eval.pairs_path={tmp_path / 'val'}", "--export-all"]) == 0
    [(_, _, _, evals)] = calls
    [res] = evals
    assert res["setting"] == "lareqa" and res["n_queries"] == 8
    assert "| mono |" in eval_table(res)
