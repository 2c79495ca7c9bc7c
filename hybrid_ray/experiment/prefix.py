"""Evaluate many partially fine-tuned encoders cheaply: the frozen bottom layers run once.

With ``model.train_top_layers = N`` every trial of an experiment shares the embeddings and the
bottom ``L - N`` layers of the off-the-shelf encoder bit for bit, so their outputs on the test
texts are the same in every trial. :class:`FrozenPrefix` computes those hidden states once (per
text, without padding, float32, memory-mapped on disk) and :class:`TopLayersEncoder` finishes the
encoding with a trial's top ``N`` layers and the pooling: an evaluation then costs ``N / L`` of a
full one (3 of e5-small's 12 layers: a quarter). It is only used when the trial's bottom weights
hash to the prefix's own (:func:`bottom_fingerprint`), otherwise the trial encodes in full; and
``tests/experiment/test_prefix.py`` checks the result equals the full encoder's.

How the top layers run without touching model internals: the HF model is called with
``inputs_embeds`` = the cached hidden states, its embedding module temporarily replaced by a
pass-through and its layer list by the top ``N`` layers, so the model's own attention-mask
handling (eager / SDPA) applies unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hybrid_ray.errors import ConfigError
from hybrid_ray.io import atomic_path, write_json_atomic
from hybrid_ray.modeling.freeze import encoder_layers

INDEX_FILE = "prefix.json"
STATES_FILE = "states.npy"


class _PassThrough(nn.Module):
    """Stands in for the embedding module: returns the hidden states it is given."""

    def forward(self, input_ids=None, inputs_embeds=None, **_):  # noqa: D401 - HF calls it with keywords
        return inputs_embeds


@contextmanager
def _layers(model: nn.Module, keep: slice, passthrough: bool):
    """Temporarily run ``model`` with ``encoder.layer[keep]`` (and a pass-through embedding)."""
    layers = encoder_layers(model)
    emb = model.embeddings
    model.encoder.layer = nn.ModuleList(list(layers)[keep])
    if passthrough:
        model.embeddings = _PassThrough()
    try:
        yield model
    finally:
        model.encoder.layer = layers
        model.embeddings = emb


def bottom_fingerprint(model: nn.Module, n_bottom: int) -> str:
    """SHA-256 of the embeddings' and the bottom ``n_bottom`` layers' weights (what the prefix depends on)."""
    h = hashlib.sha256()
    mods = [model.embeddings, *list(encoder_layers(model))[:n_bottom]]
    for mod in mods:
        for name, p in sorted(mod.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _key(kind: str, text: str) -> str:
    return hashlib.sha1(f"{kind}\x1f{text}".encode()).hexdigest()


class FrozenPrefix:
    """Hidden states after the bottom ``n_bottom`` layers for a fixed set of (kind, text)."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        meta = json.loads((root / INDEX_FILE).read_text())
        self.root = root
        self.n_bottom = int(meta["n_bottom"])
        self.fingerprint = str(meta["fingerprint"])
        self.max_length = int(meta["max_length"])
        self.index: dict[str, tuple[int, int]] = {k: (int(a), int(b)) for k, (a, b) in meta["index"].items()}
        self.states = np.load(root / STATES_FILE, mmap_mode="r")

    @staticmethod
    def is_built(root: str | Path, fingerprint: str, n_bottom: int) -> bool:
        f = Path(root) / INDEX_FILE
        if not f.is_file() or not (Path(root) / STATES_FILE).is_file():
            return False
        meta = json.loads(f.read_text())
        return meta.get("fingerprint") == fingerprint and int(meta.get("n_bottom", -1)) == n_bottom

    @classmethod
    def build(cls, encoder, texts: dict[str, Iterable[str]], n_bottom: int, root: str | Path,
              batch_size: int = 64) -> FrozenPrefix:
        """Run ``encoder``'s bottom ``n_bottom`` layers over ``texts`` (``{kind: texts}``) once."""
        model = encoder.model
        n_layers = len(encoder_layers(model))
        if not 0 < n_bottom < n_layers:
            raise ConfigError(f"must leave between 1 and {n_layers - 1} frozen layers", key="model.train_top_layers",
                              value=n_layers - n_bottom)
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        index: dict[str, tuple[int, int]] = {}
        chunks: list[np.ndarray] = []
        offset = 0
        model.eval()
        with torch.inference_mode(), _layers(model, slice(0, n_bottom), passthrough=False):
            for kind, items in texts.items():
                uniq = list(dict.fromkeys(t for t in items if _key(kind, t) not in index))
                order = sorted(range(len(uniq)), key=lambda i: -len(uniq[i]))
                for start in range(0, len(order), batch_size):
                    batch = [uniq[i] for i in order[start:start + batch_size]]
                    tok = encoder.tokenize(batch, kind)
                    hidden = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
                    lengths = tok["attention_mask"].sum(1).tolist()
                    for t, h, n in zip(batch, hidden.float().numpy(), lengths, strict=True):
                        index[_key(kind, t)] = (offset, int(n))
                        chunks.append(h[: int(n)])
                        offset += int(n)
        states = np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)
        with atomic_path(root / STATES_FILE) as tmp, open(tmp, "wb") as f:
            np.save(f, states.astype(np.float32, copy=False))
        write_json_atomic(root / INDEX_FILE, {"n_bottom": n_bottom, "fingerprint": bottom_fingerprint(model, n_bottom),
                                              "max_length": encoder.config.max_length, "index": index})
        return cls(root)

    def batch(self, texts: Sequence[str], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded hidden states ``[b, t, d]`` and the attention mask ``[b, t]`` of cached texts."""
        spans = []
        for t in texts:
            span = self.index.get(_key(kind, t))
            if span is None:
                raise KeyError(t)
            spans.append(span)
        width = max(n for _, n in spans)
        h = np.zeros((len(texts), width, self.states.shape[1]), np.float32)
        mask = np.zeros((len(texts), width), np.int64)
        for i, (a, n) in enumerate(spans):
            h[i, :n] = self.states[a:a + n]
            mask[i, :n] = 1
        return torch.from_numpy(h), torch.from_numpy(mask)


class TopLayersEncoder:
    """An ``Encoder`` (see :mod:`hybrid_ray.encode`): ``encoder``'s top layers over a :class:`FrozenPrefix`.

    Texts missing from the prefix are encoded in full by ``encoder`` itself.
    """

    def __init__(self, encoder, prefix: FrozenPrefix) -> None:
        if bottom_fingerprint(encoder.model, prefix.n_bottom) != prefix.fingerprint:
            raise ConfigError("the encoder's frozen layers differ from the prefix's: encode in full",
                              key="prefix", value=prefix.fingerprint)
        if encoder.config.max_length != prefix.max_length:
            raise ConfigError("the prefix was built with another max_length", key="model.max_length",
                              value=encoder.config.max_length)
        self.encoder = encoder
        self.prefix = prefix

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def covers(self, texts: Iterable[str], kind: str) -> bool:
        return all(_key(kind, t) in self.prefix.index for t in texts)

    @torch.inference_mode()
    def encode(self, texts: list[str], kind: str, batch_size: int = 64) -> np.ndarray:
        enc = self.encoder
        if not self.covers(texts, kind):  # texts the prefix was not built for: the full encoder
            return enc.encode(texts, kind, batch_size=batch_size)
        enc.eval()
        out = np.empty((len(texts), enc.dim), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        model = enc.model
        with _layers(model, slice(self.prefix.n_bottom, None), passthrough=True):
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                h, mask = self.prefix.batch([texts[i] for i in idx], kind)
                hidden = model(inputs_embeds=h, attention_mask=mask).last_hidden_state
                out[idx] = _pool(hidden, mask, enc.config).numpy()
        return out


def _pool(hidden: torch.Tensor, mask: torch.Tensor, config) -> torch.Tensor:
    """The DualEncoder's pooling (``cls`` / mean) and normalisation, on given hidden states."""
    if config.pooling == "cls":
        emb = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if config.normalize:
        emb = F.normalize(emb.float(), dim=-1)
    return emb.float()
