"""ONNX export + OnnxEncoder reproduce DualEncoder.encode; load_encoder picks the backend."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hybrid_ray.errors import HybridRayError
from hybrid_ray.export.onnx import OnnxEncoder, load_encoder
from hybrid_ray.modeling.encoder import DualEncoder
from tests.export.conftest import TEXTS


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("int8,threshold", [(False, 0.999), (True, 0.99)])
def test_onnx_matches_torch(full_export, int8, threshold):
    ours = DualEncoder.from_pretrained(full_export)
    onnx = OnnxEncoder(full_export, int8=int8)
    assert onnx.dim == ours.dim
    for kind in ("query", "passage"):
        ref = ours.encode(TEXTS, kind)
        got = onnx.encode(TEXTS, kind, batch_size=2)  # several batches, sorted by length: order must survive
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert _cosines(got, ref).min() > threshold, kind


def test_onnx_cls_pooling_from_encoder_json(full_export, tmp_path):
    """The graph is the backbone; pooling follows hybrid_ray_encoder.json like DualEncoder does."""
    cls_dir = tmp_path / "cls"
    shutil.copytree(full_export, cls_dir)
    meta_path = cls_dir / "hybrid_ray_encoder.json"
    meta = json.loads(meta_path.read_text()) | {"pooling": "cls"}
    meta_path.write_text(json.dumps(meta))
    ref = DualEncoder.from_pretrained(cls_dir).encode(TEXTS, "query")
    got = OnnxEncoder(cls_dir).encode(TEXTS, "query")
    assert _cosines(got, ref).min() > 0.999
    mean = OnnxEncoder(full_export).encode(TEXTS, "query")
    assert _cosines(got, mean).min() < 0.999  # really a different pooling


def test_export_all_layout(full_export):
    for rel in ("config.json", "model.safetensors", "hybrid_ray_encoder.json", "modules.json",
                "1_Pooling/config.json", "onnx/model.onnx", "onnx/model_int8.onnx", "README.md"):
        assert (full_export / rel).is_file(), rel
    assert (full_export / "onnx/model_int8.onnx").stat().st_size < (full_export / "onnx/model.onnx").stat().st_size
    info = json.loads((full_export / "onnx/export.json").read_text())
    assert info["int8"]["per_channel"] is True and info["max_abs_diff_vs_torch"] < 1e-3


def test_load_encoder_backends(full_export, mean_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert isinstance(load_encoder(full_export, "onnx"), OnnxEncoder)
    assert isinstance(load_encoder(full_export, "torch"), DualEncoder)
    assert isinstance(load_encoder(full_export, "auto"), OnnxEncoder)
    assert isinstance(load_encoder(mean_dir, "auto"), DualEncoder)  # no onnx/ there
    with pytest.raises(HybridRayError, match="backend must be"):
        load_encoder(full_export, "tensorrt")
    # load_encoder(mean_dir, "onnx") exports into the ONNX cache: tests/export/test_backend.py


def test_onnx_encoder_errors(full_export, tmp_path):
    with pytest.raises(HybridRayError, match="CPU only"):
        OnnxEncoder(full_export).to("cuda")
    with pytest.raises(HybridRayError, match="hybrid_ray_encoder.json"):
        OnnxEncoder(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        OnnxEncoder(full_export).encode(["x"], "document")
