from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from hybrid_ray.data import miracl as miracl_mod
from hybrid_ray.data.miracl import load_miracl, miracl_langs, miracl_splits, write_miracl
from hybrid_ray.errors import DataError


def _topics(root: Path, lang: str = "sw") -> Path:
    return root / f"miracl-v1.0-{lang}" / "topics" / f"topics.miracl-v1.0-{lang}-dev.tsv"


def _qrels(root: Path, lang: str = "sw") -> Path:
    return root / f"miracl-v1.0-{lang}" / "qrels" / f"qrels.miracl-v1.0-{lang}-dev.tsv"


def _docs(root: Path, lang: str = "sw", i: int = 0) -> Path:
    return root / "miracl-corpus" / f"miracl-corpus-v1.0-{lang}" / f"docs-{i}.jsonl.gz"


def test_load_one_and_several_languages(miracl_dir: Path) -> None:
    assert miracl_langs(miracl_dir) == ["fi", "sw"]
    assert miracl_splits(miracl_dir) == ["dev"]
    sw = load_miracl(miracl_dir, "sw").validate()
    assert sw.langs == ["sw"] and sw.queries.num_rows == 2 and sw.corpus.num_rows == 3
    assert sw.qrels["0/sw"] == {"10#0/sw": 1, "11#0/sw": 0}  # relevance-0 judgements kept
    texts = dict(
        zip(sw.corpus.column("docid").to_pylist(), sw.corpus.column("text").to_pylist(), strict=True)
    )
    assert texts["10#0/sw"] == "One sw one is a number"  # title + " " + text
    assert texts["11#0/sw"] == "sw two is a number"  # empty title -> text only
    both = load_miracl(miracl_dir)
    assert both.langs == ["fi", "sw"] and both.queries.num_rows == 4 and both.corpus.num_rows == 6
    judged = load_miracl(miracl_dir, ["fi"], judged_only=True)
    assert sorted(judged.corpus.column("docid").to_pylist()) == ["10#0/fi", "11#0/fi"]


def test_write_miracl_roundtrip(tmp_path: Path) -> None:
    paths = write_miracl(
        tmp_path,
        "de",
        "dev",
        queries={"a": "erste\tFrage", "b": "zweite Frage"},
        qrels={"a": {"d1": 1}, "b": {"d2": 1, "d1": 0}},
        corpus=[{"docid": "d1", "text": "Text eins"}, {"docid": "d2", "title": "T", "text": "zwei"}],
    )
    assert paths["corpus"].name == "docs-0.jsonl.gz"
    rs = load_miracl(tmp_path, "de").validate()
    q = dict(zip(rs.queries.column("qid").to_pylist(), rs.queries.column("text").to_pylist(), strict=True))
    assert q == {"a/de": "erste Frage", "b/de": "zweite Frage"}
    assert rs.qrels == {"a/de": {"d1/de": 1}, "b/de": {"d2/de": 1, "d1/de": 0}}
    first = paths["corpus"].read_bytes()
    write_miracl(
        tmp_path,
        "de",
        "dev",
        {"a": "x"},
        {"a": {"d1": 1}},
        [{"docid": "d1", "text": "Text eins"}, {"docid": "d2", "title": "T", "text": "zwei"}],
    )
    assert paths["corpus"].read_bytes() == first  # deterministic gzip (mtime 0)


def test_write_miracl_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def corpus():
        yield {"docid": "d1", "text": "ok"}
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        write_miracl(tmp_path, "de", "dev", {"a": "q"}, {"a": {"d1": 1}}, corpus())
    cdir = tmp_path / "miracl-corpus-v1.0-de"
    assert list(cdir.iterdir()) == []  # no partial docs-0.jsonl.gz, no temp file


def test_malformed_topics_line(miracl_dir: Path) -> None:
    _topics(miracl_dir).write_text("0\tfine\n1 no tab here\n")
    with pytest.raises(DataError, match="malformed topics line") as e:
        load_miracl(miracl_dir, "sw")
    assert f"{_topics(miracl_dir)}:2" in str(e.value)


def test_malformed_qrels_line(miracl_dir: Path) -> None:
    _qrels(miracl_dir).write_text("0\tQ0\t10#0\t1\n1\tQ0\t11#0\n")
    with pytest.raises(DataError, match="malformed qrels line") as e:
        load_miracl(miracl_dir, "sw")
    assert f"{_qrels(miracl_dir)}:2" in str(e.value)
    _qrels(miracl_dir).write_text("0\tQ0\t10#0\tyes\n")
    with pytest.raises(DataError, match="not an integer"):
        load_miracl(miracl_dir, "sw")


