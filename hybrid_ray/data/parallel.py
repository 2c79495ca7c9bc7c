"""Index a long-layout pairs table as a (pair x language) matrix of row numbers.

The hybrid batch sampler works on integers only: it draws ``(pair_idx, lang_idx)`` cells that
exist (``available``) and the collator turns them into table rows through ``row_of``. Building
that matrix is vectorised (pyarrow dictionary encoding + numpy scatter) because training sets run
to millions of rows, where a per-row Python loop would take minutes at every worker start.

Workers of one node should not each hold a copy of the data: ``open_pairs`` memory-maps an Arrow
IPC copy of the table and this module's *index file* (``row_of`` and ``available``, written once
at conversion by :func:`write_index`). ``from_table`` finds that index through the table's schema
metadata and maps it instead of rebuilding it, so a worker's own (anonymous) memory does not grow
with the data: texts are taken row by row from the mapped columns, and pair ids are only turned
into Python strings when a diagnostic asks for them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hybrid_ray.data.schema import has_domain, is_pairs_schema, validate_pairs_table
from hybrid_ray.errors import DataError
from hybrid_ray.io import atomic_path

#: Schema-metadata keys that link a memory-mapped pairs table to its index file.
INDEX_PATH_KEY, INDEX_KEY_KEY = b"hybrid_ray.index_path", b"hybrid_ray.index_key"


def _encode(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode a string column: (int codes in first-appearance order, distinct values)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    encoded = pc.dictionary_encode(column)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return codes, encoded.dictionary


def take_rows(column: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> pa.Array:
    """``column[rows]`` chunk by chunk: a take on a many-chunk column may first concatenate all
    chunks (copying the whole mapped column into memory); this touches only the rows asked for."""
    if isinstance(column, pa.Array):
        return column.take(pa.array(rows))
    if not rows.size:
        return pa.array([], type=column.type)
    if column.num_chunks == 1:
        return column.chunk(0).take(pa.array(rows))
    starts = np.cumsum([0] + [len(c) for c in column.chunks])
    which = np.searchsorted(starts, rows, side="right") - 1
    order = np.argsort(which, kind="stable")
    parts = []
    for c in np.unique(which):
        sel = order[which[order] == c]
        parts.append(column.chunk(int(c)).take(pa.array(rows[sel] - starts[c])))
    merged = pa.concat_arrays(parts)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return merged.take(pa.array(inverse))


@dataclass
class ParallelPairs:
    """A pairs table plus its ``row_of[pair_idx, lang_idx] -> row`` index (-1 = missing).

    ``langs`` is sorted; pairs keep the table's first-appearance order, so the index is a pure
    function of the table (the same on every worker). ``row_of``/``available`` may be read-only
    views of a memory-mapped index file.
    """

    table: pa.Table
    langs: list[str]
    row_of: np.ndarray
    _available: np.ndarray | None = field(default=None, repr=False)
    _pair_values: pa.Array | None = field(default=None, repr=False)
    _pair_ids: list[str] | None = field(default=None, repr=False)
    _lang_index: dict[str, int] = field(default_factory=dict, repr=False)
    _pair_index: dict[str, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._lang_index = {lang: i for i, lang in enumerate(self.langs)}

    @classmethod
    def from_table(cls, table: pa.Table) -> ParallelPairs:
        """Build the index, or map the index file of a table from ``open_pairs`` when it still
        describes this table; validates the table first unless it already has the pairs schema."""
        mapped = _mapped_index(table)
        if mapped is not None:
            return mapped
        if not is_pairs_schema(table.schema):
            table = validate_pairs_table(table)
        langs, row_of, pair_values = _build_index(table)
        return cls(table=table, langs=langs, row_of=row_of, _pair_values=pair_values)

    @property
    def pair_ids(self) -> list[str]:
        """Pair ids by pair index (materialised on first use: only diagnostics need them)."""
        if self._pair_ids is None:
            if self._pair_values is None:
                self._pair_values = self._pair_id_array(np.arange(self.n_pairs))
            self._pair_ids = self._pair_values.to_pylist()
        return self._pair_ids

    def pair_id(self, pair_idx: int) -> str:
        """One pair's id, without materialising them all."""
        if self._pair_ids is not None:
            return self._pair_ids[pair_idx]
        if self._pair_values is not None:
            return self._pair_values[pair_idx].as_py()
        return self._pair_id_array(np.array([pair_idx])).to_pylist()[0]

    def _pair_id_array(self, pair_idx: np.ndarray) -> pa.Array:
        """Pair ids read from the table: the pair's row in its first language."""
        if not pair_idx.size:
            return pa.array([], type=pa.string())
        first = np.argmax(self.available[pair_idx], axis=1)
        return take_rows(self.table.column("pair_id"), self.row_of[pair_idx, first].astype(np.int64))

    def pair_domains(self) -> tuple[list[str], np.ndarray] | None:
        """``(domains, domain_of)``: the sorted domain names and each pair's index into them, or
        None for a table without the optional ``domain`` column. A pair's domain is read from
        its first language's row (validation makes it the same in all of them)."""
        if not has_domain(self.table):
            return None
        if self.n_pairs == 0:
            return [], np.zeros(0, dtype=np.int64)
        first = np.argmax(self.available, axis=1)
        values = take_rows(self.table.column("domain"), self.row_of[np.arange(self.n_pairs), first].astype(np.int64))
        names = sorted(set(pc.unique(values).to_pylist()))
        index = pa.array(names, pa.string())
        return names, pc.index_in(values, value_set=index).to_numpy(zero_copy_only=False).astype(np.int64)

    @property
    def n_pairs(self) -> int:
        return int(self.row_of.shape[0])

    @property
    def n_langs(self) -> int:
        return len(self.langs)

    def __len__(self) -> int:
        return self.n_pairs

    @property
    def available(self) -> np.ndarray:
        """Bool matrix (n_pairs, n_langs): which (pair, language) cells have a row."""
        if self._available is None:
            self._available = self.row_of >= 0
        return self._available

    @property
    def lang_counts(self) -> dict[str, int]:
        """Rows per language."""
        counts = self.available.sum(axis=0)
        return {lang: int(c) for lang, c in zip(self.langs, counts, strict=True)}

    @property
    def fully_parallel_fraction(self) -> float:
        """Fraction of pairs present in every language (1.0 for a perfectly parallel set)."""
        if not self.n_pairs:
            return 0.0
        return float(self.available.all(axis=1).mean())

    def lang_index(self, lang: str) -> int:
        try:
            return self._lang_index[lang]
        except KeyError:
            raise DataError(
                f"language not in this data set (have {self.langs})", field="lang", value=lang
            ) from None

    def pair_index(self, pair_id: str) -> int:
        """Position of ``pair_id``; the reverse map is built lazily (only diagnostics need it)."""
        if self._pair_index is None:
            self._pair_index = {p: i for i, p in enumerate(self.pair_ids)}
        try:
            return self._pair_index[pair_id]
        except KeyError:
            raise DataError("pair_id not in this data set", field="pair_id", value=pair_id) from None

    def rows(self, pair_idx: Sequence[int] | np.ndarray, lang_idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """Table rows of the cells ``(pair_idx[i], lang_idx[i])``; raises if any cell is missing."""
        rows = self.row_of[np.asarray(pair_idx, dtype=np.int64), np.asarray(lang_idx, dtype=np.int64)]
        if (rows < 0).any():
            i = int(np.argmax(rows < 0))
            raise DataError(
                f"pair {self.pair_id(int(np.asarray(pair_idx)[i]))!r} has no row in language "
                f"{self.langs[int(np.asarray(lang_idx)[i])]!r}",
                field="lang",
            )
        return rows

    def column(self, name: str, rows: Sequence[int] | np.ndarray) -> list:
        """Values of column ``name`` at table ``rows`` (in that order); only those rows are read."""
        idx = np.asarray(rows, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.table.num_rows):
            raise IndexError(f"row index out of range [0, {self.table.num_rows}) (-1 means a missing cell)")
        return take_rows(self.table.column(name), idx).to_pylist()


def _build_index(table: pa.Table) -> tuple[list[str], np.ndarray, pa.Array]:
    """``(sorted langs, row_of int32 [n_pairs, n_langs], pair id per pair)`` of a validated table."""
    n = table.num_rows
    pair_codes, pair_values = _encode(table.column("pair_id"))
    lang_codes, lang_dict = _encode(table.column("lang"))
    lang_values = lang_dict.to_pylist()
    # Remap language codes from first-appearance order to sorted order.
    order = np.argsort(np.asarray(lang_values, dtype=object), kind="stable")
    langs = [lang_values[i] for i in order]
    remap = np.empty(len(lang_values), dtype=np.int64)
    remap[order] = np.arange(len(lang_values))
    lang_codes = remap[lang_codes] if n else lang_codes
    n_langs = len(langs)
    flat = pair_codes * n_langs + lang_codes
    if n:
        counts = np.bincount(flat, minlength=len(pair_values) * n_langs)
        if counts.max() > 1:
            cell = int(np.argmax(counts))
            pid, lang = pair_values[cell // n_langs].as_py(), langs[cell % n_langs]
            raise DataError(
                f"duplicate row for pair_id {pid!r} in language {lang!r}",
                field="pair_id", value=pid,
            )
    row_of = np.full((len(pair_values), n_langs), -1, dtype=np.int32)
    row_of.reshape(-1)[flat] = np.arange(n, dtype=np.int32)
    return langs, row_of, pair_values


# ------------------------------------------------------------------ index file (memory-mapped)
def write_index(table: pa.Table, path: str | Path, key: str) -> Path:
    """Write ``table``'s index as an uncompressed Arrow IPC file (atomically).

    Two flat columns of ``n_pairs * n_langs`` cells, ``row_of`` (int32) and ``available`` (uint8,
    viewed as bool), so both map to numpy without a copy; ``key`` (the source's cache key), the
    languages and the table's row count go into the schema metadata.
    """
    langs, row_of, _ = _build_index(table)
    meta = {"key": key, "langs": langs, "n_pairs": int(row_of.shape[0]), "n_rows": table.num_rows}
    index = pa.table(
        {"row_of": row_of.reshape(-1), "available": (row_of >= 0).reshape(-1).view(np.uint8)}
    ).replace_schema_metadata({b"hybrid_ray.index": json.dumps(meta).encode()})
    path = Path(path)
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        with pa.ipc.new_file(sink, index.schema) as writer:
            writer.write_table(index)
    return path


def read_index_meta(path: str | Path) -> dict | None:
    """The index file's metadata, or None when it is missing or unreadable (then it is rebuilt)."""
    try:
        with pa.memory_map(str(path), "r") as source:
            raw = pa.ipc.open_file(source).schema.metadata or {}
        return json.loads(raw[b"hybrid_ray.index"])
    except (OSError, pa.ArrowInvalid, KeyError, ValueError):
        return None


def _mapped_index(table: pa.Table) -> ParallelPairs | None:
    """The memory-mapped index named in ``table``'s metadata, if it still describes ``table``.

    A table from ``open_pairs`` that was then filtered keeps its metadata, so the index is used
    only when the row count and key match and a spot check of cells agrees with the table.
    """
    meta = table.schema.metadata or {}
    if INDEX_PATH_KEY not in meta:
        return None
    info = read_index_meta(meta[INDEX_PATH_KEY].decode())
    if info is None or info["key"] != meta.get(INDEX_KEY_KEY, b"").decode() or info["n_rows"] != table.num_rows:
        return None
    with pa.memory_map(meta[INDEX_PATH_KEY].decode(), "r") as source:
        index = pa.ipc.open_file(source).read_all()
    n_langs = len(info["langs"])
    row_of = index.column("row_of").chunk(0).to_numpy().reshape(-1, n_langs) if n_langs else np.empty((0, 0))
    avail = (index.column("available").chunk(0).to_numpy().view(np.bool_).reshape(-1, n_langs)
             if n_langs else np.empty((0, 0), bool))
    pairs = ParallelPairs(table=table, langs=list(info["langs"]), row_of=row_of, _available=avail)
    return pairs if _spot_check(pairs) else None


def _spot_check(pairs: ParallelPairs, k: int = 32) -> bool:
    """Do ``k`` evenly spread cells of the index point at rows of their own language and pair?"""
    if not pairs.n_pairs:
        return pairs.table.num_rows == 0
    p = np.unique(np.linspace(0, pairs.n_pairs - 1, k).astype(np.int64))
    avail = pairs.available[p]
    lang = np.argmax(avail, axis=1)
    rows = pairs.row_of[p, lang].astype(np.int64)
    if (rows < 0).any():
        return False
    got = take_rows(pairs.table.column("lang"), rows).to_pylist()
    if got != [pairs.langs[i] for i in lang]:
        return False
    # the last language of each sampled pair must carry the same pair id as the first
    last = avail.shape[1] - 1 - np.argmax(avail[:, ::-1], axis=1)
    ids = take_rows(pairs.table.column("pair_id"), rows).to_pylist()
    return ids == take_rows(pairs.table.column("pair_id"), pairs.row_of[p, last].astype(np.int64)).to_pylist()
