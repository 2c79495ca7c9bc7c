"""Ray Tune search over the hybrid-batch mixing ratio alpha, against validation mAP.

A *tune config* (YAML, see ``tune/configs/``) names a training config and what to search::

    train_config: hybrid_ray/configs/tiny.yaml     # any train YAML (or a name in hybrid_ray/configs)
    train_overrides: [data.path=..., eval.miracl_path=...]
    search_space:
      alpha: [0.0, 0.5, 1.0]                       # a list = grid; or {grid|choice: [...]}
      lr: {loguniform: [1.0e-5, 1.0e-4]}           # optional: lr, temperature, lang_temperature, weight_decay
    searcher: grid                                 # grid | optuna
    scheduler: {type: asha, grace_period: 1}       # none | asha (iterations = validations)
    metric: val_miracl_map                         # mode: max
    run: {name: tune-alpha, storage_path: runs/tune, export_dir: null, max_failures: 1, resume: auto}

Each trial is a *driver function* (Ray 2.60's Train V2 does not accept ``Tuner(trainer)``): it
builds the trial's training config, runs :func:`hybrid_ray.train.run_training` (a ``TorchTrainer``)
with a Tune report callback, so the validation metrics of every checkpoint stream to Tune as
intermediate results (ASHA can stop a trial on them), then reports the final metrics and the path
of the trial's exported encoder. The function asks Tune for 0.01 CPU only: the training workers
hold the real resources, so ``max_concurrent_trials`` (derived from the cluster size when not set)
is what bounds how many trials train at once.

At the end the search writes, under ``<run.storage_path>/<run.name>/``: ``results.csv`` /
``results.json`` (one row per trial), ``table.md``, ``alpha_vs_map.png``, ``best.json``, and copies
the best trial's encoder atomically to ``run.export_dir`` (default ``.../best-encoder``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hybrid_ray.errors import ConfigError, HybridRayError
from hybrid_ray.validation import LOWER_IS_BETTER, MIRACL_KEYS, PAIRS_KEYS

TUNE_CONFIG_DIR = Path(__file__).parent / "configs"
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Searchable hyper-parameters: short name -> key in the training config.
HPARAMS: dict[str, str] = {
    "alpha": "sampler.alpha",
    "lr": "optim.lr",
    "temperature": "model.temperature",
    "lang_temperature": "sampler.lang_temperature",
    "weight_decay": "optim.weight_decay",
}
#: Allowed value range per hyper-parameter: (low, high, low inclusive).
HPARAM_RANGES: dict[str, tuple[float, float, bool]] = {
    "alpha": (0.0, 1.0, True),
    "lr": (0.0, math.inf, False),
    "temperature": (0.0, math.inf, False),
    "lang_temperature": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, True),
}
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
SEARCHERS = ("grid", "optuna")
SCHEDULERS = ("none", "asha")
KNOWN_METRICS = (*MIRACL_KEYS, *PAIRS_KEYS, "loss")
RESULT_FILES = ("results.csv", "results.json", "table.md", "alpha_vs_map.png", "best.json")


# --------------------------------------------------------------------------- config schema
@dataclass
class SchedulerSchema:
    type: str = "none"  # none | asha
    grace_period: int = 1  # validations (Tune iterations) before ASHA may stop a trial
    reduction_factor: int = 2
    max_t: int | None = None  # None: the number of validations of a full trial (+1 final report)


@dataclass
class TuneRunSchema:
    name: str = "tune-alpha"
    storage_path: str = "runs/tune"  # experiment dir = <storage_path>/<name>
    export_dir: str | None = None  # best encoder (default <storage_path>/<name>/best-encoder)
    max_failures: int = 1  # Tune retries of a failed trial (resumes from its last checkpoint)
    resume: str = "auto"  # auto: resume when the experiment dir holds a Tune state | true | false
    ray_num_cpus: int | None = None  # logical CPUs of a local cluster (default: the train config's)
    dashboard: bool = False  # force the local dashboard on (default: on unless HYBRID_RAY_DASHBOARD=0)
    verbose: int = 1  # Tune console output: 0 silent, 1 status table, 2 every result


@dataclass
class TuneSchema:
    train_config: str = MISSING
    train_overrides: list[str] = field(default_factory=list)
    search_space: dict[str, Any] = field(default_factory=dict)
    searcher: str = "grid"
    seed: int = 0
    num_samples: int = 1  # grid: repetitions of the grid; optuna: number of trials
    metric: str = "val_miracl_map"
    mode: str = "max"
    max_concurrent_trials: int | None = None  # None: floor(cluster CPUs / CPUs per trial), >= 1
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)
    run: TuneRunSchema = field(default_factory=TuneRunSchema)


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyper-parameter: ``kind`` is const | grid | choice | uniform | loguniform."""

    name: str
    kind: str
    values: tuple[float, ...]  # const: (v,); grid / choice: the values; (log)uniform: (low, high)


