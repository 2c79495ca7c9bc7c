"""Ray Tune glue: the search over alpha (and friends) as Tune trials, each a Ray Train run.

Each trial is a *driver function* (Ray 2.60's Train V2 does not accept ``Tuner(trainer)``): it
derives the trial's ``TrainConfig`` from the spec's ``train_base`` with
``hybrid_ray.config.apply_overrides``, runs :func:`hybrid_ray.train.run_training` (a
``TorchTrainer``) with a Tune report callback, so the validation metrics of every checkpoint stream
to Tune as intermediate results (ASHA can stop a trial on them), then reports the final metrics and
the path of the trial's exported encoder. The function asks Tune for 0.01 CPU only: the training
workers hold the real resources, so ``max_concurrent_trials`` (derived from the cluster size when
not set) is what bounds how many trials train at once.

At the end the search writes the result files and exports the best encoder
(:mod:`hybrid_ray.tuning.results`).
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hybrid_ray.config import ScalingConfigSchema, TrainConfig, apply_overrides
from hybrid_ray.errors import ConfigError
from hybrid_ray.tuning.config import HPARAMS, ParamSpec, TuneSpec, load_tune_config, train_overrides_for
from hybrid_ray.tuning.results import finish
from hybrid_ray.validation import MIRACL_KEYS, PAIRS_KEYS


# --------------------------------------------------------------------------- Ray Tune pieces
def param_space(params: list[ParamSpec], searcher: str) -> dict[str, Any]:
    """Tune's ``param_space``. Optuna cannot take ``grid_search``: a grid becomes a choice there."""
    from ray import tune

    space: dict[str, Any] = {}
    for p in params:
        vals = list(p.values)
        if p.kind == "const":
            space[p.name] = vals[0]
        elif p.kind == "grid" and searcher == "grid":
            space[p.name] = tune.grid_search(vals)
        elif p.kind in ("grid", "choice"):
            space[p.name] = tune.choice(vals)
        elif p.kind == "uniform":
            space[p.name] = tune.uniform(*vals)
        else:
            space[p.name] = tune.loguniform(*vals)
    return space


def derive_max_concurrent(resources: dict[str, float], scaling: ScalingConfigSchema) -> int:
    """``floor(cluster CPUs / CPUs of a trial's workers)`` (and the same for GPUs), at least 1.

    Why not let Tune decide: every trial function asks for only 0.01 CPU, so Tune would start all
    trials at once and their Train workers would queue for resources, each trial holding a
    controller while it waits.
    """
    per_cpu = scaling.num_workers * scaling.cpus_per_worker
    n = math.floor(resources.get("CPU", 0.0) / per_cpu + 1e-9) if per_cpu > 0 else 1 << 30
    if scaling.use_gpu:
        per_gpu = scaling.num_workers * scaling.gpus_per_worker
        if per_gpu > 0:
            n = min(n, math.floor(resources.get("GPU", 0.0) / per_gpu + 1e-9))
    return max(1, int(n))


def build_searcher(spec: TuneSpec, max_concurrent: int):
    """The search algorithm, already limited to ``max_concurrent`` running trials.

    Why here and not ``TuneConfig(max_concurrent_trials=...)``: Tune ignores that setting (with a
    warning only) when the search algorithm is a ``BasicVariantGenerator`` instance, which the grid
    searcher needs for its seed; Optuna gets a ``ConcurrencyLimiter``.
    """
    if spec.cfg.searcher == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(metric=spec.metric, mode=spec.mode, seed=int(spec.cfg.seed)),
                                  max_concurrent=max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=int(spec.cfg.seed))


def build_scheduler(spec: TuneSpec):
    s = spec.cfg.scheduler
    if s.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = int(s.max_t) if s.max_t is not None else max(spec.validations_per_trial, int(s.grace_period))
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=int(s.grace_period),
                         reduction_factor=int(s.reduction_factor))


def trial_label(hparams: dict[str, Any]) -> str:
    """A short, path-safe label such as ``alpha=0.5_lr=3e-05``."""
    return "_".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in hparams.items())


def _trial_dirname(trial: Any) -> str:
    hp = {k: v for k, v in trial.config.items() if k in HPARAMS}
    return f"trial_{trial.trial_id}_{trial_label(hp)}"


