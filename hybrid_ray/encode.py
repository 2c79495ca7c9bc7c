"""Batched encoding that streams embeddings to disk, so memory stays bounded for 1M+ candidates.

A 1M-passage pool at 384 dims is 1.5 GB of float32; at 768 dims 3 GB. Holding that (plus the
texts as Python strings) in memory is what makes naive evaluation scripts die on MIRACL-size
corpora. Here texts are pulled one batch at a time (Arrow columns are sliced, never converted
whole) and each batch of embeddings is written straight into a ``.npy`` memmap. The file is
created under a temporary name and renamed into place at the end, so a crash never leaves a
truncated ``.npy`` that a later run would mistake for a finished one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from hybrid_ray.errors import ConfigError
from hybrid_ray.io import atomic_path


class Encoder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors (``DualEncoder`` and fakes)."""

    def encode(self, texts: list[str], kind: str, batch_size: int = 64) -> np.ndarray: ...


Texts = Iterable[str] | pa.Array | pa.ChunkedArray


def _length(texts: Texts) -> int | None:
    try:
        return len(texts)  # type: ignore[arg-type]
    except TypeError:
        return None


def iter_batches(texts: Texts, batch_size: int) -> Iterator[list[str]]:
    """Yield lists of at most ``batch_size`` strings without materialising the whole input."""
    if batch_size <= 0:
        raise ConfigError("must be positive", key="batch_size", value=batch_size)
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        for start in range(0, len(texts), batch_size):
            yield [t if t is not None else "" for t in texts.slice(start, batch_size).to_pylist()]
        return
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text", disable=not enabled, mininterval=1.0)


def encode_batches(encoder: Encoder, texts: Texts, kind: str, batch_size: int = 64) -> Iterator[np.ndarray]:
    """Encode ``texts`` batch by batch, yielding float32 [b, d] arrays."""
    for batch in iter_batches(texts, batch_size):
        emb = np.asarray(encoder.encode(batch, kind, batch_size=batch_size), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ConfigError(
                f"encoder returned shape {emb.shape} for a batch of {len(batch)} texts", key="encoder"
            )
        yield emb


def encode_texts(
    encoder: Encoder, texts: Texts, kind: str, batch_size: int = 64, *, progress: bool = False,
    desc: str | None = None,
) -> np.ndarray:
    """Encode into memory (for query sets and small pools, where streaming buys nothing)."""
    total = _length(texts)
    parts: list[np.ndarray] = []
    with _progress(total, desc or f"encode {kind}", progress) as bar:
        for emb in encode_batches(encoder, texts, kind, batch_size):
            parts.append(emb)
            bar.update(len(emb))
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts)


def encode_to_memmap(
    encoder: Encoder,
    texts: Texts,
    kind: str,
    out_path: str | Path,
    batch_size: int = 64,
    *,
    total: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Encode ``texts`` into a float32 ``.npy`` at ``out_path``; return it opened read-only (mmap).

    ``texts`` may be a list, any iterable of strings (give ``total`` when it has no ``len``) or
    an Arrow string array / column. The row count must be known up front to size the memmap;
    the dimension is taken from the first batch.
    """
    out_path = Path(out_path)
    n = _length(texts)
    if n is None:
        n = total
    if n is None:
        raise ConfigError("the number of texts is unknown: pass total= for a plain iterator", key="total")
    written = 0
    with atomic_path(out_path) as tmp, _progress(n, f"encode {kind} -> {out_path.name}", progress) as bar:
        mm = None
        for emb in encode_batches(encoder, texts, kind, batch_size):
            if mm is None:
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, emb.shape[1]))
            if written + len(emb) > n:
                raise ConfigError(f"more texts than the announced total {n}", key="total", value=n)
            mm[written : written + len(emb)] = emb
            written += len(emb)
            bar.update(len(emb))
        if written != n:
            raise ConfigError(f"expected {n} texts, got {written}", key="total", value=n)
        if mm is None:  # no texts at all: an empty [0, 0] array still makes a valid .npy
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
                np.save(f, np.zeros((0, 0), np.float32), allow_pickle=False)
        else:
            mm.flush()
            del mm
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return np.load(out_path, mmap_mode="r")
