"""Read and write parallel pairs tables (the canonical training/evaluation layout).

A data set is either a directory of ``{split}.parquet`` files (plus an optional ``meta.json``), or
a single ``.parquet`` / ``.jsonl`` / ``.jsonl.gz`` file that is a one-split data set. Everything is
read columnar with pyarrow so that multi-million-row sets load in seconds; every table leaves this
module validated against :data:`~hybrid_ray.data.schema.PAIRS_SCHEMA`.

JSONL is read twice only when it is broken: first with pyarrow's fast reader, and if that or the
validation fails, once more line by line so the error can name the exact line, which the columnar
reader cannot do.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from hybrid_ray.data.formats import DataFormat, register_format
from hybrid_ray.data.schema import PAIRS_SCHEMA, REQUIRED_COLUMNS, check_lang, validate_pairs_table
from hybrid_ray.errors import DataError
from hybrid_ray.io import atomic_path

if TYPE_CHECKING:
    from hybrid_ray.data.retrieval import RetrievalSet

#: Conventional split order; other split names sort after these, alphabetically.
SPLIT_ORDER = ("train", "dev", "test")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")

RowCheck = Callable[[dict[str, Any], int], None]


def is_jsonl(path: str | Path) -> bool:
    return str(path).endswith(JSONL_SUFFIXES)


def open_text(path: str | Path) -> TextIO:
    """Open a text file, transparently gunzipping ``.gz`` files."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def list_splits(path: str | Path) -> list[str]:
    """Split names (``{split}.parquet`` stems) of a data-set directory, train/dev/test first."""
    path = Path(path)
    if not path.is_dir():
        raise DataError("not a data-set directory", path=path)
    names = [p.name[: -len(".parquet")] for p in path.glob("*.parquet") if not p.name.startswith(".")]
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return sorted(names, key=lambda s: (rank.get(s, len(rank)), s))


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a data-set directory, or ``{}`` when it has none."""
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path=meta, line=exc.lineno) from exc


def _resolve(path: Path, split: str | None) -> Path:
    """The file to read for ``split``: picks ``{split}.parquet`` inside a data-set directory."""
    if path.is_dir():
        splits = list_splits(path)
        if not splits:
            raise DataError("data-set directory holds no {split}.parquet files", path=path)
        if split is None:
            # A directory is usually read for training; a one-split directory is unambiguous.
            if "train" in splits:
                split = "train"
            elif len(splits) == 1:
                split = splits[0]
            else:
                raise DataError(f"several splits {splits}: say which one to read", path=path, field="split")
        if split not in splits:
            raise DataError(f"no such split (available: {splits})", path=path, field="split", value=split)
        return path / f"{split}.parquet"
    if not path.exists():
        raise DataError("no such file or directory", path=path)
    if split is not None:
        # A single file is a one-split data set: silently using it as "dev" would hide a mistake.
        raise DataError(
            "a single file is a one-split data set; pass a data-set directory to choose a split",
            path=path, field="split", value=split,
        )
    return path


def read_pairs(path: str | Path, split: str | None = None) -> pa.Table:
    """Read a pairs table from a data-set directory, a ``.parquet`` or a ``.jsonl(.gz)`` file.

    For a directory, ``split=None`` means ``train`` (or the only split present). The result is
    validated and cast to ``PAIRS_SCHEMA``; errors name the file (and the line, for JSONL).
    """
    file = _resolve(Path(path), split)
    if file.name.endswith(".parquet"):
        try:
            table = pq.read_table(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read Parquet: {exc}", path=file) from exc
        return validate_pairs_table(table, path=file)
    if is_jsonl(file):
        return _read_pairs_jsonl(file)
    raise DataError("unsupported file type (expected .parquet, .jsonl or .jsonl.gz)", path=file)


#: What JSONL rows are read as: the pairs columns plus an optional (nullable) ``domain``.
_JSONL_SCHEMA = PAIRS_SCHEMA.append(pa.field("domain", pa.string()))


def _drop_absent_domain(table: pa.Table) -> pa.Table:
    """No row gave a ``domain``: the file has none (rather than one null per row)."""
    col = table.column("domain")
    return table.drop_columns(["domain"]) if col.null_count == table.num_rows else table


def _read_pairs_jsonl(file: Path) -> pa.Table:
    seen: set[tuple[str, str]] = set()

    def check(row: dict[str, Any], line: int) -> None:
        """Per-row version of validate_pairs_table, used only to locate an error's line."""
        lang = check_lang(row["lang"], path=file, line=line)
        for name in ("pair_id", "query", "positive"):
            if not row[name].strip():
                raise DataError("empty text", path=file, field=name, value=row[name], line=line)
        key = (row["pair_id"], lang)
        if key in seen:
            raise DataError(
                f"duplicate row for pair_id {key[0]!r} in language {lang!r}: each (pair_id, lang) "
                "must be unique", path=file, field="pair_id", value=key[0], line=line,
            )
        seen.add(key)

    try:
        table = read_jsonl(file, _JSONL_SCHEMA, required=REQUIRED_COLUMNS, row_check=check, fast_only=True)
        return validate_pairs_table(_drop_absent_domain(_fill_negatives(table)), path=file)
    except DataError as first:
        # Re-read line by line to name the line; keep the columnar error if that finds nothing.
        table = read_jsonl(file, _JSONL_SCHEMA, required=REQUIRED_COLUMNS, row_check=check, slow_only=True)
        try:
            return validate_pairs_table(_drop_absent_domain(_fill_negatives(table)), path=file)
        except DataError:
            raise first from None


