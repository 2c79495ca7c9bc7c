"""Corpus input of the index builder: a ``docid, lang, text`` table, checked, and its fingerprint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hybrid_ray.data.retrieval import CORPUS_SCHEMA
from hybrid_ray.errors import DataError


def read_corpus(path: str | Path, split: str | None = None) -> pa.Table:
    """A ``docid, lang, text`` table from a pairs data set or a corpus Parquet / JSONL file.

    Pairs (``pair_id`` column): the positives become the passages, ``docid = f"{pair_id}/{lang}"``
    (the same ids :meth:`RetrievalSet.from_pairs` uses, so serving results line up with
    evaluation qrels).
    """
    from hybrid_ray.data.pairs import is_jsonl, list_splits, read_jsonl, read_pairs

    path = Path(path)
    if not path.exists():
        raise DataError("no such file or directory", path=path)
    if path.is_dir():
        if not list_splits(path):
            raise DataError("directory holds no {split}.parquet files", path=path)
        return _pairs_to_corpus(read_pairs(path, split))
    if split is not None:
        raise DataError("a single file has no splits; pass a data-set directory", path=path, value=split)
    if path.name.endswith(".parquet"):
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read Parquet: {exc}", path=path) from exc
        if "pair_id" in names:
            return _pairs_to_corpus(read_pairs(path))
        table = pq.read_table(path)
    elif is_jsonl(path):
        from hybrid_ray.data.pairs import open_text

        with open_text(path) as f:
            first = f.readline()
        try:
            is_pairs = "pair_id" in json.loads(first) if first.strip() else False
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path=path, line=1) from exc
        if is_pairs:
            return _pairs_to_corpus(read_pairs(path))
        table = read_jsonl(path, CORPUS_SCHEMA, required=tuple(CORPUS_SCHEMA.names))
    else:
        raise DataError("unsupported corpus file (expected .parquet, .jsonl or .jsonl.gz)", path=path)
    return check_corpus(table, path)


def _pairs_to_corpus(pairs: pa.Table) -> pa.Table:
    ids = [f"{p}/{lang}" for p, lang in zip(pairs.column("pair_id").to_pylist(),
                                             pairs.column("lang").to_pylist(), strict=True)]
    return pa.table({"docid": ids, "lang": pairs.column("lang"), "text": pairs.column("positive")})


def check_corpus(table: pa.Table, path: Path) -> pa.Table:
    """The table cut to ``docid, lang, text`` (cast to strings); DataError on a missing column,
    a null or a duplicate docid, naming ``path``."""
    missing = [c for c in CORPUS_SCHEMA.names if c not in table.column_names]
    if missing:
        raise DataError(f"corpus lacks column(s) {missing}; found {table.column_names}", path=path,
                        field=missing[0])
    table = table.select(CORPUS_SCHEMA.names).cast(CORPUS_SCHEMA)
    for name in CORPUS_SCHEMA.names:
        if table.column(name).null_count:
            raise DataError("null value", path=path, field=name)
    docids = table.column("docid").to_pylist()
    if len(set(docids)) != len(docids):
        seen: set[str] = set()
        dup = next(d for d in docids if d in seen or seen.add(d))  # type: ignore[func-returns-value]
        raise DataError("duplicate docid", path=path, field="docid", value=dup)
    return table


# --------------------------------------------------------------------------- fingerprints
def table_fingerprint(table: pa.Table) -> str:
    """sha256 of the rows (docid, lang, text): a changed corpus must not reuse old shards."""
    h = hashlib.sha256()
    for name in CORPUS_SCHEMA.names:
        for chunk in table.column(name).chunks:
            for start in range(0, len(chunk), 65536):
                h.update("\x1e".join(chunk.slice(start, 65536).to_pylist()).encode("utf-8"))
                h.update(b"\x1d")
        h.update(b"\x1c")
    return h.hexdigest()
