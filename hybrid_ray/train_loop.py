"""The per-worker training loop: DeepSpeed ZeRO over the hybrid batch sampler.

Runs inside each Ray Train worker (``TorchTrainer(train_loop_per_worker=train_loop)``). Ray has
already created the torch process group (gloo on CPU, NCCL on GPU); DeepSpeed joins it. The
hybrid sampler is the only source of batches: every rank computes the same global batch from
(seed, epoch, step) and keeps its own slice, so no DistributedSampler is involved.

Checkpoints (every ``run.checkpoint_every`` steps and at the end, see ``hybrid_ray.checkpoint``)
hold DeepSpeed's sharded state, the sampler position and an exported Hugging Face encoder. A restarted
worker group resumes from the latest one and continues the *same* sample stream; a new run can
start from any such checkpoint (``run.resume_from`` / ``hybrid-ray train --resume-from``). Dropout
masks are drawn from a generator re-seeded at every step from ``(sampler.seed, step, rank)``, so a
resumed run repeats the uninterrupted run's steps exactly, not just its batches.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hybrid_ray import grad_sync
from hybrid_ray.checkpoint import (
    ADAPTER_DIR,
    CHECKPOINT_STATE,
    DS_DIR,
    DS_TAG,
    ENCODER_DIR,
    export_encoder,
    load_deepspeed_state,
    read_trainer_state,
)
from hybrid_ray.deepspeed_config import bf16_enabled, deepspeed_config
from hybrid_ray.prefetch import Prefetcher, auto_depth
from hybrid_ray.step_timer import StepTimer

if TYPE_CHECKING:
    from hybrid_ray.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from hybrid_ray.hooks import StepHook

__all__ = ["CHECKPOINT_STATE", "DS_DIR", "DS_TAG", "ENCODER_DIR", "build_encoder", "build_optimizer",
           "build_sampler", "deepspeed_config", "load_training_pairs", "step_seed", "total_steps", "train_loop"]


def _eta(done: int, elapsed_s: float, remaining: int) -> str:
    """``h:mm:ss`` left at the current rate (``?`` before the first step is timed)."""
    if done <= 0 or elapsed_s <= 0:
        return "?"
    secs = int(round(remaining * elapsed_s / done))
    return f"{secs // 3600}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


def build_encoder(model_cfg: ModelConfig):
    """The DualEncoder named by the config: a registered builder ("tiny") or a HF model dir / name."""
    from dataclasses import fields

    from hybrid_ray.modeling.builders import get_model_builder
    from hybrid_ray.modeling.encoder import DualEncoder, EncoderConfig

    enc_cfg = model_cfg.encoder_config()
    builder = get_model_builder(model_cfg.name_or_path)
    if builder is not None:
        encoder = builder(enc_cfg)
    else:
        encoder = DualEncoder.from_pretrained(
            model_cfg.name_or_path, **{f.name: getattr(enc_cfg, f.name) for f in fields(EncoderConfig)})
    if model_cfg.freeze_embeddings:
        encoder.model.get_input_embeddings().weight.requires_grad_(False)
    if model_cfg.train_top_layers is not None:
        from hybrid_ray.modeling.freeze import train_top_layers

        train_top_layers(encoder.model, model_cfg.train_top_layers)
    if model_cfg.gradient_checkpointing:
        from hybrid_ray.modeling.checkpointing import enable_gradient_checkpointing

        enable_gradient_checkpointing(encoder)
    if model_cfg.lora is not None:  # last: peft freezes every base weight and wraps encoder.model
        from hybrid_ray.modeling.lora import apply_lora

        encoder = apply_lora(encoder, model_cfg.lora)
    return encoder


def load_training_pairs(data_cfg: DataConfig):
    """Read the training split as a ParallelPairs lookup (optionally a language subset)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from hybrid_ray.data.pairs import open_pairs
    from hybrid_ray.data.parallel import ParallelPairs

    table = open_pairs(data_cfg.path, split=data_cfg.split)
    if data_cfg.langs:
        wanted = pa.array(list(data_cfg.langs), type=pa.string())
        table = table.filter(pc.is_in(table.column("lang"), value_set=wanted))
    return ParallelPairs.from_table(table)


