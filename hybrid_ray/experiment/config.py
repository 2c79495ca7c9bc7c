"""The experiment spec: a training config, a grid of trials, the test sets and the report.

An *experiment config* (YAML, see ``experiments/``)::

    train_config: hybrid_ray/configs/demo.yaml
    train_overrides: [data.path=..., model.train_top_layers=3]
    alphas: [0.0, 0.5, 1.0]                    # the mono/cross ratio
    seeds: [1, 2, 3]                           # sampler.seed (batch order, dropout) per repetition
    variants:                                  # optional: more settings, each x its alphas x seeds
      - name: letters-x4
        alphas: [0.5]
        overrides: {sampler.domain_sampling: weights, sampler.domain_weights: {...}}
    baseline: true                             # also evaluate the untrained encoder (one trial)
    eval_sets:                                 # test sets, each evaluated per trial (per-query results)
      - {name: letters, path: data/demo, split: test}
      - {name: prophets-ood, path: data/demo, split: test_ood}
    report: {out: docs/results/experiment-demo, compare_alpha: best}

The grid is plain data (:func:`expand_grid`): for each seed the default setting x ``alphas`` and
each variant x its alphas (default: the grid's), the baseline after the first seed. Each trial's
training config is the base + the variant's overrides + ``sampler.alpha`` + ``sampler.seed``;
every combination is built and validated on the driver before Ray starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hybrid_ray.config import TrainConfig, apply_overrides, load_config
from hybrid_ray.errors import ConfigError
from hybrid_ray.tuning.config import REPO_ROOT, _find_config, apply_override, load_schema_yaml

EXPERIMENT_DIR = REPO_ROOT / "experiments"  # the application folder's shipped experiment configs
DEFAULT_VARIANT = "default"
BASELINE_VARIANT = "off-the-shelf"


@dataclass
class VariantSchema:
    name: str = MISSING
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted training keys -> values
    alphas: list[float] | None = None  # None: the experiment's alphas


@dataclass
class EvalSetSchema:
    name: str = MISSING
    path: str = MISSING  # any format `hybrid-ray eval` reads (pairs dir, MIRACL dir, ...)
    split: str | None = None
    format: str = "auto"
    langs: list[str] | None = None
    max_queries_per_lang: int | None = None  # first N queries per language (candidates stay complete)


@dataclass
class ReportSchema:
    out: str | None = None  # <out>.md / .json / .png (default: <experiment dir>/report)
    compare_alpha: str = "best"  # "best" (highest mean cross mAP on the first set) or a number
    resamples: int = 5000
    confidence: float = 0.95


@dataclass
class CostSchema:
    """The duration estimate printed before the run (seconds, measured on the target machine)."""

    trial_start_s: float = 60.0  # Ray Train worker start + model load + export
    step_s: float = 3.0  # one optimizer step (global batch) on one trial's workers
    eval_text_s: float = 0.04  # one text (query or candidate) encoded, incl. search and scoring


@dataclass
class ExperimentRunSchema:
    name: str = "experiment"
    storage_path: str = "runs/experiments"  # experiment dir = <storage_path>/<name>
    resume: str = "auto"  # auto | true | false (Tuner.restore of an interrupted experiment)
    max_concurrent_trials: int | None = None  # None: floor(cluster CPUs / CPUs of a trial's workers)
    ray_num_cpus: int | None = None
    max_failures: int = 1
    eval_threads: int | None = None  # torch threads for a trial's evaluation (None: CPUs per trial)


@dataclass
class ExperimentSchema:
    train_config: str = MISSING
    data: str | None = None  # optional: referenced as ${data} in train_overrides / eval_sets (one --set)
    train_overrides: list[str] = field(default_factory=list)
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    variants: list[VariantSchema] = field(default_factory=list)
    baseline: bool = True
    eval_sets: list[EvalSetSchema] = field(default_factory=list)
    eval_batch_size: int = 64
    # With model.train_top_layers: run the shared frozen bottom layers over the test texts once and
    # only each trial's top layers per trial (hybrid_ray.experiment.prefix); exact, checked at start.
    eval_prefix: bool = True
    report: ReportSchema = field(default_factory=ReportSchema)
    cost: CostSchema = field(default_factory=CostSchema)
    run: ExperimentRunSchema = field(default_factory=ExperimentRunSchema)


@dataclass(frozen=True)
class TrialSpec:
    """One cell of the grid: what to train (or not: the baseline) and how it is labelled."""

    variant: str
    alpha: float | None  # None: the untrained baseline
    seed: int | None
    overrides: tuple[tuple[str, Any], ...] = ()
    train: bool = True

    @property
    def label(self) -> str:
        """Path-safe and unique within a grid, e.g. ``default_a0.5_s2``."""
        if not self.train:
            return self.variant
        return f"{self.variant}_a{self.alpha:g}_s{self.seed}"

    def train_overrides(self) -> dict[str, Any]:
        return {**dict(self.overrides), "sampler.alpha": self.alpha, "sampler.seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "alpha": self.alpha, "seed": self.seed,
                "overrides": [list(kv) for kv in self.overrides], "train": self.train, "label": self.label}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        return cls(d["variant"], d["alpha"], d["seed"], tuple((k, v) for k, v in d["overrides"]), d["train"])


@dataclass
class ExperimentSpec:
    cfg: ExperimentSchema
    train_base: TrainConfig
    trials: list[TrialSpec]
    exp_dir: Path
    report_base: Path  # report files are <report_base>.md / .json / .png

    @property
    def n_trained(self) -> int:
        return sum(t.train for t in self.trials)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def expand_grid(cfg: ExperimentSchema) -> list[TrialSpec]:
    """Every trial of the experiment, in run order (see the module docstring); labels are unique."""
    if not cfg.seeds:
        raise ConfigError("needs at least one seed", key="seeds")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError("seeds must be distinct", key="seeds", value=list(cfg.seeds))
    names = [DEFAULT_VARIANT] + [v.name for v in cfg.variants]
    dup = {n for n in names if names.count(n) > 1} | ({BASELINE_VARIANT} & set(names))
    if dup:
        raise ConfigError("variant names must be unique and not 'default' / 'off-the-shelf'", key="variants",
                          value=sorted(dup))
    trials: list[TrialSpec] = []
    cells: list[tuple[str, float, tuple]] = []
    settings = [(DEFAULT_VARIANT, {}, list(cfg.alphas))]
    settings += [(v.name, dict(_plain(v.overrides)), list(v.alphas if v.alphas is not None else cfg.alphas))
                 for v in cfg.variants]
    for name, overrides, alphas in settings:
        if not alphas:
            raise ConfigError("needs at least one alpha", key=f"variants.{name}.alphas" if name != DEFAULT_VARIANT
                              else "alphas")
        for key in overrides:
            if key in ("sampler.alpha", "sampler.seed") or key.startswith("run."):
                raise ConfigError("alpha, seed and run.* are set by the grid, not by a variant",
                                  key=f"variants.{name}.overrides", value=key)
        items = tuple(sorted((str(k), _plain(v)) for k, v in overrides.items()))
        cells += [(name, float(alpha), items) for alpha in alphas]
    # Seed-major: an experiment stopped early holds whole repetitions (every setting with seed 1,
    # then with seed 2, ...), not all seeds of the first settings only.
    # The baseline (evaluation only) after the first repetition: by then the frozen prefix the
    # evaluations share is built (it is built while the first trials train).
    for i, seed in enumerate(cfg.seeds):
        trials += [TrialSpec(name, alpha, int(seed), items) for name, alpha, items in cells]
        if i == 0 and cfg.baseline:
            trials.append(TrialSpec(BASELINE_VARIANT, None, None, (), train=False))
    return trials


def _check(cfg: ExperimentSchema) -> None:
    if not cfg.eval_sets:
        raise ConfigError("needs at least one test set", key="eval_sets")
    names = [e.name for e in cfg.eval_sets]
    if len(set(names)) != len(names):
        raise ConfigError("test-set names must be unique", key="eval_sets", value=names)
    for e in cfg.eval_sets:
        if not Path(e.path).expanduser().exists():
            raise ConfigError("test set path does not exist", key=f"eval_sets.{e.name}.path", value=e.path)
    if cfg.report.compare_alpha != "best":
        try:
            float(cfg.report.compare_alpha)
        except ValueError:
            raise ConfigError("must be 'best' or a number", key="report.compare_alpha",
                              value=cfg.report.compare_alpha) from None
    if not 0 < cfg.report.confidence < 1:
        raise ConfigError("must be in (0, 1)", key="report.confidence", value=cfg.report.confidence)
    if cfg.report.resamples < 100:
        raise ConfigError("must be >= 100", key="report.resamples", value=cfg.report.resamples)
    if str(cfg.run.resume).lower() not in ("auto", "true", "false"):
        raise ConfigError("must be auto, true or false", key="run.resume", value=cfg.run.resume)


def trial_train_config(base: TrainConfig, trial: TrialSpec, storage: str) -> TrainConfig:
    """The trial's training config: base + variant overrides + alpha + seed + its own run dir."""
    return apply_overrides(base, {**trial.train_overrides(), "run.name": trial.label, "run.storage_path": storage,
                                  "run.export_dir": None})


