"""Shared test fixtures. Everything runs offline and on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hybrid_ray.local import apply_accelerator_env, apply_loopback_env

REPO = Path(__file__).resolve().parents[1]
# DeepSpeed JIT-compiles a C++ op once; keep the cache in the repo's ignored .cache, not $HOME.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One process less per test cluster; the dashboard path is exercised by the demo and tests/test_local.py.
os.environ.setdefault("HYBRID_RAY_DASHBOARD", "0")
apply_loopback_env()
apply_accelerator_env()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT dual encoder saved as a HF directory (built once per session)."""
    from hybrid_ray.testing import tiny_encoder

    path = tmp_path_factory.mktemp("tiny-model") / "model"
    tiny_encoder(path)
    return path
