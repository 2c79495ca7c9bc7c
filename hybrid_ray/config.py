"""Training configuration: one typed ``TrainConfig`` dataclass, from YAML + dotted overrides to the workers.

Why OmegaConf: it merges YAML files with ``key=value`` command-line overrides, checks types and
rejects unknown keys against the dataclass schema, and names the offending key in its errors, so a
bad config fails on the driver before any Ray worker starts. ``load_config`` then turns the merge
into a plain ``TrainConfig`` instance (``OmegaConf.to_object``): the driver, the Ray Train workers
(it travels pickled in ``train_loop_config``), Tune trials, the demo and the benchmarks all read
attributes of that one object; nothing downstream sees a dict.

Each section checks its own values (``<Section>.check()``; the model section's are
``EncoderConfig.__post_init__``, which ``ModelConfig`` inherits); ``validate`` runs them plus the
checks that span sections (batch divisibility by the worker count). ``apply_overrides`` derives a
new, re-validated config from an existing one: what Tune trials and the demo use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hybrid_ray.errors import ConfigError
from hybrid_ray.modeling.encoder_config import EncoderConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    path: str = MISSING  # pairs data set dir / parquet / jsonl
    split: str | None = None  # None: "train" of a data-set directory, or the single file given
    num_negatives: int = 0  # hard negatives per pair used in the loss (from the 'negatives' column)
    langs: list[str] | None = None  # train on this subset of languages (default: all)
    # batches assembled + tokenised ahead on a thread; 0 = inline, in the step; unset = auto: on when
    # the machine has a core the ranks' compute threads leave free, or on GPU (hybrid_ray.prefetch)
    prefetch: int | None = None

    def check(self) -> None:
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigError("must be >= 0", key="data.prefetch", value=self.prefetch)
        if self.num_negatives < 0:
            raise ConfigError("must be >= 0", key="data.num_negatives", value=self.num_negatives)
        if not Path(self.path).exists():
            raise ConfigError("data path does not exist", key="data.path", value=str(self.path))


@dataclass
class LoraSettings:
    """``model.lora``: LoRA adapters through ``peft`` (``hybrid_ray.modeling.lora``); null = full fine-tuning.

    Only the adapters (and a learned temperature) train; checkpoints keep them apart in
    ``adapter/`` and every exported encoder has them merged into plain Hugging Face weights.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Module-name suffixes that get adapters; BERT / XLM-R: every linear layer of every block.
    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])

    def check(self) -> None:
        if self.r < 1:
            raise ConfigError("must be >= 1", key="model.lora.r", value=self.r)
        if not self.alpha > 0:
            raise ConfigError("must be > 0", key="model.lora.alpha", value=self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("must be in [0, 1)", key="model.lora.dropout", value=self.dropout)
        if not self.target_modules:
            raise ConfigError("must name at least one module", key="model.lora.target_modules",
                              value=self.target_modules)


@dataclass
class ModelConfig(EncoderConfig):
    """The encoder's own settings (pooling, prefixes, max_length, temperature, ...: inherited from
    ``EncoderConfig``, so they are declared and validated once) + where the weights come from."""

    name_or_path: str = MISSING  # HF model dir or hub name, or a registered builder ("tiny")
    freeze_embeddings: bool = False  # freeze the word embeddings (most of a multilingual model's size)
    # Recompute each layer's activations in the backward (HF, non-reentrant): less memory, ~1/3 more time.
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None  # LoRA adapters instead of full fine-tuning (see LoraSettings)
    # Train only the top N transformer layers (+ pooler); embeddings and the layers below are frozen.
    # What makes a CPU experiment affordable (None: train everything not otherwise frozen).
    train_top_layers: int | None = None

    def encoder_config(self) -> EncoderConfig:
        """The ``EncoderConfig`` part (what travels with the saved weights)."""
        return EncoderConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EncoderConfig)})

    def check(self) -> None:
        from hybrid_ray.modeling.builders import is_registered

        if self.train_top_layers is not None and self.train_top_layers < 1:
            raise ConfigError("must be >= 1 (or null to train every layer)", key="model.train_top_layers",
                              value=self.train_top_layers)
        name = self.name_or_path
        if not is_registered(name) and name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
            raise ConfigError("model directory does not exist", key="model.name_or_path", value=name)
        if self.lora is not None:
            self.lora.check()
            if self.train_top_layers is not None:
                # peft freezes every base weight, so the two would silently mean "LoRA only".
                raise ConfigError("model.lora and model.train_top_layers do not combine; set one of them",
                                  key="model.train_top_layers", value=self.train_top_layers)