def _override(node, item: str):
    """``key+=value`` appends (as for ``hybrid-ray tune``); ``key=value`` is merged into the schema,
    so a list of mappings (``eval_sets=[{name: ..., path: ...}]``) is typed and checked."""
    key, sep, raw = item.partition("=")
    if not sep or key.endswith("+"):
        apply_override(node, item)
        return node
    from hybrid_ray.tuning.config import _parse_value

    value = _parse_value(raw, item)
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    try:
        return OmegaConf.merge(node, OmegaConf.create(nested))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{str(exc).splitlines()[0]} (in override {item!r})",
                          key=getattr(exc, "full_key", None) or key) from exc


PATH_KEYS = ("data.path", "eval.pairs_path", "eval.miracl_path", "model.name_or_path")


def _existing_path(value: str) -> str:
    """``value`` as an absolute path when it names something: as given (relative to the cwd), else
    relative to the repository; unchanged when neither exists (a hub name, a typo the checks name)."""
    p = Path(value).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    return str(p.resolve()) if p.exists() else value


def _absolute_paths(trial: TrialSpec) -> TrialSpec:
    """A variant's relative paths made absolute here: trials run in their own Tune directories,
    where ``runs/...`` would not exist."""
    out = [(key, _existing_path(value) if key in PATH_KEYS and isinstance(value, str) and "://" not in value
            and not Path(value).expanduser().is_absolute() else value) for key, value in trial.overrides]
    return dataclasses.replace(trial, overrides=tuple(out))


