"""The per-worker training loop: DeepSpeed ZeRO over the hybrid batch sampler.

Runs inside each Ray Train worker (``TorchTrainer(train_loop_per_worker=train_loop)``). Ray has
already created the torch process group (gloo on CPU, NCCL on GPU); DeepSpeed joins it. The
hybrid sampler is the only source of batches: every rank computes the same global batch from
(seed, epoch, step) and keeps its own slice, so no DistributedSampler is involved.

Checkpoints (every ``run.checkpoint_every`` steps and at the end) hold DeepSpeed's sharded state
(each rank writes its shard; Ray merges the rank directories into one checkpoint), the sampler
position (``trainer_state.json``) and an exported Hugging Face encoder (``encoder/``). A restarted
worker group resumes from the latest one and continues the *same* sample stream; a new run can
start from any such checkpoint (``run.resume_from`` / ``hybrid-ray train --resume-from``). Dropout
masks are drawn from a generator re-seeded at every step from ``(sampler.seed, step, rank)``, so a
resumed run repeats the uninterrupted run's steps exactly, not just its batches.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hybrid_ray.errors import HybridRayError

CHECKPOINT_STATE = "trainer_state.json"
DS_DIR = "deepspeed"
DS_TAG = "state"  # DeepSpeed's checkpoint tag: <checkpoint>/deepspeed/state/*.pt
ENCODER_DIR = "encoder"
CONFIG_DIR = Path(__file__).parent / "configs" / "deepspeed"


class CheckpointError(HybridRayError):
    """A checkpoint to resume from is missing or incomplete. Names the checkpoint directory."""


def deepspeed_config(cfg: dict[str, Any], per_rank_batch: int, world_size: int, use_gpu: bool) -> dict:
    """The DeepSpeed JSON for this run: the shipped ZeRO-<stage> file + batch, precision, extras."""
    ds = cfg["deepspeed"]
    conf = json.loads((CONFIG_DIR / f"zero{ds['zero_stage']}.json").read_text())
    conf["train_micro_batch_size_per_gpu"] = per_rank_batch
    conf["gradient_accumulation_steps"] = 1
    conf["train_batch_size"] = per_rank_batch * world_size
    conf["gradient_clipping"] = float(cfg["optim"]["grad_clip"])
    bf16 = str(ds["bf16"]).lower()
    if bf16 == "true" or (bf16 == "auto" and use_gpu):
        conf["bf16"] = {"enabled": True}
    if ds.get("offload_optimizer") and ds["zero_stage"] >= 1:
        conf["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        conf["zero_force_ds_cpu_optimizer"] = False
    _deep_update(conf, ds.get("extra") or {})
    return conf


def _eta(done: int, elapsed_s: float, remaining: int) -> str:
    """``h:mm:ss`` left at the current rate (``?`` before the first step is timed)."""
    if done <= 0 or elapsed_s <= 0:
        return "?"
    secs = int(round(remaining * elapsed_s / done))
    return f"{secs // 3600}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


def _deep_update(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value


def build_encoder(model_cfg: dict[str, Any]):
    """The DualEncoder named by the config ("tiny" builds a tiny random BERT for tests)."""
    from hybrid_ray.modeling.encoder import DualEncoder, EncoderConfig

    fields = {k: model_cfg[k] for k in (
        "pooling", "normalize", "query_prefix", "passage_prefix", "max_length", "temperature",
        "learn_temperature")}
    if model_cfg["name_or_path"] == "tiny":
        from hybrid_ray.testing import tiny_encoder

        encoder = tiny_encoder(config=EncoderConfig(**fields))
    else:
        encoder = DualEncoder.from_pretrained(model_cfg["name_or_path"], **fields)
    if model_cfg.get("freeze_embeddings"):
        encoder.model.get_input_embeddings().weight.requires_grad_(False)
    return encoder


def load_training_pairs(data_cfg: dict[str, Any]):
    """Read the training split as a ParallelPairs lookup (optionally a language subset)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from hybrid_ray.data.pairs import open_pairs
    from hybrid_ray.data.parallel import ParallelPairs

    table = open_pairs(data_cfg["path"], split=data_cfg.get("split"))
    if data_cfg.get("langs"):
        wanted = pa.array(list(data_cfg["langs"]), type=pa.string())
        table = table.filter(pc.is_in(table.column("lang"), value_set=wanted))
    return ParallelPairs.from_table(table)