@dataclass
class LossConfig:
    """Which registered loss trains the encoder (``hybrid_ray.losses``) and its keyword arguments."""

    name: str = "infonce"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        from hybrid_ray.losses import LOSSES

        if self.name not in LOSSES:
            raise ConfigError(f"unknown loss (registered: {', '.join(sorted(LOSSES))})", key="loss.name",
                              value=self.name)


@dataclass
class SamplerConfig:
    alpha: float = 0.5  # P(monolingual batch); 1 = X-X-mono, 0 = X-Y
    seed: int = 42
    lang_sampling: str = "uniform"  # uniform | temperature | weights
    lang_temperature: float = 1.0
    lang_weights: dict[str, float] | None = None
    steps_per_epoch: int | None = None
    # Domain weighting, independent of alpha (needs a 'domain' column): none = batches mix domains
    # as the data does; otherwise each batch is drawn from ONE domain with these probabilities.
    domain_sampling: str = "none"  # none | uniform | temperature | weights
    domain_temperature: float = 1.0
    domain_weights: dict[str, float] | None = None

    def check(self) -> None:
        if self.domain_sampling not in ("none", "uniform", "temperature", "weights"):
            raise ConfigError("must be none, uniform, temperature or weights", key="sampler.domain_sampling",
                              value=self.domain_sampling)
        if not self.domain_temperature > 0:
            raise ConfigError("must be > 0", key="sampler.domain_temperature", value=self.domain_temperature)
        if self.domain_sampling == "weights" and not self.domain_weights:
            raise ConfigError("domain_sampling=weights needs sampler.domain_weights", key="sampler.domain_weights")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("must be in [0, 1]", key="sampler.alpha", value=self.alpha)
        if self.lang_sampling not in ("uniform", "temperature", "weights"):
            raise ConfigError("must be uniform, temperature or weights", key="sampler.lang_sampling",
                              value=self.lang_sampling)
        if not self.lang_temperature > 0:
            raise ConfigError("must be > 0", key="sampler.lang_temperature", value=self.lang_temperature)
        if self.lang_sampling == "weights" and not self.lang_weights:
            raise ConfigError("lang_sampling=weights needs sampler.lang_weights", key="sampler.lang_weights")


@dataclass
class OptimConfig:
    global_batch_size: int = 32  # world_size x per-rank batch
    epochs: int = 1
    max_steps: int = -1  # > 0 caps the total number of steps
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 1.0
    # torch's fused AdamW kernel (CPU and CUDA): the same update as the for-loop AdamW to float
    # rounding, ~3x faster on CPU (72 -> 25 ms for e5-small's 21M weights, one thread).
    fused: bool = True

    def check(self) -> None:
        if not self.lr > 0:
            raise ConfigError("must be > 0", key="optim.lr", value=self.lr)
        if self.weight_decay < 0:
            raise ConfigError("must be >= 0", key="optim.weight_decay", value=self.weight_decay)


