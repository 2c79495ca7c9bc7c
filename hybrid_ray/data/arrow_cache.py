"""Memory-mapped training data: an uncompressed Arrow IPC (Feather v2) copy of a pairs file.

Why: every Ray Train worker used to ``pq.read_table`` the whole training Parquet, decode and
re-validate it, so 8 workers on a node held 8 copies (a 10 GB set cost ~80 GB of RAM before the
model loaded). An uncompressed Arrow IPC file maps straight into memory: ``pa.memory_map`` +
``read_all()`` costs no decoding and no copy, and the pages are the OS page cache, shared by every
process of the node. Next to ``train.parquet`` this module keeps

* ``train.arrow``: the validated table (validated once, when the cache is built), and
* ``train.index.arrow``: the ``ParallelPairs`` index (``row_of``, ``available``), also mapped.

Both carry a cache key of the source file (name, size, mtime in ns) in their schema metadata; a
source that changed gets its cache rebuilt, under a file lock (one builder per node, the other
workers wait and then map the result) and atomically (``hybrid_ray.io``), so a reader never sees
a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from hybrid_ray.data.parallel import INDEX_KEY_KEY, INDEX_PATH_KEY, read_index_meta, write_index
from hybrid_ray.errors import DataError
from hybrid_ray.io import atomic_path

log = logging.getLogger(__name__)

SOURCE_KEY = b"hybrid_ray.source"
_SOURCE_SUFFIXES = (".parquet", ".jsonl.gz", ".jsonl")


def cache_paths(source: str | Path) -> tuple[Path, Path]:
    """``(table, index)`` cache files next to ``source``: ``train.parquet`` -> ``train.arrow``,
    ``train.index.arrow``."""
    source = Path(source)
    stem = next((source.name[: -len(s)] for s in _SOURCE_SUFFIXES if source.name.endswith(s)), source.stem)
    return source.with_name(f"{stem}.arrow"), source.with_name(f"{stem}.index.arrow")


def source_key(source: str | Path) -> str:
    """What identifies a source file's version: name, size and modification time (ns)."""
    st = Path(source).stat()
    return json.dumps({"name": Path(source).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}, sort_keys=True)


def _table_key(path: Path) -> str | None:
    """The source key recorded in a cached table, or None when it is missing or unreadable."""
    try:
        with pa.memory_map(str(path), "r") as source:
            meta = pa.ipc.open_file(source).schema.metadata or {}
        return meta[SOURCE_KEY].decode()
    except (OSError, pa.ArrowInvalid, KeyError, UnicodeDecodeError):
        return None


def is_fresh(source: str | Path) -> bool:
    """Do both cache files exist and describe the current version of ``source``?"""
    key = source_key(source)
    table_path, index_path = cache_paths(source)
    index_meta = read_index_meta(index_path)
    return _table_key(table_path) == key and index_meta is not None and index_meta.get("key") == key


@contextlib.contextmanager
def _locked(source: Path) -> Iterator[None]:
    """An exclusive advisory lock next to ``source`` (released when the process dies, too)."""
    lock = source.with_name(f".{cache_paths(source)[0].name}.lock")
    with open(lock, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(source: str | Path) -> tuple[Path, Path]:
    """(Re)build the cache of ``source`` if it is stale: read and validate it once (``read_pairs``),
    write the table uncompressed and then its index, each atomically. Returns both paths."""
    from hybrid_ray.data.pairs import read_pairs

    source = Path(source)
    table_path, index_path = cache_paths(source)
    with _locked(source):
        if is_fresh(source):  # another worker built it while we waited for the lock
            return table_path, index_path
        key = source_key(source)
        table = read_pairs(source)
        log.info("building memory-mapped copy %s (%d rows) of %s", table_path, table.num_rows, source)
        write_index(table, index_path, key)
        schema = table.schema.with_metadata({SOURCE_KEY: key.encode()})
        with atomic_path(table_path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, schema) as writer:  # uncompressed: mapped pages are the data
                writer.write_table(table.replace_schema_metadata(schema.metadata), max_chunksize=1 << 20)
    return table_path, index_path


def open_table(source: str | Path) -> pa.Table:
    """The memory-mapped pairs table of ``source`` (cache built or rebuilt first when stale).

    The returned table's metadata names the index file, which ``ParallelPairs.from_table`` maps
    instead of rebuilding the index. Falls back to reading ``source`` into memory (with a warning)
    when the cache cannot be written next to it, e.g. on a read-only data volume.
    """
    source = Path(source)
    table_path, index_path = cache_paths(source)
    if not is_fresh(source):
        try:
            build(source)
        except OSError as exc:
            from hybrid_ray.data.pairs import read_pairs

            log.warning("cannot write the memory-mapped cache next to %s (%s); reading it into memory", source, exc)
            return read_pairs(source)
    try:
        with pa.memory_map(str(table_path), "r") as mm:
            table = pa.ipc.open_file(mm).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot memory-map the Arrow cache: {exc} (delete it to rebuild)", path=table_path) from exc
    meta = dict(table.schema.metadata or {})
    meta[INDEX_PATH_KEY] = str(index_path.resolve()).encode()
    meta[INDEX_KEY_KEY] = meta.get(SOURCE_KEY, b"")
    return table.replace_schema_metadata(meta)
