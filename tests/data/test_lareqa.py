from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_ray.data.lareqa import load_lareqa
from hybrid_ray.errors import DataError

from .conftest import lareqa_doc


def test_load_multilingual_parallel_qrels(lareqa_dir: Path) -> None:
    rs = load_lareqa(lareqa_dir)
    rs.validate()
    assert rs.name == "xquad-r"
    assert rs.langs == ["ar", "de", "en"]
    assert rs.queries.num_rows == 9 and rs.corpus.num_rows == 18  # 3 q x 3 langs; 6 sents x 3 langs
    # q1 answers are in paragraph 0, sentence 1 -> one relevant candidate per language.
    assert rs.qrels["q1/en"] == {"ar/0/1": 1, "de/0/1": 1, "en/0/1": 1}
    assert rs.qrels["q1/de"] == rs.qrels["q1/en"]
    assert rs.qrels["q2/ar"] == {"ar/0/0": 1, "de/0/0": 1, "en/0/0": 1}
    assert rs.qrels["q3/en"] == {"ar/1/2": 1, "de/1/2": 1, "en/1/2": 1}
    texts = dict(
        zip(rs.corpus.column("docid").to_pylist(), rs.corpus.column("text").to_pylist(), strict=True)
    )
    assert texts["de/0/1"] == "de beta two."
    q = dict(zip(rs.queries.column("qid").to_pylist(), rs.queries.column("text").to_pylist(), strict=True))
    assert q["q3/ar"] == "ar question q3?"


def test_single_file_and_lang_subset(lareqa_dir: Path) -> None:
    one = load_lareqa(lareqa_dir / "de.json")
    assert one.langs == ["de"] and one.qrels["q1/de"] == {"de/0/1": 1}
    two = load_lareqa(lareqa_dir, langs=["en", "de"])
    assert two.langs == ["de", "en"]
    with pytest.raises(DataError, match="no file for language"):
        load_lareqa(lareqa_dir, langs=["zh"])


def test_sentences_derived_from_breaks_when_absent(tmp_path: Path) -> None:
    doc = lareqa_doc("en")
    for para in doc["data"][0]["paragraphs"]:
        del para["sentences"]
    (tmp_path / "en.json").write_text(json.dumps(doc))
    rs = load_lareqa(tmp_path)
    assert "en alpha one." in rs.corpus.column("text").to_pylist()


def test_unaligned_parallel_ids_name_both_files(lareqa_dir: Path) -> None:
    (lareqa_dir / "de.json").write_text(json.dumps(lareqa_doc("de", qids=("q1", "q3"))))
    with pytest.raises(DataError, match="unaligned parallel ids") as e:
        load_lareqa(lareqa_dir)
    msg = str(e.value)
    assert "'q2'" in msg and str(lareqa_dir / "de.json") in msg
    assert str(lareqa_dir / "ar.json") in msg or str(lareqa_dir / "en.json") in msg


def test_missing_key_names_file_and_json_path(lareqa_dir: Path) -> None:
    doc = lareqa_doc("en")
    del doc["data"][0]["paragraphs"][1]["qas"][0]["question"]
    (lareqa_dir / "en.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[1\]\.qas\[0\]\.question") as e:
        load_lareqa(lareqa_dir)
    assert str(lareqa_dir / "en.json") in str(e.value)


def test_unknown_language_file_name(lareqa_dir: Path) -> None:
    (lareqa_dir / "english.json").write_text(json.dumps(lareqa_doc("en")))
    with pytest.raises(DataError, match="unknown language code") as e:
        load_lareqa(lareqa_dir)
    assert "english" in str(e.value) and "file name" in str(e.value)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=10_000),
            "answer_start outside the context",
        ),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(question="  "), "empty question"),
        (lambda d: d["data"][0]["paragraphs"][0]["sentences"].pop(), "sentences but 3 sentence_breaks"),
        (
            lambda d: d["data"][0]["paragraphs"][1]["qas"].append(d["data"][0]["paragraphs"][0]["qas"][0]),
            "duplicate question id",
        ),
        (lambda d: d["data"][0]["paragraphs"][0].update(sentence_breaks="x"), "expected list"),
    ],
)
def test_bad_content(tmp_path: Path, mutate, needle: str) -> None:
    doc = lareqa_doc("en")
    mutate(doc)
    (tmp_path / "en.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=needle) as e:
        load_lareqa(tmp_path)
    assert str(tmp_path / "en.json") in str(e.value)


def test_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "en.json").write_text('{"data": [\n  {oops}\n]}')
    with pytest.raises(DataError, match="invalid JSON") as e:
        load_lareqa(tmp_path)
    assert f"{tmp_path / 'en.json'}:2" in str(e.value)
