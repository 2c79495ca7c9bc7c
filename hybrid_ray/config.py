"""Training configuration: a typed OmegaConf structured config, YAML files, dotted overrides.

Why OmegaConf: it merges YAML files with ``key=value`` command-line overrides, checks types and
rejects unknown keys against a dataclass schema, and names the offending key in its errors, so
a bad config fails on the driver before any Ray worker starts. ``validate`` adds the checks a
schema cannot express (ZeRO stage range, batch divisibility, data path existence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hybrid_ray.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    path: str = MISSING  # pairs data set dir / parquet / jsonl
    split: str | None = None  # None: "train" of a data-set directory, or the single file given
    num_negatives: int = 0  # hard negatives per pair used in the loss (from the 'negatives' column)
    langs: list[str] | None = None  # train on this subset of languages (default: all)


@dataclass
class ModelConfig:
    name_or_path: str = MISSING  # HF model dir or hub name; "tiny" builds a tiny random BERT
    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = "Query: "
    passage_prefix: str = "Passage: "
    max_length: int = 128
    temperature: float = 0.05
    learn_temperature: bool = False
    freeze_embeddings: bool = False  # freeze the word embeddings (most of a multilingual model's size)


@dataclass
class SamplerConfig:
    alpha: float = 0.5  # P(monolingual batch); 1 = X-X-mono, 0 = X-Y
    seed: int = 42
    lang_sampling: str = "uniform"  # uniform | temperature | weights
    lang_temperature: float = 1.0
    lang_weights: dict[str, float] | None = None
    steps_per_epoch: int | None = None


@dataclass
class OptimConfig:
    global_batch_size: int = 32  # world_size x per-rank batch
    epochs: int = 1
    max_steps: int = -1  # > 0 caps the total number of steps
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 1.0


@dataclass
class ScalingConfigSchema:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    bf16: str = "auto"  # auto (on GPU only) | true | false
    offload_optimizer: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the DeepSpeed JSON config


@dataclass
class RunConfigSchema:
    name: str = "hybrid-ray"
    storage_path: str = "runs"
    export_dir: str | None = None  # final HF encoder (default: <storage>/<name>/encoder)
    log_every: int = 5
    checkpoint_every: int = 50  # steps; 0 = only at the end
    num_to_keep: int = 2
    max_failures: int = 0
    tensorboard: bool = True
    ray_num_cpus: int | None = None  # logical CPUs for a local cluster
    resume_from: str | None = None  # a checkpoint dir (or URI) to start from (CLI: --resume-from)
    trace_dir: str | None = None  # testing: per-rank JSONL of every batch trained on
    fail_at_step: int | None = None  # testing: crash rank 1 once at this step (fault-tolerance drills)


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


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfigSchema = field(default_factory=ScalingConfigSchema)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    run: RunConfigSchema = field(default_factory=RunConfigSchema)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _wrap(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or None
    msg = str(exc).splitlines()[0]
    return ConfigError(f"{msg} (in {source})", key=key)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Merge schema defaults <- YAML file <- ``key=value`` overrides, then validate."""
    cfg = OmegaConf.structured(TrainConfig)
    if path is not None:
        path = Path(path)
        if not path.exists():
            builtin = CONFIG_DIR / path.name
            if builtin.exists():
                path = builtin
            else:
                raise ConfigError(f"config file {str(path)!r} not found", key="--config")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as exc:
            raise _wrap(exc, str(path)) from exc
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value", key=item)
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _wrap(exc, f"override {item!r}") from exc
    _resolve_paths(cfg)
    validate(cfg)
    return cfg


_PATH_KEYS = ("data.path", "model.name_or_path", "eval.miracl_path", "eval.pairs_path", "run.storage_path",
              "run.export_dir", "run.trace_dir", "run.resume_from")


def _resolve_paths(cfg: DictConfig) -> None:
    """Expand ``~`` and, for local runs, make relative paths absolute.

    Ray workers do not share the driver's working directory, so a local run passes them
    absolute paths. Under ``ray job submit`` (RAY_ADDRESS / RAY_JOB_ID set) relative paths are
    kept: there every worker's working directory is the job's uploaded ``--working-dir``.
    """
    from hybrid_ray.local import on_cluster

    for key in _PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, str) or value in ("tiny", "???") or "://" in value:
            continue
        path = Path(value).expanduser()
        if key == "model.name_or_path" and not (value.startswith((".", "/", "~")) or path.exists()):
            continue  # a hub name such as "intfloat/multilingual-e5-small"
        if not path.is_absolute() and not on_cluster():
            path = path.resolve()
        OmegaConf.update(cfg, key, str(path))


def validate(cfg: DictConfig) -> None:
    """Checks a schema cannot express. Raises ConfigError naming the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError("is required", key=missing[0])
    if cfg.deepspeed.zero_stage not in (0, 1, 2, 3):
        raise ConfigError("ZeRO stage must be 0, 1, 2 or 3", key="deepspeed.zero_stage", value=cfg.deepspeed.zero_stage)
    if str(cfg.deepspeed.bf16).lower() not in ("auto", "true", "false"):
        raise ConfigError("must be auto, true or false", key="deepspeed.bf16", value=cfg.deepspeed.bf16)
    n = cfg.scaling.num_workers
    if n < 1:
        raise ConfigError("must be >= 1", key="scaling.num_workers", value=n)
    b = cfg.optim.global_batch_size
    if b < 1 or b % n:
        raise ConfigError(
            f"must be a positive multiple of scaling.num_workers={n} (each worker takes B/{n})",
            key="optim.global_batch_size", value=b,
        )
    if not 0.0 <= cfg.sampler.alpha <= 1.0:
        raise ConfigError("must be in [0, 1]", key="sampler.alpha", value=cfg.sampler.alpha)
    if cfg.sampler.lang_sampling not in ("uniform", "temperature", "weights"):
        raise ConfigError("must be uniform, temperature or weights", key="sampler.lang_sampling",
                          value=cfg.sampler.lang_sampling)
    if cfg.sampler.lang_sampling == "weights" and not cfg.sampler.lang_weights:
        raise ConfigError("lang_sampling=weights needs sampler.lang_weights", key="sampler.lang_weights")
    if cfg.model.pooling not in ("mean", "cls"):
        raise ConfigError("must be mean or cls", key="model.pooling", value=cfg.model.pooling)
    if cfg.data.num_negatives < 0:
        raise ConfigError("must be >= 0", key="data.num_negatives", value=cfg.data.num_negatives)
    if cfg.optim.lr <= 0:
        raise ConfigError("must be > 0", key="optim.lr", value=cfg.optim.lr)
    data_path = Path(cfg.data.path)
    if not data_path.exists():
        raise ConfigError("data path does not exist", key="data.path", value=str(data_path))
    resume = cfg.run.resume_from
    if resume and "://" not in resume:
        if not Path(resume).is_dir():
            raise ConfigError("checkpoint directory does not exist", key="run.resume_from", value=resume)
        if not (Path(resume) / "trainer_state.json").is_file() or not (Path(resume) / "deepspeed").is_dir():
            raise ConfigError("not a hybrid-ray checkpoint (needs trainer_state.json and deepspeed/)",
                              key="run.resume_from", value=resume)
    name = cfg.model.name_or_path
    if name != "tiny" and name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise ConfigError("model directory does not exist", key="model.name_or_path", value=name)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
