"""``EncoderConfig``: how token states become a retrieval embedding. Kept free of torch so that
loading a training config (``hybrid_ray.config.ModelConfig`` subclasses it) stays cheap."""

from __future__ import annotations

from dataclasses import dataclass, fields

from hybrid_ray.errors import ConfigError


@dataclass
class EncoderConfig:
    """How the HF encoder's token states become a retrieval embedding."""

    # A plain str (not Literal): OmegaConf structured configs cannot type-check Literal fields.
    # ``hybrid_ray.config.ModelConfig`` subclasses this dataclass, so the checks below are the
    # one place where pooling / temperature / max_length are validated.
    pooling: str = "mean"  # mean | cls
    normalize: bool = True
    query_prefix: str = "Query: "
    passage_prefix: str = "Passage: "
    max_length: int = 128
    # InfoNCE temperature. Learnable as log(1/T) (CLIP style) when learn_temperature is set.
    temperature: float = 0.05
    learn_temperature: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ConfigError("must be 'mean' or 'cls'", key="model.pooling", value=self.pooling)
        if not self.temperature > 0:
            raise ConfigError("must be > 0", key="model.temperature", value=self.temperature)
        if self.max_length < 2:
            raise ConfigError("must be >= 2", key="model.max_length", value=self.max_length)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
