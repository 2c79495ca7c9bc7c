"""The tune spec: which training config to start from and what to search, loaded and checked.

A *tune config* (YAML, see ``tune/configs/``) points at a training config and says what to search::

    train_config: hybrid_ray/configs/tiny.yaml     # any train YAML (or a name in hybrid_ray/configs)
    train_overrides: [data.path=..., eval.miracl_path=...]
    search_space:
      alpha: [0.0, 0.5, 1.0]                       # a list = grid; or {grid|choice: [...]}
      lr: {loguniform: [1.0e-5, 1.0e-4]}           # optional: lr, temperature, lang_temperature, weight_decay
    searcher: grid                                 # grid | optuna
    scheduler: {type: asha, grace_period: 1}       # none | asha (iterations = validations)
    metric: val_miracl_map                         # mode: max
    run: {name: tune-alpha, storage_path: runs/tune, export_dir: null, max_failures: 1, resume: auto}

There is no second training-config system here: ``train_config`` + ``train_overrides`` load into
one ``hybrid_ray.config.TrainConfig`` (the spec's ``train_base``) and every trial derives its own
with ``hybrid_ray.config.apply_overrides``. A searched value is checked by building the training
config it gives, so the training config's own checks (``sampler.alpha`` in [0, 1], ...) are the
only range checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hybrid_ray.config import TrainConfig, apply_overrides, load_config
from hybrid_ray.errors import ConfigError
from hybrid_ray.validation import LOWER_IS_BETTER, MIRACL_KEYS, PAIRS_KEYS

REPO_ROOT = Path(__file__).resolve().parents[2]
TUNE_CONFIG_DIR = REPO_ROOT / "tune" / "configs"  # the application folder's shipped tune configs

#: Searchable hyper-parameters: short name -> key in the training config.
HPARAMS: dict[str, str] = {
    "alpha": "sampler.alpha",
    "lr": "optim.lr",
    "temperature": "model.temperature",
    "lang_temperature": "sampler.lang_temperature",
    "weight_decay": "optim.weight_decay",
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

    cfg: TuneSchema
    params: list[ParamSpec]
    train_path: Path
    train_base: TrainConfig  # resolved training config (paths absolute for local runs)
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


def load_schema_yaml(schema: type, src: Path) -> DictConfig:
    """``schema``'s defaults with the YAML file ``src`` merged in; a ConfigError naming the file and
    the key for an unknown key or a wrong type (shared by ``tune`` and ``experiment`` configs)."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(src))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{str(exc).splitlines()[0]} (in {src})", key=getattr(exc, "full_key", None)) from exc


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


def _check_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError("must be a number", key=key, value=value)
    return float(value)


def check_value(train: TrainConfig, name: str, value: float, key: str) -> None:
    """A searched value is valid when the training config it gives is: one set of range checks."""
    try:
        apply_overrides(train, {HPARAMS[name]: value})
    except ConfigError as exc:
        raise ConfigError(f"{name} {exc.message}", key=key, value=value) from exc


