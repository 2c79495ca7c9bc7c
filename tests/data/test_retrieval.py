"""RetrievalSet: from_pairs, validate(), and the save/load directory format with its errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybrid_ray.data.retrieval import RETRIEVAL_FILES, RetrievalSet
from hybrid_ray.data.schema import PAIRS_SCHEMA
from hybrid_ray.errors import DataError

from .conftest import pair_rows


def _set() -> RetrievalSet:
    return RetrievalSet.from_pairs(pa.Table.from_pylist(pair_rows(), schema=PAIRS_SCHEMA), name="toy")


def _with(rs: RetrievalSet, **changes) -> RetrievalSet:
    fields = {"name": rs.name, "queries": rs.queries, "corpus": rs.corpus, "qrels": rs.qrels} | changes
    return RetrievalSet(**fields)


def test_from_pairs_is_parallel_and_valid() -> None:
    rs = _set().validate()
    assert rs.langs == ["de", "en"] and rs.queries.num_rows == 5 and rs.corpus.num_rows == 5
    # p0 exists in en and de: each of its queries is relevant to both positives; p2 is en only.
    assert rs.qrels["p0/en"] == rs.qrels["p0/de"] == {"p0/en": 1, "p0/de": 1}
    assert rs.qrels["p2/en"] == {"p2/en": 1}


def test_validate_rejects_query_without_qrels() -> None:
    rs = _set()
    qrels = dict(rs.qrels)
    del qrels["p1/de"]
    with pytest.raises(DataError, match="no relevance judgements") as e:
        _with(rs, qrels=qrels).validate()
    assert e.value.value == "p1/de" and e.value.field == "qid"
    # An empty judgement dict is no better than none.
    with pytest.raises(DataError, match="no relevance judgements"):
        _with(rs, qrels=qrels | {"p1/de": {}}).validate()
    # Relevance-0 judgements count (MIRACL has them; nDCG needs them).
    _with(rs, qrels=qrels | {"p1/de": {"p0/en": 0}}).validate()


def test_validate_rejects_unknown_docid_and_duplicate_ids() -> None:
    rs = _set()
    with pytest.raises(DataError, match="missing from the corpus") as e:
        _with(rs, qrels=rs.qrels | {"p2/en": {"p9/xx": 1}}).validate()
    assert e.value.value == "p9/xx" and "'p2/en'" in str(e.value)
    dup_q = pa.concat_tables([rs.queries, rs.queries.slice(0, 1)])
    with pytest.raises(DataError, match="duplicate qid") as e:
        _with(rs, queries=dup_q).validate()
    assert e.value.value == rs.queries.column("qid")[0].as_py()
    dup_c = pa.concat_tables([rs.corpus, rs.corpus.slice(2, 1)])
    with pytest.raises(DataError, match="duplicate docid"):
        _with(rs, corpus=dup_c).validate()


def test_save_load_roundtrip(tmp_path: Path) -> None:
    rs = _set()
    out = rs.save(tmp_path / "toy")
    assert sorted(p.name for p in out.iterdir()) == sorted([*RETRIEVAL_FILES, "retrieval.json"])
    back = RetrievalSet.load(out)
    assert back.name == "toy" and back.qrels == rs.qrels
    assert back.queries.equals(rs.queries) and back.corpus.equals(rs.corpus)
    assert RetrievalSet.load(out, name="other").name == "other"


def test_load_rejects_query_without_qrels_naming_file_and_qid(tmp_path: Path) -> None:
    rs = _set()
    out = rs.save(tmp_path / "toy")
    qrels = pq.read_table(out / "qrels.parquet")
    keep = [q != "p1/de" for q in qrels.column("qid").to_pylist()]
    pq.write_table(qrels.filter(pa.array(keep)), out / "qrels.parquet")
    with pytest.raises(DataError, match="no relevance judgements") as e:
        RetrievalSet.load(out)
    msg = str(e.value)
    assert str(out / "qrels.parquet") in msg and str(out / "queries.parquet") in msg
    assert "'p1/de'" in msg and e.value.field == "qid"


def test_load_rejects_qrels_naming_a_missing_document(tmp_path: Path) -> None:
    out = _set().save(tmp_path / "toy")
    corpus = pq.read_table(out / "corpus.parquet")
    pq.write_table(corpus.filter(pa.array([d != "p0/de" for d in corpus.column("docid").to_pylist()])),
                   out / "corpus.parquet")
    with pytest.raises(DataError, match="missing from the corpus") as e:
        RetrievalSet.load(out)
    assert str(out / "qrels.parquet") in str(e.value) and e.value.value == "p0/de"


@pytest.mark.parametrize("fname", RETRIEVAL_FILES)
def test_load_missing_file(tmp_path: Path, fname: str) -> None:
    out = _set().save(tmp_path / "toy")
    (out / fname).unlink()
    with pytest.raises(DataError, match="missing file") as e:
        RetrievalSet.load(out)
    assert str(out / fname) in str(e.value)


@pytest.mark.parametrize(
    ("fname", "column"),
    [("queries.parquet", "qid"), ("queries.parquet", "text"), ("corpus.parquet", "lang"),
     ("qrels.parquet", "relevance"), ("qrels.parquet", "docid")],
)
def test_load_missing_column(tmp_path: Path, fname: str, column: str) -> None:
    out = _set().save(tmp_path / "toy")
    pq.write_table(pq.read_table(out / fname).drop([column]), out / fname)
    with pytest.raises(DataError, match="missing column") as e:
        RetrievalSet.load(out)
    assert str(out / fname) in str(e.value) and e.value.field == column


def test_load_null_and_unreadable(tmp_path: Path) -> None:
    out = _set().save(tmp_path / "toy")
    qrels = pq.read_table(out / "qrels.parquet")
    rel = pa.array([None, *qrels.column("relevance").to_pylist()[1:]], pa.int32())
    pq.write_table(qrels.set_column(2, "relevance", rel), out / "qrels.parquet")
    with pytest.raises(DataError, match="null relevance") as e:
        RetrievalSet.load(out)
    assert str(out / "qrels.parquet") in str(e.value)
    (out / "qrels.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read Parquet"):
        RetrievalSet.load(out)