@dataclass
class TrialSetup:
    """What every trial needs from the driver (shipped once through the object store)."""

    train_base: TrainConfig
    hparams: tuple[str, ...]
    metric: str
    train_storage: str  # <experiment dir>/train: every trial's Train run lives under it


def build_trial_train_config(setup: TrialSetup, hparams: dict[str, Any], run_name: str) -> TrainConfig:
    """The trial's training config: the base + its hyper-parameters + its own run name/storage.

    The run name is derived from the Tune trial id, which survives ``Tuner.restore`` and trial
    retries, so a retried or resumed trial finds its own Train run and Ray Train V2 resumes it
    from its latest checkpoint (same ``RunConfig(name, storage_path)``).
    """
    return apply_overrides(setup.train_base, {
        **train_overrides_for(hparams),
        "run.name": run_name,
        "run.storage_path": setup.train_storage,
        "run.export_dir": None,  # <train storage>/<run>/encoder
    })


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: train with the trial's hyper-parameters, stream validations, report the end."""
    from ray import tune

    from hybrid_ray.train import run_training
    from hybrid_ray.tuning.callback import ValidatedReportCallback

    trial_id = tune.get_context().get_trial_id()
    hparams = {name: config[name] for name in setup.hparams if name in config}
    run_name = f"{trial_id}_{trial_label(hparams)}"
    cfg = build_trial_train_config(setup, hparams, run_name)
    t0 = time.perf_counter()
    result, exported = run_training(cfg, callbacks=[ValidatedReportCallback(setup.metric)])
    final = {k: v for k, v in (result.metrics or {}).items()
             if isinstance(v, int | float) and not isinstance(v, bool)}
    tune.report({
        **final,
        "encoder_dir": str(exported),
        "checkpoint_path": str(result.checkpoint.path) if result.checkpoint else "",
        "train_run": run_name,
        "train_time_s": time.perf_counter() - t0,
        "finished": 1,
    })


# --------------------------------------------------------------------------- running
def should_resume(spec: TuneSpec, resume: bool | None) -> bool:
    """Decide fresh start vs ``Tuner.restore`` before Ray starts (see :func:`resume_decision`)."""
    return resume_decision(spec.exp_dir, spec.cfg.run.resume, resume)


def resume_decision(exp_dir: Path, mode: str, resume: bool | None) -> bool:
    """Fresh start vs ``Tuner.restore`` of the Tune experiment in ``exp_dir`` (Tune and ``experiment``).

    ``resume`` (the ``--resume`` / ``--fresh`` flags) wins over ``mode`` (``run.resume``). ``auto``
    resumes exactly when the experiment directory holds a restorable Tune state: rerunning the same
    command after an interruption (or a RayJob retry) continues it; a finished one is restored as
    finished and only the result files and the export are rewritten.
    """
    from ray.tune import Tuner

    mode = str(mode).lower() if resume is None else ("true" if resume else "false")
    restorable = exp_dir.is_dir() and Tuner.can_restore(str(exp_dir))
    if mode == "true" and not restorable:
        raise ConfigError(f"nothing to resume: {exp_dir} holds no Tune experiment state", key="run.resume")
    if mode == "false" and restorable:
        raise ConfigError(f"{exp_dir} already holds a Tune experiment: resume it (--resume), "
                          "or choose another run.name", key="run.resume")
    return restorable if mode == "auto" else mode == "true"


