"""Batched encoding that streams embeddings to disk, so memory stays bounded for 1M+ candidates.

A 1M-passage pool at 384 dims is 1.5 GB of float32; at 768 dims 3 GB. Holding that (plus the
texts as Python strings) in memory is what makes naive evaluation scripts die on MIRACL-size
corpora. Here texts are pulled one batch at a time (Arrow columns are sliced, never converted
whole) and each batch of embeddings is written straight into a ``.npy`` memmap. The file is
created under a temporary name and renamed into place at the end, so a crash never leaves a
truncated ``.npy`` that a later run would mistake for a finished one.

:func:`encode_to_memmap_cached` adds safe reuse: next to ``X.npy`` it writes ``X.npy.json`` with
a key (the caller's encoder fingerprint + the text kind + the batch size + a SHA-256 of the texts)
and a later call with the same key reuses the file instead of encoding again. The sidecar is
removed before and rewritten after the ``.npy``, so a crash in between leaves no key at all (and
the next run encodes again) rather than a key pointing at different vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from hybrid_ray.errors import ConfigError
from hybrid_ray.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)


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
    out: np.ndarray | None = None
    written = 0
    with _progress(total, desc or f"encode {kind}", progress) as bar:
        for emb in encode_batches(encoder, texts, kind, batch_size):
            if total is not None:  # known length: fill one preallocated array (no 2x concatenate)
                if out is None:
                    out = np.empty((total, emb.shape[1]), np.float32)
                out[written : written + len(emb)] = emb
                written += len(emb)
            else:
                parts.append(emb)
            bar.update(len(emb))
    if out is not None:
        return out
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
        finish_npy(tmp, mm)
        del mm
    return np.load(out_path, mmap_mode="r")


def finish_npy(tmp: str | Path, mm: np.memmap | None) -> None:
    """Flush and fsync a float32 memmap being written at ``tmp`` (before its atomic rename).

    ``mm`` None (no texts at all): an empty ``[0, 0]`` array still makes a valid ``.npy``.
    """
    if mm is None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, np.zeros((0, 0), np.float32), allow_pickle=False)
    else:
        mm.flush()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())


def texts_digest(texts: Texts, batch_size: int = 4096) -> tuple[str, int]:
    """``(sha256 hex, count)`` of a text sequence, streamed (length-prefixed UTF-8 per text)."""
    h = hashlib.sha256()
    n = 0
    for batch in iter_batches(texts, batch_size):
        for t in batch:
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        n += len(batch)
    return h.hexdigest(), n


def model_fingerprint(model_dir: str | Path) -> str:
    """A cheap identity for a model directory: resolved path + every file's name, size, mtime."""
    root = Path(model_dir).resolve()
    h = hashlib.sha256(str(root).encode())
    if root.is_dir():
        for p in sorted(q for q in root.rglob("*") if q.is_file()):
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def encode_to_memmap_cached(
    encoder: Encoder,
    texts: Texts,
    kind: str,
    out_path: str | Path,
    batch_size: int = 64,
    *,
    key: str | None = None,
    progress: bool = True,
    write: Callable[[Path], np.ndarray] | None = None,
) -> np.ndarray:
    """:func:`encode_to_memmap`, reusing ``out_path`` when its sidecar records the same key.

    ``write(out_path)``: another way to produce the file (e.g. Ray Data actors through
    :func:`hybrid_ray.encode_ray.write_rows_memmap`); the key does not name the backend, because
    both give the same vectors (to float rounding), so either reuses the other's file.

    ``key`` identifies the encoder (e.g. :func:`model_fingerprint`); None never reuses (the file
    is re-encoded and replaced atomically). The stored key also covers ``kind``, ``batch_size``
    and the texts themselves, so different data or a different model never reuse a file.
    """
    out_path = Path(out_path)
    meta_path = out_path.with_name(out_path.name + ".json")
    full_key = None
    if key is not None:
        digest, n = texts_digest(texts)
        full_key = hashlib.sha256(f"{key}\0{kind}\0{batch_size}\0{n}\0{digest}".encode()).hexdigest()
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == full_key and out_path.exists():
                arr = np.load(out_path, mmap_mode="r")
                if list(arr.shape) == meta.get("shape") and arr.dtype == np.float32:
                    log.info("reusing %s (%s x %s)", out_path, *arr.shape)
                    return arr
        except (OSError, ValueError):
            pass
    meta_path.unlink(missing_ok=True)
    if write is not None:
        arr = write(out_path)
    else:
        arr = encode_to_memmap(encoder, texts, kind, out_path, batch_size, progress=progress)
    if full_key is not None:
        write_json_atomic(meta_path, {"key": full_key, "kind": kind, "shape": list(arr.shape),
                                      "dtype": "float32"})
    return arr