def _fill_negatives(table: pa.Table) -> pa.Table:
    """Rows without a ``negatives`` field have none (an empty list), not a null."""
    if "negatives" not in table.column_names:
        return table
    col = table.column("negatives")
    if not col.null_count:
        return table
    filled = pc.fill_null(col, pa.scalar([], pa.list_(pa.string())))
    return table.set_column(table.column_names.index("negatives"), "negatives", filled)


def iter_tsv(
    path: str | Path,
    n_fields: int | None = None,
    *,
    message: str = "expected {expected} tab-separated fields, got {n}",
    sep: str | None = "\t",
    header: tuple[str, ...] | None = None,
    skip_whitespace: bool = True,
) -> Iterator[tuple[int, list[str], str]]:
    """Yield ``(line_number, fields, line)`` for each non-blank line of a (gzipped) TSV file.

    The one line loop of the TSV readers (MIRACL topics / qrels, BEIR qrels, mMARCO diagnostics):
    a line with other than ``n_fields`` fields raises a DataError naming the file and line, with
    ``message`` (``{n}``: the count found, ``{expected}``: ``n_fields``) and the line as value.
    ``sep=None`` splits on runs of whitespace (TREC qrels). ``header``: line 1 must be exactly
    these fields (and is not yielded). Blank lines are skipped (``skip_whitespace=False``: only
    empty ones, so a whitespace-only line counts as a malformed one).
    """
    with open_text(path) as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not (line.strip() if skip_whitespace else line):
                continue
            parts = line.split(sep)
            if header is not None and lineno == 1:
                if tuple(p.strip() for p in parts) != header:
                    raise DataError(f"expected the header {'<TAB>'.join(header)}", path=path, line=1, value=line)
                continue
            if n_fields is not None and len(parts) != n_fields:
                raise DataError(message.format(n=len(parts), expected=n_fields), path=path, line=lineno,
                                value=line.strip() if sep is None else line)
            yield lineno, parts, line


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad JSON raises a DataError."""
    with open_text(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", path=path, line=lineno) from exc
            if not isinstance(obj, dict):
                raise DataError(
                    f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno
                )
            yield lineno, obj


def read_jsonl(
    path: str | Path,
    schema: pa.Schema,
    *,
    required: tuple[str, ...] = (),
    row_check: RowCheck | None = None,
    fast_only: bool = False,
    slow_only: bool = False,
) -> pa.Table:
    """Read JSON-lines into a table of ``schema`` (string and list<string> fields).

    Fields not in ``schema`` are ignored; absent optional fields become null. The fast columnar
    reader is tried first; on failure (or ``slow_only``) each line is parsed in Python so the
    DataError names the line. ``fast_only`` turns a columnar failure into a DataError without
    line number, for callers that run their own slow pass.
    """
    if not slow_only:
        try:
            opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
            table = pj.read_json(path, parse_options=opts)
            bad = [name for name in required if table.column(name).null_count]
            if not bad:
                return table
            failure = f"missing or null field {bad[0]!r}"
        except pa.ArrowInvalid as exc:
            if "Empty JSON file" in str(exc):
                return schema.empty_table()
            failure = str(exc)
        if fast_only:
            raise DataError(failure, path=path)
    return _read_jsonl_slow(path, schema, required, row_check)


def _read_jsonl_slow(
    path: str | Path, schema: pa.Schema, required: tuple[str, ...], row_check: RowCheck | None
) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in schema.names}
    for lineno, obj in iter_jsonl(path):
        for field in schema:
            value = obj.get(field.name)
            if value is None:
                if field.name in required:
                    raise DataError("missing or null field", path=path, field=field.name, line=lineno)
            elif pa.types.is_list(field.type):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise DataError(
                        "expected a list of strings", path=path, field=field.name, value=value, line=lineno
                    )
            elif not isinstance(value, str):
                raise DataError(
                    f"expected a string, got {type(value).__name__}",
                    path=path, field=field.name, value=value, line=lineno,
                )
            cols[field.name].append(value)
        if row_check is not None:
            row_check(obj, lineno)
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema})


def write_pairs(table: pa.Table, path: str | Path) -> Path:
    """Validate ``table`` and write it atomically as Parquet or JSONL (by the file suffix).

    A writer failure never leaves a partial file: the data go to a temporary sibling that only
    replaces ``path`` once complete.
    """
    path = Path(path)
    table = validate_pairs_table(table, path=path)
    if path.name.endswith(".parquet"):
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
    elif is_jsonl(path):
        with atomic_path(path) as tmp, open(tmp, "wb") as raw:
            # No file name or timestamp in the gzip header: same table, same bytes.
            gz = path.name.endswith(".gz")
            f = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
            with f:
                for batch in table.to_batches(max_chunksize=10_000):
                    for row in batch.to_pylist():
                        f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    else:
        raise DataError("unsupported output type (expected .parquet, .jsonl or .jsonl.gz)", path=path)
    return path


def open_pairs(path: str | Path, split: str | None = None) -> pa.Table:
    """The pairs table of ``path``/``split`` memory-mapped from its Arrow IPC cache (zero-copy).

    Same resolution and validation as :func:`read_pairs`, but the file is decoded and validated
    once (the cache ``{split}.arrow`` next to it is built on first use and rebuilt when the source
    changes) and every later open only maps it, so the workers of a node share one copy in the page
    cache. Meant for training workers; ``read_pairs`` stays the reader for everything else.
    """
    from hybrid_ray.data.arrow_cache import open_table

    return open_table(_resolve(Path(path), split))


# ------------------------------------------------------------------------- format registration
def filter_langs(table: pa.Table, langs: list[str] | None) -> pa.Table:
    """The rows of ``table`` in ``langs`` (all rows when None or empty)."""
    if not langs:
        return table
    return table.filter(pc.is_in(table.column("lang"), value_set=pa.array(list(langs), pa.string())))


def _is_pairs(path: Path) -> bool:
    if path.is_file():
        return path.name.endswith(".parquet") or is_jsonl(path)
    return path.is_dir() and bool(list_splits(path))


def _load_pairs(path: Path, split: str | None, langs: list[str] | None) -> pa.Table:
    return filter_langs(read_pairs(path, split), langs)


def _load_retrieval(path: Path, split: str | None, langs: list[str] | None) -> RetrievalSet:
    """Parallel pairs as a LAReQA-like evaluation set; a directory defaults to its ``test`` split."""
    from hybrid_ray.data.retrieval import RetrievalSet

    if path.is_dir() and split is None and "test" in list_splits(path):
        split = "test"  # evaluation defaults to the held-out split, not train
    table = filter_langs(read_pairs(path, split if path.is_dir() else None), langs)
    return RetrievalSet.from_pairs(table, name=f"{path.name}{'/' + split if split else ''}")


def _splits(path: Path) -> dict[str, str | None]:
    return {s: s for s in list_splits(path)} if path.is_dir() else {path.name: None}


register_format(DataFormat(
    name="pairs",
    aliases=("jsonl",),
    label="pairs",
    description="parallel pairs: a directory of {split}.parquet files or one .parquet / .jsonl(.gz) file",
    kind="pairs",
    detect=_is_pairs,
    load_pairs=_load_pairs,
    load_retrieval=_load_retrieval,
    convert=lambda path, opts: filter_langs(read_pairs(path), opts.langs),
    splits=_splits,
    priority=20,
))