def test_topic_without_qrels(miracl_dir: Path) -> None:
    _qrels(miracl_dir).write_text("0\tQ0\t10#0\t1\n")
    with pytest.raises(DataError, match="topic has no qrels") as e:
        load_miracl(miracl_dir, "sw")
    assert str(_topics(miracl_dir)) in str(e.value) and "value '1'" in str(e.value)


def test_qrels_docid_absent_from_corpus(miracl_dir: Path) -> None:
    _qrels(miracl_dir).write_text("0\tQ0\t10#0\t1\n1\tQ0\t99#9\t1\n")
    with pytest.raises(DataError, match="absent from the corpus") as e:
        load_miracl(miracl_dir, "sw")
    assert f"{_qrels(miracl_dir)}:2" in str(e.value) and "'99#9'" in str(e.value)


def test_bad_corpus_json_names_file_and_line(miracl_dir: Path) -> None:
    with gzip.open(_docs(miracl_dir, i=1), "wt") as f:
        f.write('{"docid": "12#0", "title": "", "text": "ok"}\n{"docid": "13#0", "text": \n')
    with pytest.raises(DataError, match="invalid JSON") as e:
        load_miracl(miracl_dir, "sw")
    assert f"{_docs(miracl_dir, i=1)}:2" in str(e.value)


def test_corpus_missing_text_and_duplicates(miracl_dir: Path) -> None:
    with gzip.open(_docs(miracl_dir, i=1), "wt") as f:
        f.write('{"docid": "12#0", "title": "only a title"}\n')
    with pytest.raises(DataError, match="field 'text'"):
        load_miracl(miracl_dir, "sw")
    with gzip.open(_docs(miracl_dir, i=1), "wt") as f:
        f.write('{"docid": "10#0", "title": "", "text": "again"}\n')
    with pytest.raises(DataError, match="duplicate docid") as e:
        load_miracl(miracl_dir, "sw")
    assert "10#0" in str(e.value)


def test_unknown_language_and_missing_files(miracl_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown language code"):
        load_miracl(miracl_dir, "xx")
    with pytest.raises(DataError, match="no topics.miracl-v1.0-sw-test.tsv"):
        load_miracl(miracl_dir, "sw", split="test")
    odd = miracl_dir / "topics.miracl-v1.0-klingon-dev.tsv"
    odd.write_text("0\tq\n")
    with pytest.raises(DataError, match="klingon"):
        miracl_langs(miracl_dir)
    assert miracl_mod.topics_name("sw", "dev") == "topics.miracl-v1.0-sw-dev.tsv"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ('{"docid": "13#0", "title": "", "text": ""}', "text"),
        ('{"docid": "13#0", "title": "", "text": " \\t "}', "text"),
        # The text is the passage; a title alone does not make a document.
        ('{"docid": "13#0", "title": "A title", "text": "   "}', "text"),
        ('{"docid": "  ", "title": "", "text": "fine"}', "docid"),
    ],
)
def test_corpus_empty_text_names_file_line_and_docid(miracl_dir: Path, doc: str, field: str) -> None:
    path = _docs(miracl_dir, i=1)
    with gzip.open(path, "wt") as f:
        # A blank line first: the reported line is the file's line, not the row number.
        f.write('{"docid": "12#0", "title": "T", "text": "ok"}\n\n' + doc + "\n")
    with pytest.raises(DataError, match=f"empty or whitespace-only {field}") as e:
        load_miracl(miracl_dir, "sw")
    assert f"{path}:3" in str(e.value) and e.value.line == 3 and e.value.field == field
    if field == "text":
        assert "'13#0'" in str(e.value)
    # Other languages are unaffected.
    assert load_miracl(miracl_dir, "fi").corpus.num_rows == 3


@pytest.mark.parametrize("line", ["2\t   ", "\tquery without id", "2\t"])
def test_topics_empty_query_or_id(miracl_dir: Path, line: str) -> None:
    _topics(miracl_dir).write_text(f"0\tfine\n1\talso fine\n{line}\n")
    with pytest.raises(DataError, match="empty query id or text") as e:
        load_miracl(miracl_dir, "sw")
    assert f"{_topics(miracl_dir)}:3" in str(e.value) and e.value.line == 3


def test_topics_duplicate_qid(miracl_dir: Path) -> None:
    _topics(miracl_dir).write_text("0\tfine\n1\tx\n0\tagain\n")
    with pytest.raises(DataError, match="duplicate query id") as e:
        load_miracl(miracl_dir, "sw")
    assert f"{_topics(miracl_dir)}:3" in str(e.value) and "'0'" in str(e.value)