def build_sampler(cfg: TrainConfig, pairs):
    from hybrid_ray.sampler import HybridBatchSampler

    s = cfg.sampler
    domains = pairs.pair_domains()  # None without a 'domain' column (the sampler then refuses domain sampling)
    domain_names, domain_of = domains if domains is not None else (None, None)
    return HybridBatchSampler(
        pairs.available,
        pairs.langs,
        global_batch_size=cfg.optim.global_batch_size,
        alpha=s.alpha,
        seed=s.seed,
        lang_sampling=s.lang_sampling,
        lang_temperature=s.lang_temperature,
        lang_weights=s.lang_weights,
        steps_per_epoch=s.steps_per_epoch,
        domain_of=domain_of,
        domains=domain_names,
        domain_sampling=s.domain_sampling,
        domain_temperature=s.domain_temperature,
        domain_weights=s.domain_weights,
    )


def build_optimizer(optim: OptimConfig, params) -> torch.optim.Optimizer:
    """The run's AdamW (the paper's optimizer): torch's fused kernel unless ``optim.fused`` is off.

    The benchmarks' bare loops build theirs here too, so every contender steps the same way.
    """
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, fused=bool(optim.fused))


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    total = cfg.optim.epochs * steps_per_epoch
    if cfg.optim.max_steps > 0:
        total = min(total, cfg.optim.max_steps)
    return total


def _lr_lambda(warmup: int, total: int):
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return fn


def step_seed(seed: int, global_step: int, rank: int) -> int:
    """The torch seed for training step ``global_step + 1`` on ``rank`` (dropout masks)."""
    return (int(seed) * 1_000_003 + int(global_step) * 1_009 + int(rank)) % (2**63 - 1)


# Ray Train V2's controller takes each worker's latest report once per poll (this env var, default
# 2 s) from a queue of size 1: a report made before the previous one was taken blocks until then.
CONTROLLER_POLL_ENV, CONTROLLER_POLL_DEFAULT_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0


def report_interval_s(setting: float | None) -> float:
    """Seconds between metrics-only reports: ``run.report_every_s``, or (unset) 1.25x the poll."""
    if setting is not None:
        return float(setting)
    try:
        poll = float(os.environ.get(CONTROLLER_POLL_ENV, CONTROLLER_POLL_DEFAULT_S))
    except ValueError:
        poll = CONTROLLER_POLL_DEFAULT_S
    return 1.25 * poll


