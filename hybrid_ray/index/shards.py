"""Reading an index directory: ONE shard (FAISS index + vectors + passages, checked against the
manifest), and a whole directory as one exact searcher built from those shards.

Every reader goes through :func:`read_shard` -- the serving shard deployments
(:class:`hybrid_ray.serving.shard.ShardCore`) one shard per replica, :func:`load_sharded_index`
every shard in one process -- so a missing, corrupt or inconsistent shard is refused the same way,
with a DataError naming the file, wherever it is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hybrid_ray.errors import ConfigError, DataError
from hybrid_ray.index.factory import apply_search_params
from hybrid_ray.index.manifest import check_shard_files, read_manifest, resolve_search_params
from hybrid_ray.search import ShardedSearcher, maybe_to_gpu

#: The passage columns of a shard's Parquet file (row i <-> vector i).
PASSAGE_COLUMNS = ["docid", "lang", "text"]


@dataclass
class Shard:
    """One shard as written by the builder, after every check against the manifest passed."""

    name: str
    offset: int  # global id of row 0
    index: faiss.Index = field(repr=False)  # the CPU index as stored
    vectors: np.ndarray = field(repr=False)  # float32 [count, dim], a read-only memmap of the .npy
    table: pa.Table = field(repr=False)  # docid, lang, text

    @property
    def count(self) -> int:
        return int(self.table.num_rows)


def read_shard(index_dir: str | Path, shard: int, *, verify: bool = True,
               manifest: dict[str, Any] | None = None) -> Shard:
    """Read shard number ``shard`` of an index directory, checking it against the manifest.

    ``verify``: also compare every file's size and sha256 with the manifest (else only that the
    files exist). Whatever ``verify`` says, the FAISS index, the vectors and the passage table
    must agree with the manifest's row count and dimension. Raises DataError naming the missing /
    corrupt / unreadable file; ConfigError for a shard number the index does not have.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir) if manifest is None else manifest
    shards = manifest["shards"]
    if not 0 <= shard < len(shards):
        raise ConfigError(f"index has {len(shards)} shards", key="shard", value=shard)
    entry = shards[shard]
    check_shard_files(index_dir, entry, verify)
    files = {k: index_dir / v["path"] for k, v in entry["files"].items()}
    try:
        index = faiss.read_index(str(files["faiss"]))
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0]
        raise DataError(f"cannot read FAISS index: {msg}", path=files["faiss"]) from exc
    try:
        vectors = np.load(files["npy"], mmap_mode="r")
        table = pq.read_table(files["parquet"], columns=PASSAGE_COLUMNS)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read shard data: {exc}", path=files["npy"]) from exc
    count = int(entry["count"])
    if index.ntotal != count or table.num_rows != count or vectors.shape[0] != count:
        raise DataError(f"shard has {index.ntotal} vectors / {table.num_rows} rows / {vectors.shape[0]} "
                        f"embeddings, manifest says {count}", path=files["faiss"])
    if int(vectors.shape[1]) != int(manifest["dim"]) or int(index.d) != int(manifest["dim"]):
        raise DataError(f"shard dimension {index.d} != manifest dim {manifest['dim']}", path=files["faiss"])
    return Shard(entry["name"], int(entry["offset"]), index, vectors, table)


def prepare_index(index: faiss.Index, *, gpu: bool, search_params: dict[str, int] | None) -> faiss.Index:
    """The index ready to search: on the GPUs when asked (and FAISS can), with nprobe / efSearch set."""
    return apply_search_params(maybe_to_gpu(index) if gpu else index, search_params)


@dataclass
class ShardedIndex:
    """A loaded index directory: the merged exact searcher plus per-shard passage tables."""

    path: Path
    manifest: dict[str, Any]
    searcher: ShardedSearcher
    tables: list[pa.Table] = field(repr=False)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    def passages(self, ids: np.ndarray) -> list[dict[str, str]]:
        """``docid, lang, text`` for global ids (from :meth:`search`)."""
        offsets = np.asarray(self.searcher.offsets)
        out = []
        for gid in np.asarray(ids).ravel().tolist():
            s = int(np.searchsorted(offsets, gid, side="right") - 1)
            row = self.tables[s].slice(gid - offsets[s], 1).to_pylist()[0]
            out.append(row)
        return out

    def search(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Top-k hits per query vector: ``[{docid, lang, text, score}, ...]`` best first."""
        scores, ids = self.searcher.search(queries, k)
        hits = []
        for srow, irow in zip(scores, ids, strict=True):
            rows = self.passages(irow[irow >= 0])
            hits.append([r | {"score": float(s)} for r, s in zip(rows, srow, strict=False)])
        return hits


def load_sharded_index(path: str | Path, verify: bool = True, gpu: bool = True,
                       search_params: dict[str, Any] | None = None) -> ShardedIndex:
    """Open every shard of an index directory (:func:`read_shard`) as one exact searcher.

    Raises DataError naming the first missing or corrupt shard file, so an operator knows which
    file to rebuild (rerunning ``hybrid-ray index`` with the same arguments repairs it).
    ``search_params`` (nprobe / efSearch) override the manifest's recorded ones.
    """
    path = Path(path)
    manifest = read_manifest(path)
    params = resolve_search_params(manifest, search_params)
    shards = [read_shard(path, i, verify=verify, manifest=manifest) for i in range(len(manifest["shards"]))]
    searcher = ShardedSearcher([prepare_index(s.index, gpu=gpu, search_params=params) for s in shards],
                               [s.offset for s in shards])
    return ShardedIndex(path, manifest, searcher, [s.table for s in shards])