def build_sampler(cfg: dict[str, Any], pairs):
    from hybrid_ray.sampler import HybridBatchSampler

    s = cfg["sampler"]
    return HybridBatchSampler(
        pairs.available,
        pairs.langs,
        global_batch_size=cfg["optim"]["global_batch_size"],
        alpha=s["alpha"],
        seed=s["seed"],
        lang_sampling=s["lang_sampling"],
        lang_temperature=s["lang_temperature"],
        lang_weights=s["lang_weights"],
        steps_per_epoch=s["steps_per_epoch"],
    )


def total_steps(cfg: dict[str, Any], steps_per_epoch: int) -> int:
    total = cfg["optim"]["epochs"] * steps_per_epoch
    if cfg["optim"]["max_steps"] > 0:
        total = min(total, cfg["optim"]["max_steps"])
    return total


def _lr_lambda(warmup: int, total: int):
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return fn


def export_encoder(engine, encoder, out_dir: Path, zero_stage: int, rank: int) -> None:
    """Write the HF encoder from rank 0 (ZeRO-3: gather the partitioned weights collectively)."""
    import deepspeed

    def _save() -> None:
        module = engine.module
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


def step_seed(seed: int, global_step: int, rank: int) -> int:
    """The torch seed for training step ``global_step + 1`` on ``rank`` (dropout masks)."""
    return (int(seed) * 1_000_003 + int(global_step) * 1_009 + int(rank)) % (2**63 - 1)


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


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``)."""
    import deepspeed
    import ray.train
    import ray.train.torch

    from hybrid_ray.collator import HybridCollator
    from hybrid_ray.loss import DistributedInfoNCE

    cfg = config
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_gpu = device.type == "cuda"
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    torch.manual_seed(cfg["sampler"]["seed"])

    pairs = load_training_pairs(cfg["data"])
    sampler = build_sampler(cfg, pairs)
    steps_per_epoch = sampler.steps_per_epoch
    n_total = total_steps(cfg, steps_per_epoch)
    per_rank = cfg["optim"]["global_batch_size"] // world

    encoder = build_encoder(cfg["model"])
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["optim"]["lr"], weight_decay=cfg["optim"]["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg["optim"]["warmup_steps"], n_total))
    ds_conf = deepspeed_config(cfg, per_rank, world, use_gpu)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=encoder, optimizer=optimizer, lr_scheduler=scheduler, config=ds_conf
    )
    collator = HybridCollator(encoder, num_negatives=cfg["data"]["num_negatives"])
    loss_fn = DistributedInfoNCE(temperature=cfg["model"]["temperature"])

    # ---------------------------------------------------------------- resume
    # Ray's own checkpoint (a restarted worker group, or a restored run) wins over the one the
    # user asked to start from: after a failure we continue from the latest step, not the start.
    global_step, epoch, step = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and cfg["run"].get("resume_from"):
        checkpoint = ray.train.Checkpoint(cfg["run"]["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = read_trainer_state(Path(ckpt_dir), label=checkpoint.path)
            load_deepspeed_state(engine, Path(ckpt_dir), label=checkpoint.path)
        sampler.load_state_dict(state["sampler"])
        global_step, epoch, step = state["global_step"], state["sampler"]["epoch"], state["sampler"]["step"]
        if rank == 0:
            print(f"[hybrid-ray] resumed from checkpoint {checkpoint.path} at step {global_step} "
                  f"(epoch {epoch}, step {step})", flush=True)

    writer = _tensorboard(cfg, rank)
    trace = _trace_file(cfg, rank)
    log_every = max(1, cfg["run"]["log_every"])
    ckpt_every = cfg["run"]["checkpoint_every"]
    fail_at = cfg["run"].get("fail_at_step")
    window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
    engine.train()

    def batches():
        sampler.load_state_dict({"epoch": epoch, "step": step}, strict=False)
        yield from sampler.iter_from_state(cfg["optim"]["epochs"], rank=rank, world_size=world)

    # Progress for a person at a terminal: the rank-0 line carries percent done and an ETA from
    # the rate since this (possibly resumed) run started.
    t_start, start_step = time.perf_counter(), global_step

    for local in batches():
        if global_step >= n_total:
            break
        if fail_at is not None and global_step == fail_at and rank == min(1, world - 1):
            _maybe_crash(cfg)
        # Dropout: a fresh, step-determined stream (resume-exact; ranks draw different masks).
        torch.manual_seed(step_seed(cfg["sampler"]["seed"], global_step, rank))
        features = collator(local, pairs)
        q_inputs = {k: v.to(device) for k, v in features["query"].items()}
        p_inputs = {k: v.to(device) for k, v in features["passage"].items()}
        q_emb, scale = engine(**q_inputs, return_scale=True)
        p_emb = engine(**p_inputs)
        loss = loss_fn(q_emb, p_emb, logit_scale=scale)
        engine.backward(loss)
        engine.step()
        global_step += 1
        window_loss += float(loss.detach())
        window_n += 1
        if trace is not None:
            trace.write(json.dumps({"global_step": global_step, "epoch": local.epoch, "step": local.step,
                                    "kind": local.kind, "pairs": local.pair_idx.tolist(),
                                    "q_lang": local.q_lang.tolist(), "p_lang": local.p_lang.tolist(),
                                    "loss": float(loss.detach())}) + "\n")
            trace.flush()

        last = global_step >= n_total
        do_ckpt = last or (ckpt_every > 0 and global_step % ckpt_every == 0)
        if global_step % log_every == 0 or do_ckpt:
            elapsed = time.perf_counter() - t_window
            metrics = {
                "step": global_step,
                "epoch": local.epoch,
                "loss": window_loss / max(1, window_n),
                "batch_kind": local.kind,
                "batch_lang": pairs.langs[int(local.q_lang[0])] if local.kind == "mono" else "mixed",
                "samples_per_s": window_n * cfg["optim"]["global_batch_size"] / max(elapsed, 1e-9),
                "lr": float(scheduler.get_last_lr()[0]) if scheduler is not None else cfg["optim"]["lr"],
                "temperature": 1.0 / float(scale.detach()),
            }
            if rank == 0:
                print(
                    f"[hybrid-ray] step {global_step}/{n_total} ({100 * global_step // max(1, n_total)}%, "
                    f"ETA {_eta(global_step - start_step, time.perf_counter() - t_start, n_total - global_step)}) "
                    f"epoch {local.epoch} "
                    f"loss {metrics['loss']:.4f} {local.kind}({metrics['batch_lang']}) "
                    f"{metrics['samples_per_s']:.1f} samples/s lr {metrics['lr']:.2e}",
                    flush=True,
                )
                if writer is not None:
                    for key in ("loss", "samples_per_s", "lr", "temperature"):
                        writer.add_scalar(f"train/{key}", metrics[key], global_step)
                    writer.add_scalar("train/mono_batch", float(local.kind == "mono"), global_step)
                    writer.flush()
            if do_ckpt:
                _report_with_checkpoint(engine, encoder, sampler, cfg, metrics, global_step, rank)
            else:
                ray.train.report(metrics)
            window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
        if last:
            break
    if writer is not None:
        writer.close()
    if trace is not None:
        trace.close()


def _report_with_checkpoint(engine, encoder, sampler, cfg, metrics, global_step, rank) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="hybrid-ray-ckpt-") as tmp:
        tmp_path = Path(tmp)
        engine.save_checkpoint(str(tmp_path / DS_DIR), tag=DS_TAG)
        export_encoder(engine, encoder, tmp_path / ENCODER_DIR, cfg["deepspeed"]["zero_stage"], rank)
        if rank == 0:
            state = {"global_step": global_step, "sampler": sampler.state_dict()}
            (tmp_path / CHECKPOINT_STATE).write_text(json.dumps(state, indent=2))
            if cfg["eval"]["miracl_path"] or cfg["eval"]["pairs_path"]:
                from hybrid_ray.validation import validate

                metrics = {**metrics, **validate(tmp_path / ENCODER_DIR, cfg["eval"])}
                print(f"[hybrid-ray] step {global_step} validation: "
                      + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_")),
                      flush=True)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _tensorboard(cfg: dict[str, Any], rank: int):
    if rank != 0 or not cfg["run"]["tensorboard"] or "://" in cfg["run"]["storage_path"]:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
        return None
    log_dir = Path(cfg["run"]["storage_path"]).expanduser() / cfg["run"]["name"] / "tensorboard"
    return SummaryWriter(str(log_dir))


def _trace_file(cfg: dict[str, Any], rank: int):
    """Optional per-rank JSONL of every batch trained on (used to prove resume reproducibility)."""
    trace_dir = cfg["run"].get("trace_dir")
    if not trace_dir:
        return None
    Path(trace_dir).mkdir(parents=True, exist_ok=True)
    return open(Path(trace_dir) / f"rank{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115


def _maybe_crash(cfg: dict[str, Any]) -> None:
    """Fault-tolerance drill: kill this worker process once (a marker file prevents a loop).

    Waits a few seconds first: Ray Train's controller commits a reported checkpoint when it next
    polls the workers (every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default), so a crash
    within that window would resume from the checkpoint before; the drill checks the common case.
    """
    marker = Path(cfg["run"]["storage_path"]).expanduser() / cfg["run"]["name"] / ".crashed-once"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("crashed\n")
    time.sleep(2.5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
    print("[hybrid-ray] fail_at_step: killing this worker to exercise FailureConfig", flush=True)
    os._exit(1)

