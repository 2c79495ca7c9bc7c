"""Streaming conversion output: Parquet written in record batches, never the whole table in memory.

Why: ``data convert`` used to build the whole converted table (every language of mMARCO, a
MIRACL / BEIR corpus with all its passages) in memory and then write it; a multi-GB input then
needed several times its size in RAM. The converters now produce their output as an iterator of
tables (one mMARCO language at a time, one corpus batch at a time) and the writers here append
each one to a ``pyarrow.parquet.ParquetWriter`` and drop it, so memory is bounded by one chunk
(plus, for retrieval sets, the ids the cross-checks need), not by the data set.

Every file is written to a temporary sibling and renamed into place only when complete
(:func:`hybrid_ray.io.atomic_path`); a retrieval-set directory is written inside
:func:`hybrid_ray.io.atomic_dir` by the caller, so a failure half-way (a bad line near the end of
a corpus) leaves nothing that looks converted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hybrid_ray.data.schema import PAIRS_SCHEMA, validate_pairs_table
from hybrid_ray.errors import DataError
from hybrid_ray.io import atomic_path, write_json_atomic

#: Rows per Parquet row group written by the streaming writers.
ROW_GROUP_ROWS = 64 * 1024


def write_parquet_stream(
    tables: Iterable[pa.Table], path: str | Path, schema: pa.Schema, *, compression: str = "zstd"
) -> int:
    """Append every table of ``tables`` (cast to ``schema``) to one Parquet file, atomically.

    Returns the number of rows written. Each table is released after it is written, so memory
    holds one table (plus the writer's current row group) at a time.
    """
    path = Path(path)
    rows = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression=compression) as writer:
            for table in tables:
                table = table.select(schema.names).cast(schema)
                if table.num_rows:
                    writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                rows += table.num_rows
    return rows


def write_pairs_stream(tables: Iterable[pa.Table], path: str | Path) -> tuple[int, list[str]]:
    """Validate and write pairs chunks to one Parquet file; returns ``(rows, languages)``.

    Each chunk is validated like :func:`hybrid_ray.data.pairs.write_pairs` validates a whole
    table. The only cross-row check, duplicate ``(pair_id, lang)``, also runs across chunks: the
    ``pair_id`` column of every chunk is kept per language (ids only, no texts) and checked at
    the end, before the file is published.
    """
    path = Path(path)
    if not path.name.endswith(".parquet"):
        raise DataError("streaming output must be a .parquet file", path=path)
    ids: dict[str, list[pa.Array]] = {}

    def checked() -> Iterator[pa.Table]:
        for table in tables:
            table = validate_pairs_table(table, path=path)
            for lang in pc.unique(table.column("lang")).to_pylist():
                sel = pc.equal(table.column("lang"), lang)
                ids.setdefault(lang, []).extend(pc.filter(table.column("pair_id"), sel).chunks)
            yield table
        for lang, chunks in ids.items():
            if len(chunks) < 2:
                continue  # one chunk: validate_pairs_table checked it
            col = pa.chunked_array(chunks, pa.string())
            if pc.count_distinct(col).as_py() != len(col):
                counts = pc.value_counts(col)
                dup = next(v["values"].as_py() for v in counts if v["counts"].as_py() > 1)
                raise DataError("duplicate (pair_id, lang) across chunks of a streamed pairs table", path=path,
                                field="pair_id", value=f"{dup}\x1f{lang}")

    rows = write_parquet_stream(checked(), path, PAIRS_SCHEMA)
    return rows, sorted(ids)


@dataclass
class StreamedRetrieval:
    """A retrieval set whose corpus arrives as an iterator of ``docid, lang, text`` tables.

    ``queries`` is small and complete; ``corpus`` is consumed once (by :func:`write_retrieval_stream`
    or :meth:`to_retrieval_set`); ``qrels()`` gives the judgements and must be called only after the
    corpus is consumed, because checks and filters that need every docid (a judged document
    missing from the corpus, a language filter) run at the end of the corpus iterator.
    """

    name: str
    queries: pa.Table
    corpus: Iterator[pa.Table]
    qrels: Callable[[], dict[str, dict[str, int]]]

    def to_retrieval_set(self):  # -> RetrievalSet (import kept lazy: retrieval imports this package)
        """Everything in memory (what ``eval`` loads; conversion streams instead)."""
        from hybrid_ray.data.retrieval import CORPUS_SCHEMA, RetrievalSet

        parts = [t.select(CORPUS_SCHEMA.names).cast(CORPUS_SCHEMA) for t in self.corpus]
        corpus = pa.concat_tables(parts) if parts else CORPUS_SCHEMA.empty_table()
        return RetrievalSet(name=self.name, queries=self.queries, corpus=corpus, qrels=self.qrels())


def write_retrieval_stream(path: str | Path, rs: StreamedRetrieval) -> dict[str, int]:
    """Write ``rs`` as a retrieval-set directory (the layout of ``RetrievalSet.save``), corpus streamed.

    Same files and schemas as :meth:`hybrid_ray.data.retrieval.RetrievalSet.save`; returns the
    row counts. Call it inside :func:`hybrid_ray.io.atomic_dir`: an error raised by the corpus
    iterator then leaves no directory behind.
    """
    from hybrid_ray.data.retrieval import CORPUS_SCHEMA, QUERIES_SCHEMA, qrels_to_table

    path = Path(path)
    queries = rs.queries.select(QUERIES_SCHEMA.names).cast(QUERIES_SCHEMA)
    n_corpus = write_parquet_stream(rs.corpus, path / "corpus.parquet", CORPUS_SCHEMA)
    qrels = rs.qrels()
    with atomic_path(path / "queries.parquet") as tmp:
        pq.write_table(queries, tmp, compression="zstd")
    with atomic_path(path / "qrels.parquet") as tmp:
        pq.write_table(qrels_to_table(qrels), tmp, compression="zstd")
    write_json_atomic(path / "retrieval.json", {"format": "retrieval", "name": rs.name})
    return {"queries": queries.num_rows, "corpus": n_corpus, "qrels": sum(len(r) for r in qrels.values())}


__all__ = ["ROW_GROUP_ROWS", "StreamedRetrieval", "write_pairs_stream", "write_parquet_stream",
           "write_retrieval_stream"]
