"""What a hybrid-ray training checkpoint holds, and reading / writing its pieces.

A checkpoint directory (one per ``ray.train.report(..., checkpoint=...)``) holds DeepSpeed's sharded
state under ``deepspeed/state/`` (each rank writes its shard; Ray merges the rank directories), the
sampler position in ``trainer_state.json`` and an exported Hugging Face encoder in ``encoder/`` (LoRA
runs: merged, with the adapter alone in ``adapter/``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from hybrid_ray.errors import CheckpointError

CHECKPOINT_STATE = "trainer_state.json"
DS_DIR = "deepspeed"
DS_TAG = "state"  # DeepSpeed's checkpoint tag: <checkpoint>/deepspeed/state/*.pt
ENCODER_DIR = "encoder"
ADAPTER_DIR = "adapter"  # LoRA runs only: the adapter alone (ENCODER_DIR holds it merged)


def export_encoder(engine, encoder, out_dir: Path, zero_stage: int, rank: int,
                   adapter_dir: Path | None = None, base: str | None = None) -> None:
    """Write the HF encoder from rank 0 (ZeRO-3: gather the partitioned weights collectively).

    A LoRA model (``model.lora``) is written merged, as a plain HF encoder, and its adapter alone
    to ``adapter_dir`` when given (``base``: the model it adapts, see ``hybrid_ray.modeling.lora``).
    """
    import deepspeed

    from hybrid_ray.modeling.lora import is_lora, merged_copy, save_adapter

    def _save() -> None:
        module = engine.module
        if is_lora(module):
            merged_copy(module).save_pretrained(out_dir)
            if adapter_dir is not None:
                save_adapter(module, adapter_dir, base=base)
            return
        dtype = next(module.parameters()).dtype
        if dtype != torch.float32:  # bf16 training: export full-precision weights
            module = copy.deepcopy(module).float()
        module.save_pretrained(out_dir)

    if zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            if rank == 0:
                _save()
    elif rank == 0:
        _save()


def read_trainer_state(ckpt_dir: Path, label: str | None = None) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint (global step + sampler position), checked."""
    where = label or str(ckpt_dir)
    path = Path(ckpt_dir) / CHECKPOINT_STATE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {where} has no {CHECKPOINT_STATE}: not a hybrid-ray checkpoint")
    try:
        state = json.loads(path.read_text())
        int(state["global_step"]), int(state["sampler"]["epoch"]), int(state["sampler"]["step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {where}: unreadable {CHECKPOINT_STATE} ({exc!r})") from exc
    return state


def load_deepspeed_state(engine, ckpt_dir: Path, label: str | None = None) -> str:
    """Load DeepSpeed's sharded model + optimizer + scheduler state, or raise CheckpointError.

    ``engine.load_checkpoint`` only logs a warning and returns ``(None, None)`` when it finds no
    checkpoint, and falls back to the bare weights when the ZeRO optimizer shards are missing; a
    resume would then carry on silently from freshly initialised weights or optimizer state.
    Every file this rank needs is checked first, and the return value afterwards.
    """
    where = label or str(ckpt_dir)
    load_dir = Path(ckpt_dir) / DS_DIR
    tag_dir = load_dir / DS_TAG
    if not tag_dir.is_dir():
        raise CheckpointError(f"checkpoint {where} has no DeepSpeed state ({DS_DIR}/{DS_TAG} is missing)")
    needed = [Path(engine._get_ckpt_name(str(load_dir), DS_TAG))]
    if engine.zero_optimization():
        needed.append(Path(engine._get_zero_ckpt_name(str(load_dir), DS_TAG)))
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {where} is incomplete: {DS_DIR}/{DS_TAG} lacks {', '.join(missing)} "
            f"(rank {engine.global_rank}'s shard); was it written by {engine.world_size} workers?"
        )
    try:
        load_path, _ = engine.load_checkpoint(str(load_dir), tag=DS_TAG)
    except Exception as exc:  # DeepSpeed raises plain asserts / RuntimeErrors / ZeRORuntimeException
        raise CheckpointError(f"checkpoint {where}: DeepSpeed could not load {DS_DIR}/{DS_TAG}: {exc}") from exc
    if load_path is None:
        raise CheckpointError(f"checkpoint {where}: DeepSpeed found no state under {DS_DIR}/{DS_TAG}")
    return load_path