@dataclass
class ScalingConfigSchema:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0

    def check(self) -> None:
        if self.num_workers < 1:
            raise ConfigError("must be >= 1", key="scaling.num_workers", value=self.num_workers)


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    bf16: str = "auto"  # auto (on GPU only) | true | false
    offload_optimizer: bool = False
    # ZeRO-0 on CPU, all ranks on one machine: average gradients through DeepSpeed's shared-memory
    # all-reduce instead of gloo over loopback (hybrid_ray.grad_sync). auto | shm | gloo
    cpu_allreduce: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the DeepSpeed JSON config

    def check(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError("ZeRO stage must be 0, 1, 2 or 3", key="deepspeed.zero_stage", value=self.zero_stage)
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            raise ConfigError("must be auto, true or false", key="deepspeed.bf16", value=self.bf16)
        if self.cpu_allreduce not in ("auto", "shm", "gloo"):
            raise ConfigError("must be auto, shm or gloo", key="deepspeed.cpu_allreduce", value=self.cpu_allreduce)
        if self.cpu_allreduce == "shm" and self.zero_stage != 0:
            raise ConfigError(f"needs deepspeed.zero_stage=0 (ZeRO-{self.zero_stage} reduces gradients in "
                              "DeepSpeed's own hooks)", key="deepspeed.cpu_allreduce", value=self.cpu_allreduce)


@dataclass
class RunConfigSchema:
    name: str = "hybrid-ray"
    storage_path: str = "runs"
    export_dir: str | None = None  # final HF encoder (default: <storage>/<name>/encoder)
    log_every: int = 5
    # Seconds between metrics-only ray.train.report calls (the console and TensorBoard still log
    # every log_every steps; checkpoint reports always go). None = auto: 1.25x Ray Train's controller
    # poll interval, since a report made before the controller has taken the previous one blocks
    # the step until its next poll (2 s by default). 0 = report every log_every steps.
    report_every_s: float | None = None
    checkpoint_every: int = 50  # steps; 0 = only at the end
    num_to_keep: int = 2
    max_failures: int = 0
    tensorboard: bool = True
    ray_num_cpus: int | None = None  # logical CPUs for a local cluster
    resume_from: str | None = None  # a checkpoint dir (or URI) to start from (CLI: --resume-from)
    profile_phases: bool = False  # GPU: synchronise at phase boundaries so phase_s/* are true times

    @property
    def run_dir(self) -> Path:
        """``<storage_path>/<name>`` (local storage only)."""
        return Path(self.storage_path).expanduser() / self.name

    def check(self) -> None:
        if self.report_every_s is not None and not self.report_every_s >= 0:
            raise ConfigError("must be >= 0 seconds (0: every log_every steps; unset: auto)",
                              key="run.report_every_s", value=self.report_every_s)
        resume = self.resume_from
        if resume and "://" not in resume:
            if not Path(resume).is_dir():
                raise ConfigError("checkpoint directory does not exist", key="run.resume_from", value=resume)
            if not (Path(resume) / "trainer_state.json").is_file() or not (Path(resume) / "deepspeed").is_dir():
                raise ConfigError("not a hybrid-ray checkpoint (needs trainer_state.json and deepspeed/)",
                                  key="run.resume_from", value=resume)


@dataclass
class EvalConfig:
    """Validation at every checkpoint (rank 0, on the exported encoder): what Tune optimises."""

    miracl_path: str | None = None  # MIRACL-format dev set (topics/qrels/corpus)
    miracl_split: str = "dev"
    pairs_path: str | None = None  # parallel pairs (LAReQA-like mono/cross/multi mAP + language bias)
    pairs_split: str | None = "dev"
    langs: list[str] | None = None
    max_queries_per_lang: int | None = 100
    batch_size: int = 64

    @property
    def enabled(self) -> bool:
        return bool(self.miracl_path or self.pairs_path)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfigSchema = field(default_factory=ScalingConfigSchema)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    run: RunConfigSchema = field(default_factory=RunConfigSchema)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _wrap(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or None
    msg = str(exc).splitlines()[0]
    return ConfigError(f"{msg} (in {source})", key=key)


def _find_file(path: str | Path) -> Path:
    path = Path(path)
    if path.exists():
        return path
    builtin = CONFIG_DIR / path.name
    if builtin.exists():
        return builtin
    raise ConfigError(f"config file {str(path)!r} not found", key="--config")


def _merge_overrides(node: DictConfig, overrides: Sequence[str] | Mapping[str, Any]) -> DictConfig:
    """Dotted ``key=value`` strings (YAML values) or a ``{dotted key: value}`` mapping, in order."""
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            try:
                OmegaConf.update(node, key, value, merge=False)
            except OmegaConfBaseException as exc:
                raise _wrap(exc, f"override {key}={value!r}") from exc
        return node
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value", key=item)
        try:
            node = OmegaConf.merge(node, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _wrap(exc, f"override {item!r}") from exc
    return node


def _finish(node: DictConfig) -> TrainConfig:
    """Merged OmegaConf node -> validated ``TrainConfig`` instance (paths resolved)."""
    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        raise ConfigError("is required", key=missing[0])
    try:
        cfg = OmegaConf.to_object(node)  # runs ModelConfig's (EncoderConfig's) __post_init__ checks
    except OmegaConfBaseException as exc:
        raise _wrap(exc, "the merged config") from exc
    assert isinstance(cfg, TrainConfig)
    _resolve_paths(cfg)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] | None = None
                ) -> TrainConfig:
    """Merge schema defaults <- YAML file <- overrides, validate, return the ``TrainConfig``."""
    node = OmegaConf.structured(TrainConfig)
    if path is not None:
        src = _find_file(path)
        try:
            node = OmegaConf.merge(node, OmegaConf.load(src))
        except OmegaConfBaseException as exc:
            raise _wrap(exc, str(src)) from exc
    return _finish(_merge_overrides(node, overrides or []))


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A validated ``TrainConfig`` from a plain nested dict (``to_dict``'s output, e.g. sent as JSON)."""
    try:
        node = OmegaConf.merge(OmegaConf.structured(TrainConfig), dict(data))
    except OmegaConfBaseException as exc:
        raise _wrap(exc, "a config mapping") from exc
    return _finish(node)


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str] | Mapping[str, Any]) -> TrainConfig:
    """A new, re-validated ``TrainConfig``: ``cfg`` with dotted overrides applied (``cfg`` is unchanged).

    ``overrides`` is a list of ``key=value`` strings (as on the command line) or a mapping
    ``{"sampler.alpha": 0.25, "run.name": "t1"}`` (values as they are, ``None`` allowed).
    """
    return _finish(_merge_overrides(OmegaConf.structured(cfg), overrides))