def _all_agree(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank: ``ray.train.report`` is a barrier, so all ranks must call it
    together. One 1-element broadcast per log window (none at world size 1)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


LOOP_CONFIG_KEY = "cfg"  # train_loop_config = {"cfg": TrainConfig, "step_hooks": [StepHook, ...]}


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``); ``config`` is ``hybrid_ray.train.loop_config``'s."""
    import deepspeed
    import ray.train
    import ray.train.torch

    from hybrid_ray.collator import HybridCollator
    from hybrid_ray.losses import build_loss, needs_encoder

    cfg: TrainConfig = config[LOOP_CONFIG_KEY]
    hooks: list[StepHook] = list(config.get("step_hooks") or [])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_gpu = device.type == "cuda"
    use_shm = grad_sync.wanted(cfg.deepspeed.cpu_allreduce, use_gpu=use_gpu, zero_stage=cfg.deepspeed.zero_stage,
                               bf16=bf16_enabled(cfg, use_gpu), world=world, local_world=ctx.get_local_world_size())
    if use_shm:
        grad_sync.prepare(world)
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    torch.manual_seed(cfg.sampler.seed)

    pairs = load_training_pairs(cfg.data)
    sampler = build_sampler(cfg, pairs)
    steps_per_epoch = sampler.steps_per_epoch
    n_total = total_steps(cfg, steps_per_epoch)
    optim = cfg.optim
    per_rank = optim.global_batch_size // world

    encoder = build_encoder(cfg.model)
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = build_optimizer(optim, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(optim.warmup_steps, n_total))
    ds_conf = deepspeed_config(cfg, per_rank, world, use_gpu)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=encoder, optimizer=optimizer, lr_scheduler=scheduler, config=ds_conf
    )
    if world == 1 and cfg.deepspeed.zero_stage == 0:
        # Nothing to average over: DeepSpeed would still flatten, all-reduce (a copy) and unflatten
        # every gradient (~7% of a CPU step on e5-small). ZeRO-1+ reduce inside their own hooks.
        engine.enable_backward_allreduce = False
    sync = grad_sync.ShmGradSync.start(params, world, rank, cfg.deepspeed.cpu_allreduce) if use_shm else None
    if sync is not None:  # ZeRO-0 on one CPU machine: shared memory averages instead of gloo
        engine.enable_backward_allreduce = False
    # How gradients are averaged (reported with every metrics line): "shm" (hybrid_ray.grad_sync),
    # "deepspeed" (its ZeRO-0 all-reduce or the ZeRO-1+ hooks), "none" (one rank, ZeRO-0).
    allreduce = "shm" if sync else ("none" if world == 1 and cfg.deepspeed.zero_stage == 0 else "deepspeed")
    if rank == 0 and world > 1 and not use_gpu and cfg.deepspeed.zero_stage == 0:
        print(f"[hybrid-ray] gradient all-reduce: {'shared memory' if sync else 'gloo'}", flush=True)
    collator = HybridCollator(encoder, num_negatives=cfg.data.num_negatives)
    loss_fn = build_loss(cfg.loss.name, cfg.model.temperature, dict(cfg.loss.kwargs))
    drives_encoder = needs_encoder(loss_fn)

    # ---------------------------------------------------------------- resume
    # Ray's own checkpoint (a restarted worker group, or a restored run) wins over the one the
    # user asked to start from: after a failure we continue from the latest step, not the start.
    global_step, epoch, step = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and cfg.run.resume_from:
        checkpoint = ray.train.Checkpoint(cfg.run.resume_from)
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
    for hook in hooks:
        hook.setup(cfg, rank, world)
    log_every = max(1, cfg.run.log_every)
    report_every_s = report_interval_s(cfg.run.report_every_s)
    last_report = -float("inf")  # perf_counter of the last ray.train.report (the first always goes)
    ckpt_every = cfg.run.checkpoint_every
    window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
    engine.train()
    timer = StepTimer(sync=torch.cuda.synchronize if (use_gpu and cfg.run.profile_phases) else None)

    def batches():
        sampler.load_state_dict({"epoch": epoch, "step": step}, strict=False)
        yield from sampler.iter_from_state(optim.epochs, rank=rank, world_size=world)

    # Batch assembly + tokenisation run ahead on a thread (data.prefetch batches; unset: when a core
    # is free for it, see hybrid_ray.prefetch.auto_depth), in the sampler's exact order; the
    # sampler's own position then runs ahead too, so checkpoints record the position after the
    # batch trained on (sampler.state_after), never sampler.state_dict().
    depth = auto_depth(cfg.data.prefetch, use_gpu=use_gpu, local_ranks=ctx.get_local_world_size(),
                       threads_per_rank=torch.get_num_threads())
    prepared = iter(Prefetcher(batches(), lambda b: collator(b, pairs), depth=depth))

    # Progress for a person at a terminal: the rank-0 line carries percent done and an ETA from
    # the rate since this (possibly resumed) run started.
    t_start, start_step = time.perf_counter(), global_step

    while global_step < n_total:
        with timer.phase("batch"):
            got = next(prepared, None)
        if got is None:
            break
        local, features = got
        for hook in hooks:
            hook.before_step(global_step)
        # Dropout: a fresh, step-determined stream (resume-exact; ranks draw different masks).
        torch.manual_seed(step_seed(cfg.sampler.seed, global_step, rank))
        q_inputs = {k: v.to(device) for k, v in features["query"].items()}
        p_inputs = {k: v.to(device) for k, v in features["passage"].items()}
        if drives_encoder:  # e.g. cached_infonce: chunked forwards + its one engine.backward
            with timer.phase("forward"):
                loss, scale = loss_fn.step(engine, q_inputs, p_inputs)
        else:
            with timer.phase("forward"):
                q_emb, scale = engine(**q_inputs, return_scale=True)
                p_emb = engine(**p_inputs)
                loss = loss_fn(q_emb, p_emb, logit_scale=scale)
            with timer.phase("backward"):
                engine.backward(loss)
        if sync is not None:
            with timer.phase("backward"):  # the average DeepSpeed's backward would have done
                sync()
        with timer.phase("step"):
            engine.step()
        global_step += 1
        # Keep the loss on the device: a float() per step is a host sync on a GPU. Hooks (tests,
        # benchmarks) get the per-step value; the log line gets the window mean.
        step_loss_t = loss.detach()
        window_loss = window_loss + step_loss_t  # a device tensor from the first step on
        window_n += 1
        phases = timer.take()
        with timer.phase("hooks"):
            if hooks:
                step_loss = float(step_loss_t)
                for hook in hooks:
                    hook.on_phases(global_step, phases)
                    hook.after_step(global_step, local, step_loss)

        last = global_step >= n_total
        do_ckpt = last or (ckpt_every > 0 and global_step % ckpt_every == 0)
        if global_step % log_every == 0 or do_ckpt:
            with timer.phase("report"):
                elapsed = time.perf_counter() - t_window
                metrics = {
                    "step": global_step,
                    "epoch": local.epoch,
                    "loss": float(window_loss) / max(1, window_n),
                    "batch_kind": local.kind,
                    "batch_lang": pairs.langs[int(local.q_lang[0])] if local.kind == "mono" else "mixed",
                    "samples_per_s": window_n * optim.global_batch_size / max(elapsed, 1e-9),
                    "lr": float(scheduler.get_last_lr()[0]) if scheduler is not None else optim.lr,
                    "temperature": 1.0 / float(scale.detach()),
                    "grad_allreduce": allreduce,
                    "prefetch": depth,
                }
                metrics.update({f"phase_s/{k}": round(v, 6) for k, v in timer.window_means().items()})
                mix = sampler.batch_domain_counts(local)  # this rank's slice; {} without domains
                if mix:
                    metrics["batch_domains"] = ",".join(f"{d}:{n}" for d, n in sorted(mix.items()))
                if rank == 0:
                    print(
                        f"[hybrid-ray] step {global_step}/{n_total} ({100 * global_step // max(1, n_total)}%, "
                        f"ETA {_eta(global_step - start_step, time.perf_counter() - t_start, n_total - global_step)}) "
                        f"epoch {local.epoch} "
                        f"loss {metrics['loss']:.4f} {local.kind}({metrics['batch_lang']}) "
                        f"{metrics['samples_per_s']:.1f} samples/s lr {metrics['lr']:.2e}"
                        + (f" domains {metrics['batch_domains']}" if mix else ""),
                        flush=True,
                    )
                    if writer is not None:
                        for key in ("loss", "samples_per_s", "lr", "temperature"):
                            writer.add_scalar(f"train/{key}", metrics[key], global_step)
                        for key, val in metrics.items():
                            if key.startswith("phase_s/"):
                                writer.add_scalar(f"train/{key}", val, global_step)
                        writer.add_scalar("train/mono_batch", float(local.kind == "mono"), global_step)
                        for dom, n in mix.items():
                            writer.add_scalar(f"train/domain_frac/{dom}", n / max(1, len(local)), global_step)
                        writer.flush()
                if do_ckpt:
                    _report_with_checkpoint(engine, encoder, sampler.state_after(local), cfg, metrics,
                                            global_step, rank)
                    last_report = time.perf_counter()
                elif _all_agree(time.perf_counter() - last_report >= report_every_s, world, device):
                    ray.train.report(metrics)
                    last_report = time.perf_counter()
                window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
        if last:
            break
    prepared.close()  # stops the prefetch thread (it may be batches ahead)
    if writer is not None:
        writer.close()
    for hook in hooks:
        hook.close()