def parse_search_space(space: dict[str, Any], train: TrainConfig | None = None) -> list[ParamSpec]:
    """Validate ``search_space`` and return one :class:`ParamSpec` per hyper-parameter.

    Accepted forms per name: a number (fixed), a list (grid), or a one-key mapping
    ``{grid|choice: [v, ...]}`` / ``{uniform|loguniform: [low, high]}``. With ``train`` every value
    (the bounds of a range) is checked by building the training config it gives.
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
            value = _check_number(spec, key)
            if train is not None:
                check_value(train, name, value, key)
            params.append(ParamSpec(name, "const", (value,)))
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
        checked = tuple(_check_number(v, sub) for v in values)
        if train is not None:
            for v in checked:
                check_value(train, name, v, sub)
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


def train_overrides_for(hparams: dict[str, Any]) -> dict[str, Any]:
    """The training-config dotted overrides (for ``apply_overrides``) that set ``hparams``."""
    return {HPARAMS[name]: value for name, value in hparams.items()}


def _check_metric(cfg: TuneSchema, train: TrainConfig) -> None:
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
    for key, value in (("eval.miracl_path", train.eval.miracl_path), ("eval.pairs_path", train.eval.pairs_path)):
        if value and "://" not in value and not Path(value).exists():
            raise ConfigError("validation data path does not exist", key=key, value=value)


def _validations_per_trial(train: TrainConfig) -> int:
    """How many Tune results a full trial produces (validations + the final report)."""
    from hybrid_ray.train_loop import build_sampler, load_training_pairs, total_steps

    pairs = load_training_pairs(train.data)
    sampler = build_sampler(train, pairs)
    sampler.batch(0, 0)  # plan the first batch: catches a language with too few pairs
    n = total_steps(train, sampler.steps_per_epoch)
    every = train.run.checkpoint_every if train.eval.enabled else train.run.log_every
    reports = 1 if every <= 0 else n // every + (1 if n % every else 0)
    return reports + 1


def _check_schema(cfg: TuneSchema) -> None:
    """The tune spec's own settings (the search space and the training config are checked after)."""
    if cfg.searcher not in SEARCHERS:
        raise ConfigError(f"must be one of {', '.join(SEARCHERS)}", key="searcher", value=cfg.searcher)
    s = cfg.scheduler
    if s.type not in SCHEDULERS:
        raise ConfigError(f"must be one of {', '.join(SCHEDULERS)}", key="scheduler.type", value=s.type)
    if s.grace_period < 1:
        raise ConfigError("must be >= 1", key="scheduler.grace_period", value=s.grace_period)
    if s.reduction_factor < 2:
        raise ConfigError("must be >= 2", key="scheduler.reduction_factor", value=s.reduction_factor)
    if s.max_t is not None and s.max_t < s.grace_period:
        raise ConfigError("must be >= scheduler.grace_period", key="scheduler.max_t", value=s.max_t)
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


def load_tune_config(path: str | Path, overrides: list[str] | None = None, *, preflight: bool = True) -> TuneSpec:
    """Schema defaults <- YAML <- overrides, then every check that can run before Ray starts.

    Checks: unknown keys and wrong types (schema), the search space (names, forms, ranges), the
    searcher / scheduler / metric, and the training config itself, built with the first and the
    last value of every searched hyper-parameter (unknown train keys, missing data, a metric whose
    validation set is not configured). With ``preflight`` the training data are read and the
    sampler plans a batch, as :func:`hybrid_ray.train.preflight` does.
    """
    src = _find_config(path, TUNE_CONFIG_DIR, "--config")
    node = load_schema_yaml(TuneSchema, src)
    for item in overrides or []:
        apply_override(node, item)
    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        raise ConfigError("is required", key=missing[0])
    cfg = OmegaConf.to_object(node)
    assert isinstance(cfg, TuneSchema)
    _check_schema(cfg)

    train_path = _find_config(cfg.train_config, REPO_ROOT / "hybrid_ray" / "configs", "train_config", src.parent)
    try:
        train_base = load_config(train_path, [str(x) for x in cfg.train_overrides])
    except ConfigError as exc:
        raise ConfigError(f"the training config is invalid: {exc}", key="train_overrides") from exc
    params = parse_search_space(cfg.search_space, train_base)
    if cfg.searcher == "optuna" and all(p.kind == "const" for p in params):
        raise ConfigError("optuna needs at least one non-fixed hyper-parameter", key="search_space")
    # The first and the last value of every hyper-parameter together: a bad combination fails here.
    for probe in (_assignments(params, 0), _assignments(params, -1)):
        try:
            apply_overrides(train_base, train_overrides_for(probe))
        except ConfigError as exc:
            raise ConfigError(f"the training config is invalid with {probe}: {exc}", key="search_space") from exc
    _check_metric(cfg, train_base)

    storage = Path(cfg.run.storage_path).expanduser().resolve()
    exp_dir = storage / cfg.run.name
    export = Path(cfg.run.export_dir).expanduser().resolve() if cfg.run.export_dir else exp_dir / "best-encoder"
    n_val = _validations_per_trial(train_base) if preflight else 100
    return TuneSpec(cfg=cfg, params=params, train_path=train_path, train_base=train_base, exp_dir=exp_dir,
                    export_dir=export, validations_per_trial=n_val)