def run_search(spec: TuneSpec, *, resume: bool | None = None) -> dict[str, Any]:
    """Run (or resume) the search, then write the result files and export the best encoder.

    Returns the content of ``best.json``.
    """
    import ray
    from ray import tune

    from hybrid_ray.config import to_yaml
    from hybrid_ray.console import is_verbose, tune_progress_callback, tune_verbose
    from hybrid_ray.io import write_text_atomic
    from hybrid_ray.local import init_ray

    restoring = should_resume(spec, resume)
    num_cpus = spec.cfg.run.ray_num_cpus or spec.train_base.run.ray_num_cpus
    init_ray(num_cpus=num_cpus, include_dashboard=True if spec.cfg.run.dashboard else None)
    resources = ray.cluster_resources()
    max_conc = spec.cfg.max_concurrent_trials or derive_max_concurrent(resources, spec.train_base.scaling)
    setup = TrialSetup(train_base=spec.train_base, hparams=tuple(p.name for p in spec.params),
                       metric=spec.metric, train_storage=str(spec.exp_dir / "train"))
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"CPU": 0.01})
    print(f"[hybrid-ray tune] experiment {spec.exp_dir} ({'resuming' if restoring else 'new'}); "
          f"{spec.cfg.searcher} search over {', '.join(p.name for p in spec.params)}, metric {spec.metric} "
          f"({spec.mode}), up to {max_conc} concurrent trial(s) on {resources.get('CPU', 0):g} CPU / "
          f"{resources.get('GPU', 0):g} GPU", flush=True)
    t0 = time.perf_counter()
    if restoring:
        tuner = tune.Tuner.restore(str(spec.exp_dir), trainable=trainable, resume_errored=True)
    else:
        spec.exp_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(spec.exp_dir / "tune_config.yaml", OmegaConf.to_yaml(spec.cfg))
        write_text_atomic(spec.exp_dir / "train_config.yaml", to_yaml(spec.train_base))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec.params, spec.cfg.searcher),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, search_alg=build_searcher(spec, max_conc),
                scheduler=build_scheduler(spec), num_samples=int(spec.cfg.num_samples),
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=spec.cfg.run.name, storage_path=str(spec.exp_dir.parent),
                failure_config=tune.FailureConfig(max_failures=int(spec.cfg.run.max_failures)),
                verbose=tune_verbose(spec.cfg.run.verbose),  # quiet: one line per trial instead of tables
                callbacks=[] if is_verbose() else [tune_progress_callback(spec.metric)],
            ),
        )
    grid = tuner.fit()
    elapsed = time.perf_counter() - t0
    rows = collect_rows(grid, spec)
    return finish(spec, rows, elapsed)


def collect_rows(grid: Any, spec: TuneSpec) -> list[dict[str, Any]]:
    """One flat row per trial: id, status, hyper-parameters, final val_* metrics, paths, error."""
    rows = []
    for i in range(len(grid)):
        r = grid[i]
        m = dict(r.metrics or {})
        cfg = r.config or {}
        row: dict[str, Any] = {
            "trial_id": m.get("trial_id") or Path(r.path).name,
            "status": "ERROR" if r.error else ("TERMINATED" if m.get("finished") else "STOPPED"),
        }
        for name in HPARAMS:
            value = cfg.get(name, operator.attrgetter(HPARAMS[name])(spec.train_base))
            if name in cfg or name == "alpha":
                row[name] = value
        for key in (*MIRACL_KEYS, *PAIRS_KEYS, "val_time_s", "loss", "step", "training_iteration",
                    "time_total_s"):
            if key in m:
                row[key] = m[key]
        row["encoder"] = _encoder_source(m)
        row["trial_dir"] = str(r.path)
        if r.error:
            row["error"] = str(r.error).splitlines()[0][:300]
        rows.append(row)
    # Tune's ids are <experiment>_<5-digit counter>: sorting gives creation order, which the
    # ResultGrid does not keep across a restore (it lists trials in completion order there).
    return sorted(rows, key=lambda r: str(r["trial_id"]))


def _encoder_source(metrics: dict[str, Any]) -> str:
    """The trial's encoder: its export when it finished, else its last validated checkpoint's.

    A trial stopped early by ASHA never reaches its export; its last forwarded result names the
    checkpoint whose encoder produced the metric the trial is ranked by.
    """
    enc = metrics.get("encoder_dir")
    if enc and Path(enc).is_dir():
        return str(enc)
    ckpt = metrics.get("checkpoint_path")
    if ckpt and (Path(ckpt) / "encoder").is_dir():
        return str(Path(ckpt) / "encoder")
    return ""


def run_search_from_config(path: str | Path, overrides: list[str] | None = None, *,
                           resume: bool | None = None) -> dict[str, Any]:
    """Load + validate a tune config, then :func:`run_search`. Returns ``best.json``'s content."""
    return run_search(load_tune_config(path, overrides), resume=resume)
