"""Streaming conversion (hybrid_ray.data.streaming): same output as the in-memory path, bounded chunks.

``data convert`` now writes mMARCO one language at a time and MIRACL / BEIR corpora batch by
batch. The old path (load everything, then ``write_pairs`` / ``RetrievalSet.save``) is still what
``load_*`` returns, so each test converts the same fixture both ways and compares the files read
back; batch sizes are shrunk so that the streamed corpora really arrive in several pieces.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybrid_ray.data import beir, miracl
from hybrid_ray.data.mmarco import iter_mmarco, load_mmarco
from hybrid_ray.data.pairs import iter_tsv, write_pairs
from hybrid_ray.data.streaming import write_pairs_stream
from hybrid_ray.driver.data import main as data_main
from hybrid_ray.errors import DataError
from tests.data.conftest import write_jsonl, write_miracl_lang


def _read_dir(path: Path) -> dict[str, pa.Table]:
    return {f: pq.read_table(path / f) for f in ("queries.parquet", "corpus.parquet", "qrels.parquet")}


def _same_dirs(a: Path, b: Path) -> None:
    ta, tb = _read_dir(a), _read_dir(b)
    for f in ta:
        assert ta[f].schema.equals(tb[f].schema), f
        assert ta[f].equals(tb[f]), f
    assert json.loads((a / "retrieval.json").read_text()) == json.loads((b / "retrieval.json").read_text())


# --------------------------------------------------------------------------- mMARCO
def test_mmarco_streamed_equals_in_memory(mmarco_dir, tmp_path, capsys):
    old = tmp_path / "old.parquet"
    write_pairs(load_mmarco(mmarco_dir, negatives_per_pair=2), old)
    new = tmp_path / "new.parquet"
    assert data_main(["convert", "--format", "mmarco", "--input", str(mmarco_dir), "--out", str(new),
                      "--negatives-per-pair", "2"]) == 0
    assert "languages de, en" in capsys.readouterr().out
    assert pq.read_table(new).equals(pq.read_table(old))
    chunks = list(iter_mmarco(mmarco_dir))
    assert [sorted(set(c.column("lang").to_pylist())) for c in chunks] == [["de"], ["en"]]  # one per language


def test_mmarco_chunks_of_pairs_give_the_same_rows(mmarco_dir, tmp_path, monkeypatch):
    from hybrid_ray.data import mmarco

    whole = load_mmarco(mmarco_dir, negatives_per_pair=2)
    monkeypatch.setattr(mmarco, "PAIRS_CHUNK", 1)  # 3 pairs -> 3 tables per language
    chunks = list(iter_mmarco(mmarco_dir, negatives_per_pair=2))
    assert len(chunks) == 2 * 3 and all(c.num_rows == 1 for c in chunks)
    assert pa.concat_tables(chunks).equals(whole)
    out = tmp_path / "chunked.parquet"
    assert write_pairs_stream(iter(chunks), out) == (6, ["de", "en"])
    assert pq.read_table(out).equals(whole)


def test_mmarco_malformed_line_names_file_and_line(mmarco_dir, tmp_path):
    coll = mmarco_dir / "collections" / "german_collection.tsv"
    coll.write_text(coll.read_text() + "104\tone\ttoo many\n", encoding="utf-8")
    out = tmp_path / "x.parquet"
    with pytest.raises(DataError, match=r"german_collection.tsv:5\b.*malformed line: expected 2"):
        data_main(["convert", "--format", "mmarco", "--input", str(mmarco_dir), "--out", str(out)])
    assert not out.exists() and not list(tmp_path.glob(".x.parquet*"))  # atomic: no partial output


def test_pairs_stream_refuses_a_pair_repeated_across_chunks(mmarco_dir, tmp_path):
    en = next(c for c in iter_mmarco(mmarco_dir) if c.column("lang")[0].as_py() == "en")
    with pytest.raises(DataError, match="duplicate .pair_id, lang. across chunks"):
        write_pairs_stream(iter([en, en.slice(1, 1)]), tmp_path / "dup.parquet")
    assert not (tmp_path / "dup.parquet").exists()


# --------------------------------------------------------------------------- MIRACL
def _big_miracl(root: Path) -> Path:
    for lang in ("sw", "fi"):
        write_miracl_lang(root, lang)
    cdir = root / "miracl-corpus" / "miracl-corpus-v1.0-fi"
    write_jsonl(cdir / "docs-2.jsonl.gz", [{"docid": f"{i}#0", "title": f"T{i}" if i % 2 else "",
                                            "text": f"fi passage number {i} " + "x" * (i % 40)}
                                           for i in range(100, 400)])
    return root


@pytest.mark.parametrize("judged_only", [False, True])
def test_miracl_streamed_equals_in_memory(tmp_path, monkeypatch, judged_only):
    root = _big_miracl(tmp_path / "miracl")
    monkeypatch.setattr(miracl, "CORPUS_BLOCK_BYTES", 2048)  # several tables per file
    assert len(list(miracl.iter_corpus_file(root / "miracl-corpus" / "miracl-corpus-v1.0-fi" / "docs-2.jsonl.gz"))) > 3
    old = tmp_path / "old"
    miracl.load_miracl(root, judged_only=judged_only).save(old)
    new = tmp_path / "new"
    flags = ["--judged-only"] if judged_only else []
    assert data_main(["convert", "--format", "miracl", "--input", str(root), "--out", str(new), *flags]) == 0
    _same_dirs(old, new)
    if not judged_only:
        assert pq.read_table(new / "corpus.parquet").num_rows == 2 * 3 + 300


def test_miracl_bad_corpus_rows_name_file_and_line_in_a_later_block(tmp_path, monkeypatch):
    root = _big_miracl(tmp_path / "miracl")
    monkeypatch.setattr(miracl, "CORPUS_BLOCK_BYTES", 2048)
    docs = root / "miracl-corpus" / "miracl-corpus-v1.0-fi" / "docs-2.jsonl.gz"
    rows = [{"docid": f"x{i}#0", "title": "", "text": f"fi passage {i} " + "y" * 30} for i in range(200)]
    rows[150]["text"] = "   "
    write_jsonl(docs, rows)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"docs-2.jsonl.gz:151\b.*empty or whitespace-only text \(docid 'x150#0'\)"):
        data_main(["convert", "--format", "miracl", "--input", str(root), "--out", str(out)])
    assert not out.exists()
    rows[150]["text"] = "fine"
    write_jsonl(docs, rows, raw_lines={181: "{not json"})
    with pytest.raises(DataError, match=r"docs-2.jsonl.gz:181\b.*invalid JSON"):
        data_main(["convert", "--format", "miracl", "--input", str(root), "--out", str(out)])
    rows[170]["docid"] = "x3#0"
    write_jsonl(docs, rows)
    with pytest.raises(DataError, match="'x3#0'.*duplicate docid in the corpus"):
        data_main(["convert", "--format", "miracl", "--input", str(root), "--out", str(out)])
    assert not out.exists()


# --------------------------------------------------------------------------- BEIR
def _beir_set(root: Path, lang: str, n: int = 120, qrels_extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    corpus = [{"_id": f"d{i}", "title": f"T{i}" if i % 3 else "", "text": f"{lang} passage {i}"} for i in range(n)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(o) + "\n" for o in corpus))
    queries = [{"_id": f"q{i}", "text": f"{lang} question {i}"} for i in range(5)]
    (root / "queries.jsonl").write_text("".join(json.dumps(o) + "\n" for o in queries))
    (root / "qrels").mkdir(exist_ok=True)
    lines = "".join(f"q{i}\td{7 * i}\t1\n" for i in range(5)) + qrels_extra
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + lines)
    return root


@pytest.mark.parametrize("langs", [None, ["fr"]])
def test_beir_streamed_equals_in_memory(tmp_path, monkeypatch, langs):
    multi = tmp_path / "multi"
    _beir_set(multi / "de", "de")
    _beir_set(multi / "fr", "fr")
    monkeypatch.setattr(beir, "BATCH_ROWS", 16)
    assert len(list(beir.stream_beir(multi).corpus)) == 2 * 8  # 120 rows per set in tables of <= 16
    old = tmp_path / "old"
    beir.load_beir(multi, langs=langs).save(old)
    new = tmp_path / "new"
    flags = ["--langs", ",".join(langs)] if langs else []
    assert data_main(["convert", "--format", "beir", "--input", str(multi), "--out", str(new), *flags]) == 0
    _same_dirs(old, new)


def test_beir_errors_name_file_and_line(tmp_path):
    root = _beir_set(tmp_path / "one", "en", qrels_extra="q1\td999\t1\n")
    (root / "meta.json").write_text(json.dumps({"lang": "en"}))
    with pytest.raises(DataError, match=r"test.tsv:7\b.*'d999'.*corpus-id not in corpus"):
        data_main(["convert", "--format", "beir", "--input", str(root), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    body = (root / "corpus.jsonl").read_text().splitlines()
    body[40] = json.dumps({"_id": "d3", "text": "again"})
    (root / "corpus.jsonl").write_text("\n".join(body) + "\n")
    with pytest.raises(DataError, match=r"corpus.jsonl:41\b.*duplicate '_id'"):
        list(beir.stream_beir(root).corpus)


# --------------------------------------------------------------------------- iter_tsv
def test_iter_tsv_fields_header_blank_lines_and_errors(tmp_path):
    f = tmp_path / "a.tsv"
    f.write_text("h1\th2\n\na\tb\n  \nc\td\n")
    assert [(n, p) for n, p, _ in iter_tsv(f, 2, header=("h1", "h2"))] == [(3, ["a", "b"]), (5, ["c", "d"])]
    with pytest.raises(DataError, match=r"a.tsv:1\b.*expected the header x<TAB>y"):
        list(iter_tsv(f, 2, header=("x", "y")))
    with pytest.raises(DataError, match=r"a.tsv:4\b.*expected 2 tab-separated fields, got 1"):
        list(iter_tsv(f, 2, skip_whitespace=False))
    g = tmp_path / "q.txt"
    g.write_text("1 Q0 d1 1\n2 Q0 d2\n")
    with pytest.raises(DataError, match=r"q.txt:2\b.*'2 Q0 d2'.*bad: 3 'qid Q0 docid rel'"):
        list(iter_tsv(g, 4, sep=None, message="bad: {n} 'qid Q0 docid rel'"))
