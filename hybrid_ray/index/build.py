"""Sharded index build: encode a corpus (Ray Data, :mod:`hybrid_ray.encode_ray`), one FAISS index per shard.

Layout of an index directory::

    shard-0000.npy       float32 [n_0, d] L2-normalised passage embeddings
    shard-0000.parquet   docid, lang, text of those rows (row i <-> vector i)
    shard-0000.faiss     FAISS index over the vectors (Flat = exact inner product by default)
    shard-0000.json      completion record: counts, input/model fingerprints, file checksums
    ...
    manifest.json        written last: model, dims, metric, factory, shards, checksums

Why this shape: a shard is the unit a Ray Serve replica loads, the unit of resumption and the
unit of verification. Each file is written atomically; a shard's ``.json`` record is written
only after its three files, and ``manifest.json`` only after every shard, so a crash at any
point leaves either complete shards or nothing that looks complete. Rerunning the same command
skips shards whose record matches the input rows, the model and the files' sha256, and rebuilds
the rest (including a shard whose file was corrupted or deleted).

Rows are split into contiguous shards in corpus order, so global id = shard offset + local row,
which is what :class:`hybrid_ray.search.ShardedSearcher` needs for an exact merged top-k.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# The encoding backends live in hybrid_ray.encode_ray (shared with ``mine`` and ``eval``); the
# names stay importable from here for callers of the index package.
from hybrid_ray.encode_ray import (  # noqa: F401  (re-exported)
    EncodeBatch,
    _ray_resources,
    actor_restart_args,
    encode_rows,
    encode_rows_local,
    encode_rows_ray,
)
from hybrid_ray.errors import ConfigError, DataError
from hybrid_ray.export.backend import resolve_backend
from hybrid_ray.index.corpus import check_corpus, table_fingerprint
from hybrid_ray.index.factory import check_shard_sizes, search_params_of
from hybrid_ray.index.manifest import INDEX_FORMAT, MANIFEST, shard_name
from hybrid_ray.io import atomic_path, sha256_file, write_json_atomic
from hybrid_ray.search import build_index

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inputs
def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over every file of the model directory (names + contents): new weights, new index."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError("model directory does not exist", key="model_dir", value=str(model_dir))
    h = hashlib.sha256()
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(model_dir)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def model_config(model_dir: str | Path) -> dict[str, Any]:
    """Encoder config (pooling, prefixes...) and HF architecture facts, without loading weights."""
    model_dir = Path(model_dir)
    out: dict[str, Any] = {}
    enc = model_dir / "hybrid_ray_encoder.json"
    if enc.is_file():
        out["encoder"] = json.loads(enc.read_text())
    hf = model_dir / "config.json"
    if hf.is_file():
        cfg = json.loads(hf.read_text())
        out["hf"] = {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
    return out


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal row ranges (the first ``n % shards`` shards get one more row)."""
    if shards < 1:
        raise ConfigError("must be >= 1", key="shards", value=shards)
    base, extra = divmod(n, shards)
    out, start = [], 0
    for i in range(shards):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


class _ShardWriter:
    """Collects one shard's embeddings in a temporary memmap; renamed into place when full."""

    def __init__(self, out_dir: Path, name: str, start: int, end: int) -> None:
        self.path = out_dir / f"{name}.npy"
        self.tmp = out_dir / f".{name}.npy.{os.getpid()}.tmp"
        self.start, self.end = start, end
        self.done = 0
        self.mm: np.memmap | None = None

    def add(self, rows: np.ndarray, emb: np.ndarray) -> bool:
        """Write the rows of this shard; True once every row has arrived (file then in place)."""
        if self.mm is None:
            self.mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                                shape=(self.end - self.start, emb.shape[1]))
        self.mm[rows - self.start] = emb
        self.done += len(rows)
        if self.done < self.end - self.start:
            return False
        self.mm.flush()
        self.mm = None
        os.replace(self.tmp, self.path)
        return True

    def discard(self) -> None:
        self.mm = None
        if self.tmp.exists():
            self.tmp.unlink()


# --------------------------------------------------------------------------- build
def _shard_complete(out_dir: Path, name: str, expect: dict[str, Any]) -> dict[str, Any] | None:
    """The shard's record when it is complete and built from the same input, else None."""
    rec_path = out_dir / f"{name}.json"
    if not rec_path.is_file():
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except json.JSONDecodeError:
        return None
    rec.setdefault("encoder_backend", "torch")  # records from before the field were all torch-encoded
    if any(rec.get(k) != v for k, v in expect.items()):
        return None
    for info in rec.get("files", {}).values():
        f = out_dir / info["path"]
        if not f.is_file() or f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
            return None
    return rec