@dataclass
class TuneSpec:
    """A resolved, validated tune config: everything a search needs, computed on the driver."""

    cfg: DictConfig
    params: list[ParamSpec]
    train_path: Path
    train_base: dict[str, Any]  # resolved training config (paths absolute for local runs)
    exp_dir: Path
    export_dir: Path
    validations_per_trial: int

    @property
    def metric(self) -> str:
        return str(self.cfg.metric)

    @property
    def mode(self) -> str:
        return str(self.cfg.mode)


# --------------------------------------------------------------------------- loading / validation
def _find_config(path: str | Path, builtin_dir: Path, key: str, relative_to: Path | None = None) -> Path:
    """``path`` as given, else next to ``relative_to``, else relative to the repo, else by name."""
    p = Path(path).expanduser()
    candidates = [p]
    if not p.is_absolute():
        if relative_to is not None:
            candidates.append(relative_to / p)
        candidates += [REPO_ROOT / p, builtin_dir / p.name]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise ConfigError(f"config file {str(path)!r} not found", key=key)


def _parse_value(raw: str, item: str) -> Any:
    try:
        value = OmegaConf.from_dotlist([f"v={raw}"]).v
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse the value: {str(exc).splitlines()[0]}", key=item) from exc
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return value


def apply_override(cfg: DictConfig, item: str) -> None:
    """Apply ``key=value`` (replace) or ``key+=value`` (append to a list) to ``cfg`` in place.

    Values are YAML (``search_space.alpha=[0,0.5,1]``, ``scheduler.type=asha``). A replacement is
    not a merge: ``search_space.alpha=[0,1]`` replaces ``{grid: [...]}`` rather than failing to
    merge a list into a mapping. ``train_overrides+=[data.path=/x]`` extends the config's list.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value or key+=value", key=item)
    key, _, raw = item.partition("=")
    append = key.endswith("+")
    key = key.rstrip("+").strip()
    value = _parse_value(raw, item)
    try:
        if append:
            current = OmegaConf.select(cfg, key, throw_on_missing=False)
            if current is not None and not OmegaConf.is_list(current):
                raise ConfigError("'+=' appends to a list; this key is not a list", key=key)
            value = [*(OmegaConf.to_container(current) if current is not None else []),
                     *(value if isinstance(value, list) else [value])]
        OmegaConf.update(cfg, key, value, merge=False)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{str(exc).splitlines()[0]} (in override {item!r})",
                          key=getattr(exc, "full_key", None) or key) from exc


def _check_range(name: str, value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError("must be a number", key=key, value=value)
    lo, hi, lo_incl = HPARAM_RANGES[name]
    ok = (value >= lo if lo_incl else value > lo) and value <= hi
    if not ok:
        rng = f"{'[' if lo_incl else '('}{lo:g}, {hi:g}]"
        raise ConfigError(f"{name} must be in {rng}", key=key, value=value)
    return float(value)


def parse_search_space(space: dict[str, Any]) -> list[ParamSpec]:
    """Validate ``search_space`` and return one :class:`ParamSpec` per hyper-parameter.

    Accepted forms per name: a number (fixed), a list (grid), or a one-key mapping
    ``{grid|choice: [v, ...]}`` / ``{uniform|loguniform: [low, high]}``.
    """
    if not space:
        raise ConfigError("is empty: give at least one hyper-parameter, e.g. alpha: [0.0, 0.5, 1.0]",
                          key="search_space")
    params = []
    for name, spec in space.items():
        key = f"search_space.{name}"
        if name not in HPARAMS:
            raise ConfigError(f"unknown hyper-parameter (searchable: {', '.join(HPARAMS)})", key=key)
        if isinstance(spec, int | float) and not isinstance(spec, bool):
            params.append(ParamSpec(name, "const", (_check_range(name, spec, key),)))
            continue
        if isinstance(spec, list):
            kind, values = "grid", spec
        elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS:
            kind, values = next(iter(spec.items()))
        else:
            raise ConfigError(
                "must be a number, a list (grid) or one of {grid: [...]}, {choice: [...]}, "
                "{uniform: [low, high]}, {loguniform: [low, high]}", key=key, value=spec)
        sub = f"{key}" if isinstance(spec, list) else f"{key}.{kind}"
        if not isinstance(values, list) or not values:
            raise ConfigError("must be a non-empty list", key=sub, value=values)
        checked = tuple(_check_range(name, v, sub) for v in values)
        if kind in ("uniform", "loguniform"):
            if len(checked) != 2 or not checked[0] < checked[1]:
                raise ConfigError("must be [low, high] with low < high", key=sub, value=values)
            if kind == "loguniform" and checked[0] <= 0:
                raise ConfigError("loguniform needs low > 0", key=sub, value=values)
        elif len(set(checked)) != len(checked):
            raise ConfigError("has duplicate values", key=sub, value=values)
        params.append(ParamSpec(name, kind, checked))
    return params


def _assignments(params: list[ParamSpec], pick: int) -> dict[str, float]:
    """Hyper-parameter values for a validation probe: ``pick`` 0 = first values, -1 = last."""
    return {p.name: p.values[pick] for p in params}


def train_overrides_for(hparams: dict[str, Any]) -> list[str]:
    """The training-config dotted overrides that set ``hparams``."""
    return [f"{HPARAMS[name]}={value}" for name, value in hparams.items()]


def _check_metric(cfg: DictConfig, train: DictConfig) -> None:
    metric, mode = cfg.metric, cfg.mode
    if mode not in ("max", "min"):
        raise ConfigError("must be max or min", key="mode", value=mode)
    if metric not in KNOWN_METRICS:
        raise ConfigError(f"unknown metric (one of {', '.join(KNOWN_METRICS)})", key="metric", value=metric)
    if metric in MIRACL_KEYS and not train.eval.miracl_path:
        raise ConfigError(f"metric {metric} needs eval.miracl_path in the training config "
                          "(set it in train_overrides)", key="metric", value=metric)
    if metric in PAIRS_KEYS and not train.eval.pairs_path:
        raise ConfigError(f"metric {metric} needs eval.pairs_path in the training config "
                          "(set it in train_overrides)", key="metric", value=metric)
    if metric in LOWER_IS_BETTER and mode == "max":
        raise ConfigError(f"{metric} is lower-is-better: use mode=min", key="mode", value=mode)
    for key in ("eval.miracl_path", "eval.pairs_path"):
        value = OmegaConf.select(train, key)
        if value and "://" not in value and not Path(value).exists():
            raise ConfigError("validation data path does not exist", key=key, value=value)


def _validations_per_trial(train: dict[str, Any], has_eval: bool) -> int:
    """How many Tune results a full trial produces (validations + the final report)."""
    from hybrid_ray.train_loop import build_sampler, load_training_pairs, total_steps

    pairs = load_training_pairs(train["data"])
    sampler = build_sampler(train, pairs)
    sampler.batch(0, 0)  # plan the first batch: catches a language with too few pairs
    n = total_steps(train, sampler.steps_per_epoch)
    every = train["run"]["checkpoint_every"] if has_eval else train["run"]["log_every"]
    reports = 1 if every <= 0 else n // every + (1 if n % every else 0)
    return reports + 1


def load_tune_config(path: str | Path, overrides: list[str] | None = None, *, preflight: bool = True) -> TuneSpec:
    """Schema defaults <- YAML <- overrides, then every check that can run before Ray starts.

    Checks: unknown keys and wrong types (schema), the search space (names, forms, ranges), the
    searcher / scheduler / metric, and the training config itself, built with the first and the
    last value of every searched hyper-parameter (unknown train keys, missing data, a metric whose
    validation set is not configured). With ``preflight`` the training data are read and the
    sampler plans a batch, as :func:`hybrid_ray.train.preflight` does.
    """
    from hybrid_ray.config import load_config, to_dict

    src = _find_config(path, TUNE_CONFIG_DIR, "--config")
    cfg = OmegaConf.structured(TuneSchema)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(src))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{str(exc).splitlines()[0]} (in {src})", key=getattr(exc, "full_key", None)) from exc
    for item in overrides or []:
        apply_override(cfg, item)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError("is required", key=missing[0])
    params = parse_search_space(OmegaConf.to_container(cfg.search_space))
    if cfg.searcher not in SEARCHERS:
        raise ConfigError(f"must be one of {', '.join(SEARCHERS)}", key="searcher", value=cfg.searcher)
    if cfg.searcher == "optuna" and all(p.kind == "const" for p in params):
        raise ConfigError("optuna needs at least one non-fixed hyper-parameter", key="search_space")
    if cfg.scheduler.type not in SCHEDULERS:
        raise ConfigError(f"must be one of {', '.join(SCHEDULERS)}", key="scheduler.type", value=cfg.scheduler.type)
    if cfg.scheduler.grace_period < 1:
        raise ConfigError("must be >= 1", key="scheduler.grace_period", value=cfg.scheduler.grace_period)
    if cfg.scheduler.reduction_factor < 2:
        raise ConfigError("must be >= 2", key="scheduler.reduction_factor", value=cfg.scheduler.reduction_factor)
    if cfg.num_samples < 1:
        raise ConfigError("must be >= 1", key="num_samples", value=cfg.num_samples)
    if cfg.max_concurrent_trials is not None and cfg.max_concurrent_trials < 1:
        raise ConfigError("must be >= 1 (or null for the cluster-derived default)", key="max_concurrent_trials",
                          value=cfg.max_concurrent_trials)
    if str(cfg.run.resume).lower() not in ("auto", "true", "false"):
        raise ConfigError("must be auto, true or false", key="run.resume", value=cfg.run.resume)
    if cfg.run.max_failures < -1:
        raise ConfigError("must be >= -1 (-1: retry forever)", key="run.max_failures", value=cfg.run.max_failures)
    if "://" in cfg.run.storage_path:
        raise ConfigError("must be a local or shared-file-system path (the best encoder is copied from it)",
                          key="run.storage_path", value=cfg.run.storage_path)

    train_path = _find_config(cfg.train_config, REPO_ROOT / "hybrid_ray" / "configs", "train_config", src.parent)
    train_overrides = [str(x) for x in cfg.train_overrides]
    # The first and the last value of every hyper-parameter: a bad combination fails here.
    probes = [_assignments(params, 0), _assignments(params, -1)]
    train_cfg = None
    for probe in probes:
        try:
            train_cfg = load_config(train_path, [*train_overrides, *train_overrides_for(probe)])
        except ConfigError as exc:
            raise ConfigError(f"the training config is invalid: {exc}", key="train_overrides") from exc
    assert train_cfg is not None
    _check_metric(cfg, train_cfg)
    train_base = to_dict(train_cfg)

    storage = Path(cfg.run.storage_path).expanduser().resolve()
    exp_dir = storage / cfg.run.name
    export = Path(cfg.run.export_dir).expanduser().resolve() if cfg.run.export_dir else exp_dir / "best-encoder"
    has_eval = bool(train_base["eval"]["miracl_path"] or train_base["eval"]["pairs_path"])
    n_val = _validations_per_trial(train_base, has_eval) if preflight else 100
    if cfg.scheduler.max_t is not None and cfg.scheduler.max_t < cfg.scheduler.grace_period:
        raise ConfigError("must be >= scheduler.grace_period", key="scheduler.max_t", value=cfg.scheduler.max_t)
    return TuneSpec(cfg=cfg, params=params, train_path=train_path, train_base=train_base, exp_dir=exp_dir,
                    export_dir=export, validations_per_trial=n_val)


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


def derive_max_concurrent(resources: dict[str, float], scaling: dict[str, Any]) -> int:
    """``floor(cluster CPUs / CPUs of a trial's workers)`` (and the same for GPUs), at least 1.

    Why not let Tune decide: every trial function asks for only 0.01 CPU, so Tune would start all
    trials at once and their Train workers would queue for resources, each trial holding a
    controller while it waits.
    """
    per_cpu = scaling["num_workers"] * scaling["cpus_per_worker"]
    n = math.floor(resources.get("CPU", 0.0) / per_cpu + 1e-9) if per_cpu > 0 else 1 << 30
    if scaling.get("use_gpu"):
        per_gpu = scaling["num_workers"] * scaling["gpus_per_worker"]
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

    train_base: dict[str, Any]
    hparams: tuple[str, ...]
    metric: str
    train_storage: str  # <experiment dir>/train: every trial's Train run lives under it


def build_trial_train_config(setup: TrialSetup, hparams: dict[str, Any], run_name: str) -> dict[str, Any]:
    """The trial's training config: the base + its hyper-parameters + its own run name/storage.

    The run name is derived from the Tune trial id, which survives ``Tuner.restore`` and trial
    retries, so a retried or resumed trial finds its own Train run and Ray Train V2 resumes it
    from its latest checkpoint (same ``RunConfig(name, storage_path)``).
    """
    from hybrid_ray.config import TrainConfig, to_dict, validate

    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), setup.train_base)
    for name, value in hparams.items():
        OmegaConf.update(cfg, HPARAMS[name], value, merge=False)
    OmegaConf.update(cfg, "run.name", run_name)
    OmegaConf.update(cfg, "run.storage_path", setup.train_storage)
    OmegaConf.update(cfg, "run.export_dir", None)  # <train storage>/<run>/encoder
    validate(cfg)
    return to_dict(cfg)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Tune trial: train with the trial's hyper-parameters, stream validations, report the end."""
    from ray import tune

    from hybrid_ray.train import run_training
    from tune.report import ValidatedReportCallback

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
    """Decide fresh start vs ``Tuner.restore`` before Ray starts.

    ``resume`` (the ``--resume`` / ``--fresh`` flags) wins over ``run.resume``. ``auto`` resumes
    exactly when the experiment directory holds a restorable Tune state: rerunning the same command
    after an interruption (or a RayJob retry) continues the search; a finished search is restored
    as finished and only the result files and the export are rewritten.
    """
    from ray.tune import Tuner

    mode = str(spec.cfg.run.resume).lower() if resume is None else ("true" if resume else "false")
    restorable = spec.exp_dir.is_dir() and Tuner.can_restore(str(spec.exp_dir))
    if mode == "true" and not restorable:
        raise ConfigError(f"nothing to resume: {spec.exp_dir} holds no Tune experiment state", key="run.resume")
    if mode == "false" and restorable:
        raise ConfigError(f"{spec.exp_dir} already holds a Tune experiment: resume it (--resume), "
                          "or choose another run.name", key="run.resume")
    return restorable if mode == "auto" else mode == "true"


def run_search(spec: TuneSpec, *, resume: bool | None = None) -> dict[str, Any]:
    """Run (or resume) the search, then write the result files and export the best encoder.

    Returns the content of ``best.json``.
    """
    import ray
    from ray import tune

    from hybrid_ray.config import to_yaml
    from hybrid_ray.io import write_text_atomic
    from hybrid_ray.local import init_ray

    restoring = should_resume(spec, resume)
    num_cpus = spec.cfg.run.ray_num_cpus or spec.train_base["run"]["ray_num_cpus"]
    init_ray(num_cpus=num_cpus, include_dashboard=True if spec.cfg.run.dashboard else None)
    resources = ray.cluster_resources()
    max_conc = spec.cfg.max_concurrent_trials or derive_max_concurrent(resources, spec.train_base["scaling"])
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
        write_text_atomic(spec.exp_dir / "train_config.yaml", to_yaml(OmegaConf.create(spec.train_base)))
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
                verbose=int(spec.cfg.run.verbose),
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
            value = cfg.get(name, _train_value(spec.train_base, HPARAMS[name]))
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


def _train_value(train: dict[str, Any], dotted: str) -> Any:
    node: Any = train
    for part in dotted.split("."):
        node = node[part]
    return node


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


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def pick_best(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    """The row with the best final ``metric`` among trials that have it and an encoder.

    Ties go to the earlier trial (Tune's creation order, see :func:`collect_rows`), so a restored
    search picks the same trial again.
    """
    candidates = [r for r in rows if _finite(r.get(metric)) and r.get("encoder")]
    if not candidates:
        errors = "; ".join(f"{r['trial_id']}: {r.get('error', r['status'])}" for r in rows)
        raise HybridRayError(f"no trial reported {metric} with an encoder to export ({errors})")
    sign = 1.0 if mode == "max" else -1.0
    best = candidates[0]
    for r in candidates[1:]:
        if sign * r[metric] > sign * best[metric]:
            best = r
    return best


def export_best(src: str | Path, dst: Path, info: dict[str, Any]) -> None:
    """Copy the best encoder to ``dst`` atomically (readers never see a half-copied model)."""
    from hybrid_ray.io import atomic_dir

    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        (tmp / "hybrid_ray_tune.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


COLUMNS: tuple[tuple[str, str], ...] = (
    ("val_miracl_map", "MIRACL mAP"), ("val_miracl_ndcg10", "nDCG@10"), ("val_miracl_recall100", "R@100"),
    ("val_mono_map", "mono mAP"), ("val_cross_map", "cross mAP"), ("val_multi_map", "multi mAP"),
    ("val_lang_bias", "lang bias"),
)


def format_results(rows: list[dict[str, Any]], best_id: str | None, metric: str) -> str:
    """A Markdown table of the trials (best marked ``*``), sorted by alpha then trial id."""
    hp_cols = [n for n in HPARAMS if any(n in r for r in rows)]
    cols = [(k, label) for k, label in COLUMNS if any(k in r for r in rows)]
    head = ["trial", *hp_cols, *(label for _, label in cols), "step", "status"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]

    def fmt(v: Any) -> str:
        if not _finite(v):
            return "-"
        return f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else f"{v:.4g}"

    for r in sorted(rows, key=lambda r: (r.get("alpha", 0.0), r["trial_id"])):
        mark = "*" if r["trial_id"] == best_id else ""
        hps = (f"{r[h]:.4g}" if _finite(r.get(h)) else "-" for h in hp_cols)  # lr 3e-05 stays readable
        cells = [f"{r['trial_id']}{mark}", *hps, *(fmt(r.get(k)) for k, _ in cols),
                 str(r.get("step", "-")), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"* best by final {metric}. Language bias: lower is better.")
    return "\n".join(lines) + "\n"


def plot_alpha(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    """alpha vs mAP per setting (MIRACL / mono / cross / multi) and language bias on a 2nd panel.

    With several trials per alpha (``num_samples`` > 1 or other searched hyper-parameters) every
    trial is a dot and the line joins the per-alpha means.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: cluster nodes and CI have no display
    import matplotlib.pyplot as plt
    import numpy as np

    from hybrid_ray.io import atomic_path

    pts = [r for r in rows if _finite(r.get("alpha"))]
    series = [(k, label) for k, label in (("val_miracl_map", "MIRACL"), ("val_mono_map", "mono"),
                                          ("val_cross_map", "cross"), ("val_multi_map", "multi"))
              if any(_finite(r.get(k)) for r in pts)]
    has_bias = any(_finite(r.get("val_lang_bias")) for r in pts)
    if not pts or not (series or has_bias):
        return None

    def by_alpha(key: str) -> tuple[list[float], list[float], list[float], list[float]]:
        xs = [float(r["alpha"]) for r in pts if _finite(r.get(key))]
        ys = [float(r[key]) for r in pts if _finite(r.get(key))]
        ux = sorted(set(xs))
        means = [float(np.mean([y for x, y in zip(xs, ys, strict=True) if x == u])) for u in ux]
        return xs, ys, ux, means

    n_panels = 2 if (series and has_bias) else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 3.8), dpi=120, squeeze=False)
    try:
        ax = axes[0][0]
        if series:
            for key, label in series:
                xs, ys, ux, means = by_alpha(key)
                (line,) = ax.plot(ux, means, marker="o", label=label)
                ax.scatter(xs, ys, s=12, color=line.get_color(), alpha=0.5)
            ax.set_xlabel("alpha (P(monolingual batch))")
            ax.set_ylabel("validation mAP")
            ax.set_xlim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.set_title("mAP vs alpha", fontsize=10)
        if has_bias:
            bx = axes[0][n_panels - 1]
            xs, ys, ux, means = by_alpha("val_lang_bias")
            (line,) = bx.plot(ux, means, marker="s", color="tab:red")
            bx.scatter(xs, ys, s=12, color="tab:red", alpha=0.5)
            bx.set_xlabel("alpha (P(monolingual batch))")
            bx.set_ylabel("language bias (lower is better)")
            bx.set_xlim(-0.05, 1.05)
            bx.grid(alpha=0.3)
            bx.set_title("language bias vs alpha", fontsize=10)
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out_png


def _csv_text(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in keys})
    return buf.getvalue()


def finish(spec: TuneSpec, rows: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    """Pick the best trial, export its encoder, write the result files, print the table."""
    from hybrid_ray.io import write_json_atomic, write_text_atomic

    exp = spec.exp_dir
    best = pick_best(rows, spec.metric, spec.mode)
    hparams = {n: best[n] for n in HPARAMS if n in best}
    info = {
        "metric": spec.metric,
        "mode": spec.mode,
        "value": best[spec.metric],
        "trial_id": best["trial_id"],
        **hparams,
        "hparams": hparams,
        "metrics": {k: best[k] for k in (*MIRACL_KEYS, *PAIRS_KEYS) if k in best},
        "encoder": str(spec.export_dir),
        "source_encoder": best["encoder"],
        "experiment": str(exp),
        "n_trials": len(rows),
        "search_time_s": round(elapsed_s, 1),
    }
    export_best(best["encoder"], spec.export_dir, info)
    table = format_results(rows, best["trial_id"], spec.metric)
    write_json_atomic(exp / "results.json", {"metric": spec.metric, "mode": spec.mode, "best": best["trial_id"],
                                             "trials": rows})
    write_text_atomic(exp / "results.csv", _csv_text(rows))
    write_text_atomic(exp / "table.md", table)
    plot = plot_alpha(rows, exp / "alpha_vs_map.png")
    write_json_atomic(exp / "best.json", info)
    print(table)
    print(f"[hybrid-ray tune] best trial {best['trial_id']} ({', '.join(f'{k}={v}' for k, v in hparams.items())}): "
          f"{spec.metric} {best[spec.metric]:.4f}; encoder exported to {spec.export_dir}")
    print(f"[hybrid-ray tune] results: {exp / 'results.csv'}, {exp / 'results.json'}"
          + (f", {plot}" if plot else "") + f"; TensorBoard: tensorboard --logdir {exp}")
    return info


def run_search_from_config(path: str | Path, overrides: list[str] | None = None, *,
                           resume: bool | None = None) -> dict[str, Any]:
    """Load + validate a tune config, then :func:`run_search`. Returns ``best.json``'s content."""
    return run_search(load_tune_config(path, overrides), resume=resume)
