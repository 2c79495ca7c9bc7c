"""A retrieval evaluation set: queries, a candidate corpus and relevance judgements.

One representation serves every evaluation format: LAReQA (XQuAD-R / MLQA-R), MIRACL and our own
parallel pairs. Languages are kept per query and per candidate so that evaluation can form the
mono-, cross- and multilingual settings by filtering, and the language-bias metric can find each
query's parallel relevant candidates in the pooled multilingual corpus.

Queries may carry a ``domain`` (genre) column, kept as ``RetrievalSet.domains`` (qid -> domain):
pairs with a ``domain`` column give it to their queries, and per-query results and reports are then
broken down by domain (:mod:`hybrid_ray.domains`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hybrid_ray.data.formats import DataFormat, register_format
from hybrid_ray.data.schema import first_blank_row, first_null_row, validate_pairs_table
from hybrid_ray.errors import DataError

QUERIES_SCHEMA = pa.schema([("qid", pa.string()), ("lang", pa.string()), ("text", pa.string())])
CORPUS_SCHEMA = pa.schema([("docid", pa.string()), ("lang", pa.string()), ("text", pa.string())])
QRELS_SCHEMA = pa.schema([("qid", pa.string()), ("docid", pa.string()), ("relevance", pa.int32())])
RETRIEVAL_FILES = ("queries.parquet", "corpus.parquet", "qrels.parquet")


@dataclass
class RetrievalSet:
    """Queries and candidates (Arrow tables) plus qrels ``{qid: {docid: relevance}}``."""

    name: str
    queries: pa.Table
    corpus: pa.Table
    qrels: dict[str, dict[str, int]]
    domains: dict[str, str] | None = None  # qid -> domain, when the source has a 'domain' column

    def __post_init__(self) -> None:
        if self.domains is None and "domain" in self.queries.column_names:
            col = self.queries.column("domain")
            if col.null_count < self.queries.num_rows:
                self.domains = {q: d for q, d in zip(self.queries.column("qid").to_pylist(), col.to_pylist(),
                                                     strict=True) if d is not None}
        self.queries = self.queries.select(QUERIES_SCHEMA.names).cast(QUERIES_SCHEMA)
        self.corpus = self.corpus.select(CORPUS_SCHEMA.names).cast(CORPUS_SCHEMA)

    @property
    def langs(self) -> list[str]:
        return sorted(set(pc.unique(self.queries.column("lang")).to_pylist()))

    @property
    def corpus_langs(self) -> list[str]:
        return sorted(set(pc.unique(self.corpus.column("lang")).to_pylist()))

    def filter_langs(self, langs: list[str]) -> RetrievalSet:
        """The queries and candidates in ``langs``, with the judgements between them."""
        keep = pa.array(langs, pa.string())
        queries = self.queries.filter(pc.is_in(self.queries.column("lang"), value_set=keep))
        corpus = self.corpus.filter(pc.is_in(self.corpus.column("lang"), value_set=keep))
        docids = set(corpus.column("docid").to_pylist())
        qrels = {q: {d: r for d, r in self.qrels.get(q, {}).items() if d in docids}
                 for q in queries.column("qid").to_pylist()}
        return RetrievalSet(self.name, queries, corpus, qrels, self.domains)

    def validate(self, source: str | Path | None = None) -> RetrievalSet:
        """Check the set is evaluable; raise a DataError naming the offending id otherwise.

        Every query has at least one judgement, every judged docid exists in the corpus, and
        query / document ids are unique and non-empty. ``source`` is the directory the set was
        loaded from (:meth:`load`): errors then name the Parquet file at fault. Vectorised, so
        a MIRACL-sized corpus checks in well under a second.
        """
        src = Path(source) if source is not None else None

        def where(fname: str) -> Path | None:
            return src / fname if src is not None else None

        for table, fname, key in ((self.queries, "queries.parquet", "qid"), (self.corpus, "corpus.parquet", "docid")):
            col = table.column(key)
            row = first_null_row(col)
            if row is not None:
                raise DataError(f"null {key} in row {row}", path=where(fname), field=key)
            row = first_blank_row(col)
            if row is not None:
                raise DataError(f"empty {key} in row {row}", path=where(fname), field=key)
            if pc.count_distinct(col).as_py() != table.num_rows:
                counts = pc.value_counts(col)
                dup = next(v["values"].as_py() for v in counts if v["counts"].as_py() > 1)
                raise DataError(f"duplicate {key}", path=where(fname), field=key, value=dup)

        judged_qids = pa.array([q for q, rel in self.qrels.items() if rel], pa.string())
        has_qrels = pc.is_in(self.queries.column("qid"), value_set=judged_qids)
        if not pc.all(has_qrels).as_py():
            qid = self.queries.column("qid")[pc.index(has_qrels, False).as_py()].as_py()
            msg = "query has no relevance judgements (qrels)"
            if src is not None:
                msg = f"query of {src / 'queries.parquet'} has no relevance judgements in this qrels file"
            raise DataError(msg, path=where("qrels.parquet"), field="qid", value=qid)

        judged = sorted({d for rel in self.qrels.values() for d in rel})
        present = pc.is_in(pa.array(judged, pa.string()), value_set=self.corpus.column("docid"))
        if judged and not pc.all(present).as_py():
            docid = judged[pc.index(present, False).as_py()]
            qid = next(q for q, rel in self.qrels.items() if docid in rel)
            where_corpus = f" {src / 'corpus.parquet'}" if src is not None else ""
            raise DataError(
                f"qrels of query {qid!r} name a document missing from the corpus{where_corpus}",
                path=where("qrels.parquet"), field="docid", value=docid,
            )
        return self

    @classmethod
    def from_pairs(cls, table: pa.Table, name: str = "pairs") -> RetrievalSet:
        """LAReQA-like set from a parallel pairs table.

        Query ``(pair, lang)`` is relevant to the positive passage of the same pair in every
        language, so the multilingual pool holds one relevant candidate per language.
        """
        table = validate_pairs_table(table)
        pair_ids = table.column("pair_id").to_pylist()
        langs = table.column("lang").to_pylist()
        ids = [f"{p}/{lang}" for p, lang in zip(pair_ids, langs, strict=True)]
        by_pair: dict[str, dict[str, int]] = defaultdict(dict)
        for pid, i in zip(pair_ids, ids, strict=True):
            by_pair[pid][i] = 1
        qrels = {i: by_pair[pid] for pid, i in zip(pair_ids, ids, strict=True)}
        queries = pa.table({"qid": ids, "lang": langs, "text": table.column("query")})
        corpus = pa.table({"docid": ids, "lang": langs, "text": table.column("positive")})
        domains = None
        if "domain" in table.column_names:
            domains = dict(zip(ids, table.column("domain").to_pylist(), strict=True))
        return cls(name=name, queries=queries, corpus=corpus, qrels=qrels, domains=domains)

    def queries_table(self) -> pa.Table:
        """``queries`` plus the ``domain`` column when the set has domains (what :meth:`save` writes)."""
        if not self.domains:
            return self.queries
        doms = [self.domains.get(q) for q in self.queries.column("qid").to_pylist()]
        return self.queries.append_column("domain", pa.array(doms, pa.string()))

    def qrels_table(self) -> pa.Table:
        """The qrels as a flat ``(qid, docid, relevance)`` table (for Parquet / statistics)."""
        return qrels_to_table(self.qrels)

    def save(self, path: str | Path) -> Path:
        """Write ``queries/corpus/qrels.parquet`` into directory ``path`` (each file atomically)."""
        from hybrid_ray.io import atomic_path, write_json_atomic

        path = Path(path)
        for fname, table in zip(
            RETRIEVAL_FILES, (self.queries_table(), self.corpus, self.qrels_table()), strict=True
        ):
            with atomic_path(path / fname) as tmp:
                pq.write_table(table, tmp, compression="zstd")
        write_json_atomic(path / "retrieval.json", {"format": "retrieval", "name": self.name})
        return path

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> RetrievalSet:
        """Read a directory written by :meth:`save` and :meth:`validate` it.

        Raises DataError (naming the file) for a missing file or column, null qrels fields, and
        everything :meth:`validate` rejects, e.g. a query without qrels: evaluation would
        otherwise skip such a query silently and report a metric over fewer queries.
        """
        path = Path(path)
        tables = []
        for fname in RETRIEVAL_FILES:
            f = path / fname
            if not f.is_file():
                raise DataError("missing file of a retrieval set directory", path=f)
            try:
                tables.append(pq.read_table(f))
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"cannot read Parquet: {exc}", path=f) from exc
        queries, corpus, qrels_t = tables
        schemas = (QUERIES_SCHEMA, CORPUS_SCHEMA, QRELS_SCHEMA)
        for f, t, schema in zip(RETRIEVAL_FILES, tables, schemas, strict=True):
            missing = [c for c in schema.names if c not in t.column_names]
            if missing:
                raise DataError(f"missing column(s) {missing}", path=path / f, field=missing[0])
        for col in QRELS_SCHEMA.names:
            row = first_null_row(qrels_t.column(col))
            if row is not None:
                raise DataError(f"null {col} in row {row}", path=path / "qrels.parquet", field=col)
        qrels: dict[str, dict[str, int]] = defaultdict(dict)
        for q, d, r in zip(
            qrels_t.column("qid").to_pylist(),
            qrels_t.column("docid").to_pylist(),
            qrels_t.column("relevance").to_pylist(),
            strict=True,
        ):
            qrels[q][d] = int(r)
        if name is None:
            info = path / "retrieval.json"
            name = json.loads(info.read_text(encoding="utf-8")).get("name") if info.is_file() else None
        try:
            rs = cls(name=name or path.name, queries=queries, corpus=corpus, qrels=dict(qrels))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"columns do not match the retrieval-set schema: {exc}", path=path) from exc
        return rs.validate(source=path)


def qrels_to_table(qrels: dict[str, dict[str, int]]) -> pa.Table:
    """``{qid: {docid: relevance}}`` as a flat ``(qid, docid, relevance)`` table of QRELS_SCHEMA."""
    rows = [(q, d, r) for q, rel in qrels.items() for d, r in rel.items()]
    qids, docids, rels = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table({"qid": list(qids), "docid": list(docids), "relevance": list(rels)}, schema=QRELS_SCHEMA)


def _is_retrieval_dir(path: Path) -> bool:
    # retrieval.json alone is enough: a half-copied set then fails in load() naming the missing file.
    return path.is_dir() and (
        (path / "retrieval.json").exists() or all((path / f).exists() for f in RETRIEVAL_FILES)
    )


def _load_retrieval(path: Path, split: str | None, langs: list[str] | None) -> RetrievalSet:
    rs = RetrievalSet.load(path)
    return rs.filter_langs(langs) if langs else rs


register_format(DataFormat(
    name="retrieval",
    label="retrieval set",
    description="queries/corpus/qrels.parquet directory written by `hybrid-ray data convert`",
    kind="retrieval",
    detect=_is_retrieval_dir,
    load_retrieval=_load_retrieval,
    priority=10,  # before pairs: a retrieval directory holds Parquet files too
))
