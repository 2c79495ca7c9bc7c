"""Driver: hybrid-batch dual-encoder training on Ray Train + DeepSpeed ZeRO.

Locally::

    hybrid-ray train --config hybrid_ray/configs/tiny.yaml optim.max_steps=20

On a cluster (the same program)::

    ray job submit --working-dir . -- python -m hybrid_ray.train --config configs/gpu.yaml

The config is resolved and validated on the driver, before any worker starts, and recorded next
to the run (``<storage>/<name>/config.yaml``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hybrid_ray.cli import run_main
from hybrid_ray.config import TrainConfig, load_config, to_yaml
from hybrid_ray.console import add_verbose_flag, configure_console
from hybrid_ray.errors import ConfigError, TrainingError
from hybrid_ray.io import write_text_atomic

if TYPE_CHECKING:
    from hybrid_ray.hooks import StepHook

METRICS_LOG = "metrics.jsonl"


def _report_log_callback(path: Path):
    """A Train V2 callback appending every ``ray.train.report`` (all ranks) to a JSONL file.

    Train V2's ``Result`` keeps only the metrics of reports that carried a checkpoint; this keeps
    the whole history next to the run: one line per report, ``{"metrics": [rank0, rank1, ...],
    "checkpoint": path or null}``. Runs in the Train controller, which shares the local disk.
    """
    from ray.train import UserCallback

    class ReportLog(UserCallback):
        def __init__(self, path: str) -> None:
            self.path = path

        def after_report(self, run_context, metrics, checkpoint) -> None:
            line = {"metrics": metrics, "checkpoint": checkpoint.path if checkpoint is not None else None}
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, default=str) + "\n")

    return ReportLog(str(path))


def loop_config(cfg: TrainConfig, step_hooks: Sequence[StepHook] | None = None) -> dict:
    """``train_loop_config`` of the TorchTrainer: the typed config itself plus the step hooks."""
    from hybrid_ray.train_loop import LOOP_CONFIG_KEY

    return {LOOP_CONFIG_KEY: cfg, "step_hooks": list(step_hooks or [])}


def build_trainer(cfg: TrainConfig, *, resume_from: str | None = None, callbacks=None,
                  step_hooks: Sequence[StepHook] | None = None):
    """A Ray Train V2 ``TorchTrainer`` running ``hybrid_ray.train_loop.train_loop`` per worker.

    ``resume_from`` (or ``run.resume_from``): a checkpoint directory to start from. Train V2
    rejects ``TorchTrainer(resume_from_checkpoint=...)`` (it raises a DeprecationWarning), so the
    path travels in the loop config and the workers load it when Ray has no newer checkpoint of
    this run (``ray.train.get_checkpoint()``: after a worker failure, or a restored run).
    ``step_hooks``: observers of every step (``hybrid_ray.hooks``), e.g. a batch trace.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from hybrid_ray.console import train_logging_config
    from hybrid_ray.local import worker_env
    from hybrid_ray.train_loop import train_loop

    if resume_from:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume_from=resume_from))
    sc, run = cfg.scaling, cfg.run
    resources = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        resources["GPU"] = sc.gpus_per_worker
    storage = run.storage_path
    callbacks = list(callbacks or [])
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
        callbacks.append(_report_log_callback(Path(storage) / run.name / METRICS_LOG))
    return TorchTrainer(
        train_loop_per_worker=train_loop,
        train_loop_config=loop_config(cfg, step_hooks),
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=run.num_to_keep),
            callbacks=callbacks,
            logging_config=train_logging_config(),  # quiet: per-report INFO lines only in the log files
            # Train V2 patches print() in workers to tee into its logger, which shows every
            # progress line twice on the driver; our lines are already rank-0 only.
            worker_runtime_env={"env_vars": {**worker_env(), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )


def export_dir(cfg: TrainConfig) -> Path:
    if cfg.run.export_dir:
        return Path(cfg.run.export_dir).expanduser()
    return cfg.run.run_dir / "encoder"


def preflight(cfg: TrainConfig) -> None:
    """Fail on the driver, before any worker starts: read the data and plan the first epoch.

    Catches a bad data set (missing split, bad rows, unknown language) and sampler settings the
    data cannot satisfy (a language with fewer pairs than the global batch) with a clear error,
    instead of a traceback from inside a Ray worker.
    """
    from hybrid_ray.losses import build_loss
    from hybrid_ray.train_loop import build_sampler, load_training_pairs

    build_loss(cfg.loss.name, cfg.model.temperature, dict(cfg.loss.kwargs))  # bad loss.kwargs fail here
    pairs = load_training_pairs(cfg.data)
    sampler = build_sampler(cfg, pairs)
    sampler.batch(0, 0)


def run_training(cfg: TrainConfig, *, resume_from: str | None = None, callbacks=None,
                 step_hooks: Sequence[StepHook] | None = None):
    """Fit, then copy the final checkpoint's HF encoder to the export directory.

    Returns ``(result, export_dir)``.
    """
    import shutil

    from hybrid_ray.checkpoint import ENCODER_DIR
    from hybrid_ray.io import atomic_dir

    preflight(cfg)
    result = build_trainer(cfg, resume_from=resume_from, callbacks=callbacks, step_hooks=step_hooks).fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise TrainingError(f"training run {cfg.run.name!r} finished without a checkpoint")
    out = export_dir(cfg)
    with result.checkpoint.as_directory() as ckpt, atomic_dir(out) as tmp:
        shutil.copytree(Path(ckpt) / ENCODER_DIR, tmp, dirs_exist_ok=True)
    return result, out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="YAML config (a file, or a name in hybrid_ray/configs)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sampler.alpha=0.5 optim.max_steps=50")
    p.add_argument("--set", dest="more", action="append", default=[], help="same as a positional override")
    p.add_argument("--resume-from", help="a checkpoint directory to continue from (same as run.resume_from=...)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--export-all", nargs="?", const="", default=None, metavar="DIR",
                   help="after training, also write HF + sentence-transformers + ONNX (+int8) + model card "
                   "(hybrid_ray.export.export_all) to DIR (default: <export dir>-export)")
    add_verbose_flag(p)
    return p


