"""The one canonical Arrow schema for parallel multilingual retrieval data.

"Long" layout: one row per (pair_id, lang). A pair's parallel versions share ``pair_id``; that
is what lets the sampler build monolingual batches (query and passage rows of the same language)
and cross-lingual ones (query row in one language, passage row of the same pair in another).

Columns
  pair_id    string         shared across languages; unique per (pair_id, lang)
  lang       string         normalised ISO 639 base tag (``hybrid_ray.languages.normalize_lang``)
  query      string         non-empty
  positive   string         non-empty, the relevant passage, in ``lang``
  negatives  list<string>   hard negatives in ``lang``; may be empty
  domain     string         OPTIONAL: the pair's domain / genre (e.g. ``letters``), the same in
                            every language of a pair; lets the sampler weight domains and the
                            evaluation break results down by domain

A data set on disk is a directory with ``{split}.parquet`` files (train/dev/test) plus an
optional ``meta.json``; a single Parquet/JSONL file is a one-split data set.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from hybrid_ray.errors import DataError
from hybrid_ray.languages import is_valid_lang, load_language_table, normalize_lang

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("lang", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("positive", pa.string(), nullable=False),
        pa.field("negatives", pa.list_(pa.string()), nullable=False),
    ]
)
REQUIRED_COLUMNS = ("pair_id", "lang", "query", "positive")
DOMAIN_FIELD = pa.field("domain", pa.string(), nullable=False)
#: ``PAIRS_SCHEMA`` plus the optional ``domain`` column (what a table with domains is cast to).
PAIRS_SCHEMA_WITH_DOMAIN = PAIRS_SCHEMA.append(DOMAIN_FIELD)


def has_domain(table_or_schema: pa.Table | pa.Schema) -> bool:
    """True when the table (or schema) carries the optional ``domain`` column."""
    schema = table_or_schema if isinstance(table_or_schema, pa.Schema) else table_or_schema.schema
    return "domain" in schema.names


def is_pairs_schema(schema: pa.Schema) -> bool:
    """True for an already validated pairs table's schema (with or without ``domain``)."""
    return schema.equals(PAIRS_SCHEMA) or schema.equals(PAIRS_SCHEMA_WITH_DOMAIN)

#: Names of the languages with shipped metadata (``hybrid_ray/configs/languages.csv``). Not the
#: accepted set: every valid ISO 639-1 / 639-3 code is accepted (:func:`check_lang`).
LANGUAGES: dict[str, str] = {code: info.name for code, info in load_language_table().items()}


_UNKNOWN = "unknown language code: not a valid ISO 639-1/639-3 language (BCP-47 tag; e.g. en, ny, am, qu)"


def check_lang(code: str, *, path: object = None, field: str = "lang", line: int | None = None) -> str:
    """The normalised base tag of ``code`` (``EN`` -> ``en``, ``nya`` -> ``ny``), or a DataError naming
    the file, line, field and value when it is not a valid ISO 639 language (``xx``, ``xx-bogus``)."""
    if not is_valid_lang(code):
        raise DataError(_UNKNOWN, path=path, field=field, value=code, line=line)
    return normalize_lang(code)


def first_null_row(column: pa.Array | pa.ChunkedArray) -> int | None:
    """0-based row of the first null in ``column``, or None: for errors that name the row."""
    return pc.index(pc.is_null(column), True).as_py() if column.null_count else None


def first_blank_row(column: pa.Array | pa.ChunkedArray) -> int | None:
    """0-based row of the first empty or whitespace-only string in ``column``, or None."""
    row = pc.index(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), True).as_py()
    return None if row < 0 else row


def validate_pairs_table(table: pa.Table, *, path: object = None) -> pa.Table:
    """Check a pairs table and return it cast to ``PAIRS_SCHEMA`` (adding empty negatives).

    Language codes are normalised (``EN``/``eng``/``en-US`` -> ``en``, so their rows are one
    language). Raises DataError for: missing columns, invalid language codes, empty query/passage text,
    duplicate (pair_id, lang) rows. All checks are vectorised (pyarrow.compute).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; found {table.column_names}",
            path=path, field=missing[0],
        )
    if "negatives" not in table.column_names:
        empty = pa.array([[]] * table.num_rows, type=pa.list_(pa.string()))
        table = table.append_column("negatives", empty)
    with_domain = has_domain(table)
    target = PAIRS_SCHEMA_WITH_DOMAIN if with_domain else PAIRS_SCHEMA
    table = table.select(list(target.names))
    # Nulls first: casting a null to the non-nullable schema fails with an opaque ValueError.
    for name in REQUIRED_COLUMNS + (("domain",) if with_domain else ()):
        row = first_null_row(table.column(name))
        if row is not None:  # a table row (0-based), not a file line: Parquet has no lines
            raise DataError(f"null value in row {row}", path=path, field=name)
    negs = table.column("negatives")
    if negs.null_count:  # a null list of negatives is an empty one
        try:
            negs = pc.fill_null(negs, pa.scalar([], negs.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError):
            pass  # not a list column: the cast below reports the mismatch
        table = table.set_column(table.column_names.index("negatives"), "negatives", negs)
    try:
        table = table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as exc:
        raise DataError(f"columns do not match the pairs schema {target}: {exc}", path=path) from exc
    for name in ("query", "positive", "pair_id") + (("domain",) if with_domain else ()):
        row = first_blank_row(table.column(name))
        if row is not None:
            raise DataError(
                f"empty text in row {row} (pair_id {table.column('pair_id')[row].as_py()!r})",
                path=path, field=name, value=table.column(name)[row].as_py(),
            )
    table = _normalize_lang_column(table, path)
    if table.num_rows:
        keys = pc.binary_join_element_wise(table.column("pair_id"), table.column("lang"), "\x1f")
        if len(pc.unique(keys)) != table.num_rows:
            counts = pc.value_counts(keys)
            dup = next(v["values"].as_py() for v in counts if v["counts"].as_py() > 1)
            pid, lang = dup.split("\x1f")
            raise DataError(
                f"duplicate row for pair_id {pid!r} in language {lang!r}: each (pair_id, lang) must be unique",
                path=path, field="pair_id", value=pid,
            )
    if with_domain and table.num_rows:
        _check_domain_per_pair(table, path)
    return table


def _check_domain_per_pair(table: pa.Table, path: object) -> None:
    """A pair is ONE passage in many languages: its domain must be the same in all of them."""
    per_pair = table.select(["pair_id", "domain"]).group_by("pair_id").aggregate([("domain", "count_distinct")])
    counts = per_pair.column("domain_count_distinct")
    row = pc.index(pc.greater(counts, 1), True).as_py()
    if row >= 0:
        pid = per_pair.column("pair_id")[row].as_py()
        raise DataError("a pair has different domains in different languages", path=path, field="domain",
                        value=pid)


def _normalize_lang_column(table: pa.Table, path: object) -> pa.Table:
    """``lang`` rewritten to normalised base tags; DataError (naming the first row) for an invalid code."""
    column = table.column("lang")
    codes = pc.unique(column).to_pylist()
    normal = {}
    for code in codes:
        if not is_valid_lang(code):
            row = pc.index(column, code).as_py()
            raise DataError(f"{_UNKNOWN} (first in row {row})", path=path, field="lang", value=code)
        normal[code] = normalize_lang(code)
    if all(k == v for k, v in normal.items()):
        return table
    encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    mapped = pa.array([normal[v] for v in encoded.dictionary.to_pylist()], pa.string())
    fixed = mapped.take(encoded.indices)
    return table.set_column(table.column_names.index("lang"), "lang", fixed)
