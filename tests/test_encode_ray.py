"""The shared encoding path (hybrid_ray.encode_ray) and evaluation through it: Ray vs in-process.

The Ray tests start one loopback-only 2-CPU cluster for the module and use the tiny random BERT
(``tiny_model_dir``): the embeddings of both backends must agree and so must every metric.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray import encode_ray
from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.encode_ray import EncodeOptions, choose_backend, collect_rows, write_rows_memmap
from hybrid_ray.errors import ConfigError, DataError
from hybrid_ray.evaluate import evaluate_retrieval

WORDS = ["the", "light", "day", "night", "water", "earth", "heaven", "man", "god", "cat", "dog", "house",
         "red", "blue", "green", "one", "two", "three", "hello", "world"]


def _retrieval_set(n_pairs: int = 24, langs: tuple[str, ...] = ("en", "de")) -> RetrievalSet:
    """A parallel LAReQA-style set with unique texts the tiny tokenizer knows (words + digits)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_pairs):
        words = rng.choice(WORDS, size=int(rng.integers(3, 9))).tolist()
        for li, lang in enumerate(langs):
            text = " ".join(words[li:] + words[:li])
            rows.append({"pair_id": f"p{i}", "lang": lang, "query": f"{lang} {text[: len(text) // 2]} {i}",
                         "positive": f"{text} {i}", "negatives": []})
    return RetrievalSet.from_pairs(pa.Table.from_pylist(rows), name="tiny")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from hybrid_ray.local import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


# --------------------------------------------------------------------------- no Ray needed
def test_auto_picks_local_below_the_threshold_and_ray_above():
    assert choose_backend("auto", 100, 100) == "local"
    assert choose_backend("auto", 101, 100) == "ray"
    assert choose_backend("auto", 0, 0) == "local"
    assert choose_backend("ray", 1, 10**9) == "ray"
    assert choose_backend("local", 10**9, 0) == "local"
    with pytest.raises(ConfigError, match="encode"):
        choose_backend("gpu", 1, 1)
    with pytest.raises(ConfigError, match="model_dir"):
        EncodeOptions(mode="ray").backend(5)


def test_auto_below_threshold_never_starts_ray(tiny_model_dir, monkeypatch):
    from hybrid_ray.modeling.encoder import DualEncoder

    def no_ray(*_, **__):
        raise AssertionError("Ray encoding started below the auto threshold")

    monkeypatch.setattr(encode_ray, "encode_rows_ray", no_ray)
    rs = _retrieval_set(6)
    res = evaluate_retrieval(DualEncoder.from_pretrained(tiny_model_dir), rs, setting="lareqa",
                             encode=EncodeOptions(mode="auto", model_dir=tiny_model_dir, local_max_rows=12))
    assert res["encoding"] == {"mode": "auto", "queries": "local", "candidates": "local"}


def test_row_writers_refuse_lost_or_repeated_rows(tmp_path):
    emb = np.eye(3, dtype=np.float32)
    out = write_rows_memmap(iter([(np.array([2, 0]), emb[[2, 0]]), (np.array([1]), emb[[1]])]), 3,
                            tmp_path / "ok.npy")
    np.testing.assert_array_equal(out, emb)
    with pytest.raises(DataError, match="2 of 3"):
        write_rows_memmap(iter([(np.array([0, 1]), emb[:2])]), 3, tmp_path / "lost.npy")
    assert not (tmp_path / "lost.npy").exists()  # atomic: nothing half-written left behind
    with pytest.raises(DataError, match="twice"):
        write_rows_memmap(iter([(np.array([0, 1]), emb[:2]), (np.array([1]), emb[[1]])]), 3, tmp_path / "dup.npy")
    with pytest.raises(DataError, match="twice"):
        collect_rows(iter([(np.array([0, 0, 1]), emb)]), 3)
    with pytest.raises(DataError, match="2 of 3"):
        collect_rows(iter([(np.array([0, 2]), emb[:2])]), 3)


# --------------------------------------------------------------------------- local Ray cluster
def test_eval_through_ray_matches_in_process(ray_local, tiny_model_dir, tmp_path):
    from hybrid_ray.modeling.encoder import DualEncoder

    rs = _retrieval_set()
    encoder = DualEncoder.from_pretrained(tiny_model_dir)
    local = evaluate_retrieval(encoder, rs, setting="lareqa", batch_size=8, cache_dir=tmp_path / "local")
    ray_res = evaluate_retrieval(encoder, rs, setting="lareqa", batch_size=8, cache_dir=tmp_path / "ray",
                                 encode=EncodeOptions(mode="ray", model_dir=tiny_model_dir, concurrency=2))
    assert local["encoding"] == {"mode": "local", "queries": "local", "candidates": "local"}
    assert ray_res["encoding"] == {"mode": "ray", "queries": "ray", "candidates": "ray"}
    for name in ("queries", "candidates"):
        a, b = np.load(tmp_path / "local" / f"{name}.npy"), np.load(tmp_path / "ray" / f"{name}.npy")
        assert a.shape == b.shape and a.shape[0] == rs.corpus.num_rows
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("pairs", "settings", "language_bias"):
        assert json.dumps(ray_res[key], sort_keys=True) == json.dumps(local[key], sort_keys=True), key
    # Auto with a threshold between the two set sizes: queries in-process, candidates on Ray.
    first = set(rs.queries.column("qid")[:10].to_pylist())
    rs_small_q = RetrievalSet(rs.name, rs.queries.slice(0, 10), rs.corpus,
                              {q: r for q, r in rs.qrels.items() if q in first})
    mixed = evaluate_retrieval(encoder, rs_small_q, setting="lareqa", batch_size=8,
                               encode=EncodeOptions(mode="auto", model_dir=tiny_model_dir, local_max_rows=20))
    assert mixed["encoding"] == {"mode": "auto", "queries": "local", "candidates": "ray"}
    ref = evaluate_retrieval(encoder, rs_small_q, setting="lareqa", batch_size=8)
    assert json.dumps(mixed["settings"], sort_keys=True) == json.dumps(ref["settings"], sort_keys=True)


def test_eval_cli_encode_ray(ray_local, tiny_model_dir, tmp_path):
    from hybrid_ray.data.pairs import write_pairs
    from hybrid_ray.driver.evaluate import main

    rs = _retrieval_set(8)
    table = pa.table({"pair_id": [d.split("/")[0] for d in rs.corpus.column("docid").to_pylist()],
                      "lang": rs.corpus.column("lang"), "query": rs.queries.column("text"),
                      "positive": rs.corpus.column("text"),
                      "negatives": pa.array([[]] * rs.corpus.num_rows, pa.list_(pa.string()))})
    data = tmp_path / "data"
    data.mkdir()
    write_pairs(table, data / "test.parquet")
    assert main(["--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--encode", "ray", "--concurrency", "1", "--batch-size", "4"]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["encoding"] == {"mode": "ray", "queries": "ray", "candidates": "ray"}
    with pytest.raises(ConfigError, match="--local-max-rows"):
        main(["--model", str(tiny_model_dir), "--data", str(data), "--local-max-rows", "-1"])
