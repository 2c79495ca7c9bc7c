"""``hybrid-ray export``: formats, defaults, and clear errors for bad inputs."""

from __future__ import annotations

import json

import pytest

from hybrid_ray import cli
from hybrid_ray.errors import HybridRayError
from hybrid_ray.export import export_model
from tests.export.test_model_card import LAREQA


def test_cli_hf_export_with_eval_and_train_config(mean_dir, tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(LAREQA))
    (tmp_path / "config.yaml").write_text("sampler:\n  alpha: 0.7\ndata:\n  langs: [de, en]\n")
    out = tmp_path / "hf"
    code = cli.main(["export", str(mean_dir), "--format", "hf", "--out", str(out),
                     "--eval-json", str(tmp_path / "results.json"), "--train-config", str(tmp_path / "config.yaml")])
    assert code == 0, capsys.readouterr().err
    card = (out / "README.md").read_text()
    assert "**0.7**" in card and "| mono | 0.4321 |" in card
    assert (out / "model.safetensors").is_file() and not (out / "modules.json").exists()


def test_cli_default_out_next_to_model(tmp_path, mean_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(mean_dir, run / "encoder")
    (run / "config.yaml").write_text("sampler:\n  alpha: 0.25\n")  # where `hybrid-ray train` writes it
    assert cli.main(["export", str(run / "encoder"), "--format", "st"]) == 0
    assert (run / "encoder-st" / "modules.json").is_file()
    assert "**0.25**" in (run / "encoder-st" / "README.md").read_text()


@pytest.mark.parametrize("make", ["missing", "no_encoder_json", "not_a_model"])
def test_bad_model_dirs_name_the_path(tmp_path, capsys, make):
    path = tmp_path / make
    if make == "no_encoder_json":
        path.mkdir()
        (path / "config.json").write_text("{}")
    elif make == "not_a_model":
        path.mkdir()
        (path / "hybrid_ray_encoder.json").write_text("{}")
    with pytest.raises(HybridRayError, match=str(path)):
        export_model(path, "st", tmp_path / "out")
    assert cli.main(["export", str(path), "--format", "st", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "hybrid-ray export: error:" in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_options(mean_dir, tmp_path, capsys):
    with pytest.raises(HybridRayError, match="--int8 applies to --format onnx"):
        export_model(mean_dir, "st", tmp_path / "o", int8=True)
    with pytest.raises(HybridRayError, match="inside the model directory"):
        export_model(mean_dir, "hf", mean_dir / "sub")
    with pytest.raises(HybridRayError, match="unknown export format"):
        export_model(mean_dir, "tflite", tmp_path / "o")
    assert cli.main(["export", str(mean_dir), "--format", "hf", "--eval-json", str(tmp_path)]) == 2
    assert str(tmp_path / "results.json") in capsys.readouterr().err
