"""BEIR format on written fixtures: good sets load and evaluate; a bad row names file and line."""

from __future__ import annotations

import json

import pytest

from hybrid_ray.data.beir import load_beir
from hybrid_ray.data.formats import detect_format, load_retrieval_set
from hybrid_ray.errors import DataError


def _write_set(root, lang=None, *, corpus=None, queries=None, qrels=None, split="test", meta=None):
    root.mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else [
        {"_id": "d1", "title": "Title", "text": "passage one"}, {"_id": "d2", "title": "", "text": "passage two"},
        {"_id": "d3", "text": "passage three"}]
    queries = queries if queries is not None else [
        {"_id": "q1", "text": "question one"}, {"_id": "q2", "text": "question two"},
        {"_id": "q9", "text": "a train query"}]
    qrels = qrels if qrels is not None else ["q1\td1\t1", "q1\td3\t0", "q2\td2\t2"]
    rows = lambda objs: "".join(json.dumps({**o, **({"lang": lang} if lang else {})}) + "\n" for o in objs)  # noqa: E731
    (root / "corpus.jsonl").write_text(rows(corpus) if isinstance(corpus, list) else corpus)
    (root / "queries.jsonl").write_text(rows(queries) if isinstance(queries, list) else queries)
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_single_set_with_lang_field(tmp_path):
    root = _write_set(tmp_path / "scifact", lang="en")
    assert detect_format(root) == "beir"
    rs = load_retrieval_set(root)
    assert rs.queries.column("qid").to_pylist() == ["q1", "q2"]  # only the split's judged queries
    assert rs.corpus.column("text").to_pylist() == ["Title passage one", "passage two", "passage three"]
    assert rs.qrels == {"q1": {"d1": 1, "d3": 0}, "q2": {"d2": 2}}
    assert rs.langs == ["en"] and rs.name == "beir-scifact-test"


def test_language_from_meta_option_and_directories(tmp_path):
    assert load_beir(_write_set(tmp_path / "m", meta={"lang": "de"})).langs == ["de"]
    assert load_beir(_write_set(tmp_path / "o"), langs=["fr"]).langs == ["fr"]
    with pytest.raises(DataError, match=r"corpus.jsonl:1.*no language"):
        load_beir(tmp_path / "o")
    multi = tmp_path / "multi"
    _write_set(multi / "de")
    _write_set(multi / "fr")
    assert detect_format(multi) == "beir"
    rs = load_beir(multi)
    assert rs.langs == ["de", "fr"] and "q1/de" in rs.qrels and rs.qrels["q1/fr"] == {"d1/fr": 1, "d3/fr": 0}
    assert load_beir(multi, langs=["fr"]).langs == ["fr"]


def test_split_choice(tmp_path):
    root = _write_set(tmp_path / "s", lang="en", split="dev")
    assert load_beir(root).name.endswith("-dev")  # the only split present
    with pytest.raises(DataError, match="no qrels for split 'test'"):
        load_beir(root, split="test")


@pytest.mark.parametrize(("kwargs", "where", "what"), [
    ({"corpus": '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n'}, "corpus.jsonl:2", "invalid JSON"),
    ({"corpus": [{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]}, "corpus.jsonl:2", "duplicate"),
    ({"queries": [{"_id": "q1", "text": "a"}, {"text": "no id"}]}, "queries.jsonl:2", "_id"),
    ({"queries": [{"_id": "q1"}]}, "queries.jsonl:1", "text"),
    ({"qrels": ["q1\td1\t1", "q2\td2"]}, "test.tsv:3", "3 tab-separated"),
    ({"qrels": ["q1\td1\tyes"]}, "test.tsv:2", "not an integer"),
    ({"qrels": ["q1\td1\t1", "q2\tnope\t1"]}, "test.tsv:3", "corpus-id not in corpus"),
    ({"qrels": ["qx\td1\t1"]}, "test.tsv:2", "query-id not in queries"),
])
def test_bad_rows_name_file_and_line(tmp_path, kwargs, where, what):
    root = _write_set(tmp_path / "bad", meta={"lang": "en"}, **kwargs)
    with pytest.raises(DataError, match=what) as err:
        load_beir(root)
    assert where in str(err.value)


def test_bad_header_and_language(tmp_path):
    root = _write_set(tmp_path / "h", lang="en")
    (root / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(DataError, match=r"test.tsv:1.*header"):
        load_beir(root)
    root = _write_set(tmp_path / "l", lang="xx-bogus")
    with pytest.raises(DataError, match=r"corpus.jsonl:1.*lang"):
        load_beir(root)


def test_convert_and_eval_drivers_read_beir(tmp_path, capsys):
    from hybrid_ray.data.retrieval import RetrievalSet
    from hybrid_ray.driver.data import main as data_main
    from hybrid_ray.driver.evaluate import main as eval_main
    from hybrid_ray.testing import tiny_encoder

    root = _write_set(tmp_path / "nf", lang="en")
    out = tmp_path / "converted"
    assert data_main(["convert", "--format", "beir", "--input", str(root), "--out", str(out)]) == 0
    rs = RetrievalSet.load(out)
    assert rs.qrels == {"q1": {"d1": 1, "d3": 0}, "q2": {"d2": 2}}
    tiny_encoder(tmp_path / "model")
    assert eval_main(["--model", str(tmp_path / "model"), "--data", str(root), "--format", "beir",
                      "--out", str(tmp_path / "eval"), "--no-cache"]) == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["setting"] == "miracl" and res["per_lang"]["en"]["n_queries"] == 2
    assert (tmp_path / "eval" / "runs" / "miracl.trec").is_file()