_PATH_KEYS = ("data.path", "model.name_or_path", "eval.miracl_path", "eval.pairs_path", "run.storage_path",
              "run.export_dir", "run.resume_from")


def _resolve_paths(cfg: TrainConfig) -> None:
    """Expand ``~`` and, for local runs, make relative paths absolute.

    Ray workers do not share the driver's working directory, so a local run passes them
    absolute paths. Under ``ray job submit`` (RAY_ADDRESS / RAY_JOB_ID set) relative paths are
    kept: there every worker's working directory is the job's uploaded ``--working-dir``.
    """
    from hybrid_ray.local import on_cluster
    from hybrid_ray.modeling.builders import is_registered

    for key in _PATH_KEYS:
        section, name = key.split(".")
        owner = getattr(cfg, section)
        value = getattr(owner, name)
        if not isinstance(value, str) or "://" in value:
            continue
        path = Path(value).expanduser()
        if key == "model.name_or_path" and (is_registered(value) or not (value.startswith((".", "/", "~"))
                                                                         or path.exists())):
            continue  # a registered builder ("tiny") or a hub name such as "intfloat/multilingual-e5-small"
        if not path.is_absolute() and not on_cluster():
            path = path.resolve()
        setattr(owner, name, str(path))


def validate(cfg: TrainConfig) -> None:
    """Every section's own checks, then those spanning sections. Raises ConfigError naming the key."""
    for section in SECTIONS:
        check = getattr(getattr(cfg, section), "check", None)
        if check is not None:
            check()
    n, b = cfg.scaling.num_workers, cfg.optim.global_batch_size
    if b < 1 or b % n:
        raise ConfigError(
            f"must be a positive multiple of scaling.num_workers={n} (each worker takes B/{n})",
            key="optim.global_batch_size", value=b,
        )


def to_yaml(cfg: TrainConfig) -> str:
    """The config as YAML (what ``load_config`` reads back to an equal ``TrainConfig``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A plain nested dict, for JSON records (results files, logs); code reads the dataclass."""
    return dataclasses.asdict(cfg)