def main(argv: list[str] | None = None, *, step_hooks: Sequence[StepHook] | None = None) -> int:
    """The CLI; ``step_hooks`` lets an in-process caller (tests) observe the run's steps."""
    args = build_parser().parse_args(argv)
    configure_console(args.verbose)
    overrides = [*args.overrides, *args.more]
    if args.resume_from:
        overrides.append(f"run.resume_from={args.resume_from}")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg))
        return 0

    from hybrid_ray.local import init_ray

    init_ray(num_cpus=cfg.run.ray_num_cpus)
    if "://" not in cfg.run.storage_path:
        write_text_atomic(cfg.run.run_dir / "config.yaml", to_yaml(cfg))
    result, out = run_training(cfg, step_hooks=step_hooks)
    m = result.metrics or {}
    print(f"[hybrid-ray] done: step {m.get('step')} loss {m.get('loss', float('nan')):.4f}; "
          f"encoder exported to {out}; checkpoint {result.checkpoint.path}")
    if args.export_all is not None:
        bundle = export_bundle(out, args.export_all or None, cfg)
        print(f"[hybrid-ray] HF + sentence-transformers + ONNX export with model card: {bundle}")
    return 0


def export_bundle(model_dir: Path, out_dir: str | Path | None, cfg: TrainConfig) -> Path:
    """``--export-all``: every ecosystem format of the trained encoder (``hybrid_ray.export``).

    Imported here, not at the top: the export stack (onnxruntime, sentence-transformers) is an
    optional extra that plain training does not need. With validation sets configured (``eval.*``)
    the final encoder is scored on them and the model card carries that evaluation table.
    """
    try:
        from hybrid_ray.export import export_all
    except ImportError as exc:
        raise ConfigError(f"needs hybrid_ray.export and its extras ({exc})", key="--export-all") from exc
    target = Path(out_dir) if out_dir else model_dir.with_name(f"{model_dir.name}-export")
    evals = None
    if cfg.eval.enabled:  # the model card's evaluation table: the final encoder on the validation sets
        from hybrid_ray.validation import validation_results

        evals = validation_results(model_dir, cfg.eval) or None
    return Path(export_all(model_dir, target, train_cfg=cfg, eval_results=evals))


if __name__ == "__main__":
    run_main(main)
