"""Index a long-layout pairs table as a (pair x language) matrix of row numbers.

The hybrid batch sampler works on integers only: it draws ``(pair_idx, lang_idx)`` cells that
exist (``available``) and the collator turns them into table rows through ``row_of``. Building
that matrix is vectorised (pyarrow dictionary encoding + numpy scatter) because training sets run
to millions of rows, where a per-row Python loop would take minutes at every worker start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hybrid_ray.data.schema import PAIRS_SCHEMA, validate_pairs_table
from hybrid_ray.errors import DataError


def _encode(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """Dictionary-encode a string column: (int codes in first-appearance order, distinct values)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    encoded = pc.dictionary_encode(column)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return codes, encoded.dictionary.to_pylist()


@dataclass
class ParallelPairs:
    """A pairs table plus its ``row_of[pair_idx, lang_idx] -> row`` index (-1 = missing).

    ``langs`` is sorted; ``pair_ids`` keeps the table's first-appearance order, so the index is a
    pure function of the table (the same on every worker).
    """

    table: pa.Table
    langs: list[str]
    pair_ids: list[str]
    row_of: np.ndarray
    _lang_index: dict[str, int] = field(default_factory=dict, repr=False)
    _pair_index: dict[str, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._lang_index = {lang: i for i, lang in enumerate(self.langs)}

    @classmethod
    def from_table(cls, table: pa.Table) -> ParallelPairs:
        """Build the index; validates the table first unless it already has the pairs schema."""
        if not table.schema.equals(PAIRS_SCHEMA):
            table = validate_pairs_table(table)
        n = table.num_rows
        pair_codes, pair_ids = _encode(table.column("pair_id"))
        lang_codes, lang_values = _encode(table.column("lang"))
        # Remap language codes from first-appearance order to sorted order.
        order = np.argsort(np.asarray(lang_values, dtype=object), kind="stable")
        langs = [lang_values[i] for i in order]
        remap = np.empty(len(lang_values), dtype=np.int64)
        remap[order] = np.arange(len(lang_values))
        lang_codes = remap[lang_codes] if n else lang_codes
        n_langs = len(langs)
        flat = pair_codes * n_langs + lang_codes
        if n:
            counts = np.bincount(flat, minlength=len(pair_ids) * n_langs)
            if counts.max() > 1:
                cell = int(np.argmax(counts))
                pid, lang = pair_ids[cell // n_langs], langs[cell % n_langs]
                raise DataError(
                    f"duplicate row for pair_id {pid!r} in language {lang!r}",
                    field="pair_id", value=pid,
                )
        row_of = np.full((len(pair_ids), n_langs), -1, dtype=np.int32)
        row_of.reshape(-1)[flat] = np.arange(n, dtype=np.int32)
        return cls(table=table, langs=langs, pair_ids=pair_ids, row_of=row_of)

    @property
    def n_pairs(self) -> int:
        return len(self.pair_ids)

    @property
    def n_langs(self) -> int:
        return len(self.langs)

    def __len__(self) -> int:
        return self.n_pairs

    @property
    def available(self) -> np.ndarray:
        """Bool matrix (n_pairs, n_langs): which (pair, language) cells have a row."""
        return self.row_of >= 0

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
                f"pair {self.pair_ids[int(np.asarray(pair_idx)[i])]!r} has no row in language "
                f"{self.langs[int(np.asarray(lang_idx)[i])]!r}",
                field="lang",
            )
        return rows

    def column(self, name: str, rows: Sequence[int] | np.ndarray) -> list:
        """Values of column ``name`` at table ``rows`` (in that order), via ``table.take``."""
        idx = np.asarray(rows, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.table.num_rows):
            raise IndexError(f"row index out of range [0, {self.table.num_rows}) (-1 means a missing cell)")
        return self.table.column(name).take(pa.array(idx)).to_pylist()