def load_experiment_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    """Schema defaults <- YAML <- ``key=value`` / ``key+=value`` overrides, the grid, and every
    trial's training config built and validated (before Ray starts)."""
    src = _find_config(path, EXPERIMENT_DIR, "--config")
    node = load_schema_yaml(ExperimentSchema, src)
    for item in overrides or []:
        node = _override(node, item)
    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        raise ConfigError("is required", key=missing[0])
    try:
        cfg = OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{str(exc).splitlines()[0]} (in {src})", key=getattr(exc, "full_key", None)) from exc
    assert isinstance(cfg, ExperimentSchema)
    for e in cfg.eval_sets:  # relative test-set paths: as given, else relative to the repository
        e.path = _existing_path(e.path)
    _check(cfg)
    train_path = _find_config(cfg.train_config, REPO_ROOT / "hybrid_ray" / "configs", "train_config", src.parent)
    try:
        train_base = load_config(train_path, [str(x) for x in cfg.train_overrides])
    except ConfigError as exc:
        raise ConfigError(f"the training config is invalid: {exc}", key="train_overrides") from exc
    trials = [_absolute_paths(t) for t in expand_grid(cfg)]
    exp_dir = Path(cfg.run.storage_path).expanduser().resolve() / cfg.run.name
    for t in trials:
        if t.train:
            try:
                trial_train_config(train_base, t, str(exp_dir / "train"))
            except ConfigError as exc:
                raise ConfigError(f"trial {t.label}: the training config is invalid: {exc}",
                                  key="variants") from exc
    report = Path(cfg.report.out).expanduser() if cfg.report.out else exp_dir / "report"
    if not report.is_absolute():
        report = Path.cwd() / report
    return ExperimentSpec(cfg=cfg, train_base=train_base, trials=trials, exp_dir=exp_dir, report_base=report)


def estimate_seconds(spec: ExperimentSpec, concurrency: int, eval_texts: int, eval_fraction: float = 1.0,
                     prefix_fraction: float = 0.0) -> float:
    """Expected wall time from the cost model: trials run ``concurrency`` at a time.

    ``eval_texts``: queries + candidates of all test sets (what every trial encodes);
    ``eval_fraction``: the part of a full encoding a trial pays (top layers over a frozen prefix),
    ``prefix_fraction``: the one-off prefix pass (the bottom layers), before the trials.
    """
    from hybrid_ray.train_loop import total_steps

    c = spec.cfg.cost
    per_trial = []
    for t in spec.trials:
        steps = 0
        if t.train:
            cfg = spec.train_base
            spe = cfg.sampler.steps_per_epoch or 10**9
            steps = total_steps(cfg, spe) if cfg.optim.max_steps > 0 else 0
        per_trial.append(c.trial_start_s * t.train + c.step_s * steps + c.eval_text_s * eval_texts * eval_fraction)
    waves = sorted(per_trial, reverse=True)
    lanes = [0.0] * max(1, concurrency)
    for secs in waves:  # longest first onto the least loaded lane
        i = lanes.index(min(lanes))
        lanes[i] += secs
    return max(lanes) + c.eval_text_s * eval_texts * prefix_fraction