def _report_with_checkpoint(engine, encoder, sampler_state: dict, cfg: TrainConfig, metrics, global_step,
                            rank) -> None:
    import json
    import tempfile

    import ray.train

    with tempfile.TemporaryDirectory(prefix="hybrid-ray-ckpt-") as tmp:
        tmp_path = Path(tmp)
        engine.save_checkpoint(str(tmp_path / DS_DIR), tag=DS_TAG)
        export_encoder(engine, encoder, tmp_path / ENCODER_DIR, cfg.deepspeed.zero_stage, rank,
                       adapter_dir=tmp_path / ADAPTER_DIR, base=cfg.model.name_or_path)
        if rank == 0:
            state = {"global_step": global_step, "sampler": sampler_state}
            (tmp_path / CHECKPOINT_STATE).write_text(json.dumps(state, indent=2))
            if cfg.eval.enabled:
                from hybrid_ray.validation import validate

                metrics = {**metrics, **validate(tmp_path / ENCODER_DIR, cfg.eval)}
                print(f"[hybrid-ray] step {global_step} validation: "
                      + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_")),
                      flush=True)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _tensorboard(cfg: TrainConfig, rank: int):
    if rank != 0 or not cfg.run.tensorboard or "://" in cfg.run.storage_path:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
        return None
    return SummaryWriter(str(cfg.run.run_dir / "tensorboard"))