def _file_info(path: Path) -> dict[str, Any]:
    return {"path": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _finish_shard(out_dir: Path, corpus: pa.Table, expect: dict[str, Any], dim: int) -> dict[str, Any]:
    """Write a shard's passages and FAISS index next to its vectors, then its completion record."""
    name = expect["name"]
    npy, pqt, fai = (out_dir / f"{name}{ext}" for ext in (".npy", ".parquet", ".faiss"))
    with atomic_path(pqt) as tmp:
        pq.write_table(corpus.slice(expect["offset"], expect["count"]), tmp)
    try:
        index = build_index(np.asarray(np.load(npy, mmap_mode="r")), expect["factory"])
    except RuntimeError as exc:  # FAISS training (e.g. too few points for the centroids)
        raise DataError(f"cannot build the {expect['factory']!r} index of {name} ({expect['count']} "
                        f"passages): {str(exc).splitlines()[0]}", path=npy) from exc
    with atomic_path(fai) as tmp:
        faiss.write_index(index, str(tmp))
    rec = expect | {"dim": dim, "files": {"npy": _file_info(npy), "parquet": _file_info(pqt),
                                          "faiss": _file_info(fai)}}
    write_json_atomic(out_dir / f"{name}.json", rec)  # the shard's completion mark: written last
    return rec


def build_sharded_index(
    model_dir: str | Path,
    corpus: pa.Table,
    out_dir: str | Path,
    *,
    shards: int = 1,
    factory: str = "Flat",
    batch_size: int = 64,
    concurrency: int | None = None,
    num_gpus: float | None = None,
    corpus_path: str | None = None,
    progress: bool = False,
    search_params: dict[str, Any] | None = None,
    local: bool = False,
    backend: str = "torch",
    onnx_cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Encode ``corpus`` (docid, lang, text) and write a resumable sharded index to ``out_dir``.

    Starts (or joins) Ray through :func:`hybrid_ray.local.init_ray` (``local=True``: encode in
    this process instead, no Ray). ``search_params`` (``nprobe`` for IVF, ``efSearch`` for HNSW)
    are recorded in the manifest as the serving defaults. An index type that needs more training
    vectors than a shard holds (IVF ``nlist``, PQ codebooks) is refused before encoding. Returns
    the manifest, plus ``built`` / ``skipped`` shard names for this run (not stored in the manifest).

    ``backend`` (``torch`` | ``onnx`` | ``onnx-int8`` | ``auto``, :mod:`hybrid_ray.export.backend`)
    is resolved here, once (an ONNX graph the model lacks is exported now, not by every actor),
    and recorded per shard: a shard encoded by another backend is rebuilt.
    """
    corpus = check_corpus(corpus, Path(corpus_path or "<corpus>"))
    if corpus.num_rows == 0:
        raise DataError("the corpus is empty", path=corpus_path)
    if shards > corpus.num_rows:
        raise ConfigError(f"more shards than passages ({corpus.num_rows})", key="shards", value=shards)
    bounds = shard_bounds(corpus.num_rows, shards)
    params = search_params_of(factory, search_params)
    config = model_config(model_dir)
    hidden = config.get("hf", {}).get("hidden_size")
    if hidden:  # else: the same check happens at FAISS training time, per shard
        check_shard_sizes(factory, int(hidden), {shard_name(i): e - b for i, (b, e) in enumerate(bounds)})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_sha = model_fingerprint(model_dir)
    resolved = resolve_backend(model_dir, backend, cache_dir=onnx_cache_dir, prepare=False)  # no export yet
    t0 = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    pending: dict[str, dict[str, Any]] = {}
    for i, (start, end) in enumerate(bounds):
        name = shard_name(i)
        expect = {"name": name, "offset": start, "count": end - start, "factory": factory,
                  "input_sha256": table_fingerprint(corpus.slice(start, end - start)),
                  "model_sha256": model_sha, "encoder_backend": resolved.label}
        rec = _shard_complete(out_dir, name, expect)
        if rec is not None:
            records[name] = rec
        else:
            pending[name] = expect
    skipped = sorted(records)
    if pending:
        # The old manifest would describe files about to be replaced: drop it until we finish.
        (out_dir / MANIFEST).unlink(missing_ok=True)
        resolved = resolve_backend(model_dir, backend, cache_dir=onnx_cache_dir)  # exports a missing graph
        writers = {n: _ShardWriter(out_dir, n, e["offset"], e["offset"] + e["count"])
                   for n, e in pending.items()}
        starts = np.asarray([w.start for w in writers.values()])
        names = list(writers)
        try:
            stream = encode_rows("local" if local else "ray", model_dir, corpus.column("text"),
                                 [(w.start, w.end) for w in writers.values()], batch_size=batch_size,
                                 concurrency=concurrency, num_gpus=num_gpus, progress=progress,
                                 backend=resolved)
            for rows, emb in stream:
                # A batch never spans shards (blocks are cut at shard bounds) but be safe anyway.
                owner = np.searchsorted(starts, rows, side="right") - 1
                for j in np.unique(owner).tolist():
                    name = names[j]
                    sel = owner == j
                    if writers[name].add(rows[sel], emb[sel]):
                        records[name] = _finish_shard(out_dir, corpus, pending[name], int(emb.shape[1]))
                        log.info("built %s: %d passages", name, pending[name]["count"])
        finally:
            for w in writers.values():
                w.discard()
        incomplete = sorted(set(pending) - set(records))
        if incomplete:
            raise DataError(f"encoding finished without every row of {incomplete}", path=out_dir)
    built = sorted(pending)
    records_list = [records[n] for n in sorted(records)]
    dims = {r["dim"] for r in records_list}
    if len(dims) != 1:
        raise DataError(f"shards disagree on the embedding dimension {sorted(dims)}", path=out_dir)
    manifest = {
        "format": INDEX_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_dir": str(Path(model_dir).resolve()),
        "model_sha256": model_sha,
        "model_config": config,
        "encoder_backend": resolved.label,
        "corpus": corpus_path,
        "dim": dims.pop(),
        # Inner product == cosine only for normalised vectors; recorded so serving can check it.
        "normalized": bool(config.get("encoder", {}).get("normalize", True)),
        "metric": "inner_product",
        "factory": factory,
        "search_params": params,
        "count": corpus.num_rows,
        "shards": [
            {k: r[k] for k in ("name", "offset", "count", "input_sha256", "files")} for r in records_list
        ],
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest | {"built": built, "skipped": skipped}


__all__ = ["EncodeBatch", "build_sharded_index", "encode_rows_local", "encode_rows_ray", "model_config",
           "model_fingerprint", "shard_bounds"]
