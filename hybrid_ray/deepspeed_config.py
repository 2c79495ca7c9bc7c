"""The DeepSpeed JSON config of a run: a shipped ZeRO-<stage> file + batch, precision and extras."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybrid_ray.config import TrainConfig

CONFIG_DIR = Path(__file__).parent / "configs" / "deepspeed"


def deepspeed_config(cfg: TrainConfig, per_rank_batch: int, world_size: int, use_gpu: bool) -> dict:
    """The DeepSpeed JSON for this run: the shipped ZeRO-<stage> file + batch, precision, extras."""
    ds = cfg.deepspeed
    conf = json.loads((CONFIG_DIR / f"zero{ds.zero_stage}.json").read_text())
    conf["train_micro_batch_size_per_gpu"] = per_rank_batch
    conf["gradient_accumulation_steps"] = 1
    conf["train_batch_size"] = per_rank_batch * world_size
    conf["gradient_clipping"] = float(cfg.optim.grad_clip)
    if bf16_enabled(cfg, use_gpu):
        conf["bf16"] = {"enabled": True}
    if ds.offload_optimizer and ds.zero_stage >= 1:
        conf["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        conf["zero_force_ds_cpu_optimizer"] = False
    _deep_update(conf, dict(ds.extra or {}))
    return conf


def bf16_enabled(cfg: TrainConfig, use_gpu: bool) -> bool:
    """``deepspeed.bf16``: ``true``, or ``auto`` on GPUs (CPU bf16 matmuls are slower than fp32 here)."""
    bf16 = str(cfg.deepspeed.bf16).lower()
    return bf16 == "true" or (bf16 == "auto" and use_gpu)


def _deep_update(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value
