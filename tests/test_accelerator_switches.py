"""The GPU code paths' switches, checked without a GPU: what the config asks for is what runs.

NCCL, bf16 and GPU FAISS themselves need a GPU machine (none was lent so far); these tests pin
the decisions that select them so a GPU run gets them and a CPU run never does.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from hybrid_ray.config import load_config
from hybrid_ray.errors import ConfigError
from hybrid_ray.search import maybe_to_gpu
from hybrid_ray.train_loop import deepspeed_config


@pytest.fixture(autouse=True)
def _data(tmp_path, monkeypatch) -> None:
    (tmp_path / "pairs.parquet").touch()  # the config only checks that the path exists
    monkeypatch.chdir(tmp_path)


def _cfg(*overrides: str):
    return load_config("tiny.yaml", ["data.path=pairs.parquet", *overrides])


@pytest.mark.parametrize(
    ("bf16", "use_gpu", "expected"),
    [("auto", True, True), ("auto", False, False), ("true", False, True), ("false", True, False)],
)
def test_bf16_follows_the_device_unless_forced(bf16: str, use_gpu: bool, expected: bool) -> None:
    conf = deepspeed_config(_cfg(f"deepspeed.bf16={bf16}"), per_rank_batch=4, world_size=2, use_gpu=use_gpu)
    assert conf.get("bf16", {}).get("enabled", False) is expected
    assert conf["train_batch_size"] == 8 and conf["train_micro_batch_size_per_gpu"] == 4


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_zero_stage_uses_its_shipped_file(stage: int) -> None:
    conf = deepspeed_config(_cfg(f"deepspeed.zero_stage={stage}"), per_rank_batch=2, world_size=1, use_gpu=False)
    assert conf["zero_optimization"]["stage"] == stage


def test_bad_bf16_value_is_named() -> None:
    with pytest.raises(ConfigError, match="deepspeed.bf16"):
        _cfg("deepspeed.bf16=maybe")


@pytest.mark.parametrize(("use_gpu", "backend"), [(True, "nccl"), (False, "gloo")])
def test_trainer_backend_and_gpu_resources(use_gpu: bool, backend: str, tmp_path) -> None:
    from hybrid_ray.train import build_trainer

    cfg = _cfg(f"scaling.use_gpu={use_gpu}", f"run.storage_path={tmp_path}")
    trainer = build_trainer(cfg)
    assert trainer.backend_config.backend == backend
    sc = trainer.scaling_config
    assert sc.use_gpu is use_gpu
    assert ("GPU" in sc.resources_per_worker) is use_gpu


def test_faiss_stays_on_cpu_without_a_gpu() -> None:
    index = faiss.IndexFlatIP(4)
    index.add(np.eye(4, dtype=np.float32))
    moved = maybe_to_gpu(index)
    if faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0:
        pytest.skip("a GPU is visible: covered by the GPU run")
    assert moved is index
