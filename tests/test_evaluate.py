"""Evaluation on hand-built retrieval sets with deterministic fake encoders (known answers)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.eval_table import format_table, map_matrix
from hybrid_ray.evaluate import (
    detect_setting,
    evaluate_retrieval,
    subsample_queries,
)
from hybrid_ray.plots import heatmap

LANGS = ("en", "de", "fr")


def _pairs_set(n_groups: int = 2) -> RetrievalSet:
    rows = [(f"p{g}", x, f"question {g}", f"passage {g} {x}") for g in range(n_groups) for x in LANGS]
    pid, lang, q, pos = zip(*rows, strict=True)
    table = pa.table({"pair_id": list(pid), "lang": list(lang), "query": list(q), "positive": list(pos)})
    return RetrievalSet.from_pairs(table, name="toy")


class GroupEncoder:
    """Maps a text to the one-hot of its group; ``swap_lang`` passages point to the other group."""

    def __init__(self, swap_lang: str | None = None, dim: int = 4) -> None:
        self.swap_lang = swap_lang
        self.dim = dim

    def encode(self, texts, kind, batch_size=64):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            parts = t.split()
            g = int(parts[1])
            if kind == "passage" and parts[-1] == self.swap_lang:
                g = 1 - g
            out[i, g] = 1.0
        return out


def test_perfect_encoder_scores_one():
    res = evaluate_retrieval(GroupEncoder(), _pairs_set())
    assert res["setting"] == "lareqa"
    for name in ("mono", "cross"):
        s = res["settings"][name]
        assert s["map"] == pytest.approx(1.0) and s["recall_1"] == pytest.approx(1.0)
    assert res["settings"]["mono"]["n_settings"] == 3 and res["settings"]["cross"]["n_settings"] == 6
    multi = res["settings"]["multilingual"]
    assert multi["map"] == pytest.approx(1.0)
    assert multi["recall_1"] == pytest.approx(1 / 3)  # three relevant, one retrieved at rank 1
    # All three answers tie at score 1 and take ranks 1..3 (lower row first): bias 2.
    assert res["language_bias"]["macro"] == pytest.approx(2.0)
    assert res["search"]["truncated"] is False
    json.dumps(res)  # JSON-able


def test_shuffled_language_known_values():
    # German passages point to the other group: X->de has the answer at rank 2 of 2.
    res = evaluate_retrieval(GroupEncoder(swap_lang="de"), _pairs_set())
    mat, qls, cls_ = map_matrix(res)
    assert qls == cls_ == ["de", "en", "fr"]
    np.testing.assert_allclose(mat, [[0.5, 1, 1], [0.5, 1, 1], [0.5, 1, 1]])
    assert res["pairs"]["en"]["de"]["recall_1"] == 0.0 and res["pairs"]["en"]["de"]["recall_10"] == 1.0
    assert res["settings"]["mono"]["map"] == pytest.approx(2.5 / 3)
    assert res["settings"]["cross"]["map"] == pytest.approx(5 / 6)
    # Pool rows: p0/en p0/de p0/fr p1/en p1/de p1/fr. Query g0 ranks 0,2,4,1,3,5: relevant at
    # 1,2,4 -> AP (1 + 1 + 3/4)/3; query g1 ranks 1,3,5,0,2,4: relevant at 2,3,6 -> (1/2+2/3+1/2)/3.
    ap0, ap1 = (1 + 1 + 3 / 4) / 3, (1 / 2 + 2 / 3 + 3 / 6) / 3
    multi = res["settings"]["multilingual"]
    assert multi["map"] == pytest.approx((ap0 + ap1) / 2)
    for lang in LANGS:
        assert multi["per_lang"][lang]["map"] == pytest.approx((ap0 + ap1) / 2)
    # Bias: g0 best ranks en 1, fr 2, de 4 -> 3; g1 en 2, fr 3, de 6 -> 4.
    assert res["language_bias"]["macro"] == pytest.approx(3.5)
    table = format_table(res)
    assert "| mono | 0.8333 |" in table and "Language bias" in table and "| en |" in table


def test_truncated_search_is_recorded_and_lowers_map():
    res = evaluate_retrieval(GroupEncoder(swap_lang="de"), _pairs_set(), max_k=1)
    assert res["search"]["truncated"] is True and res["search"]["depths"] == [1]
    assert res["pairs"]["en"]["de"]["map"] == 0.0  # the answer sat at rank 2, beyond the cut
    assert "truncated" in format_table(res)


def test_miracl_setting_and_subsample():
    queries = pa.table({"qid": ["a/en", "b/en", "c/de"], "lang": ["en", "en", "de"],
                        "text": ["question 0", "question 1", "question 0"]})
    corpus = pa.table({"docid": ["d0/en", "d1/en", "d0/de", "d1/de"], "lang": ["en", "en", "de", "de"],
                       "text": ["passage 0 en", "passage 1 en", "passage 0 de", "passage 1 de"]})
    qrels = {"a/en": {"d0/en": 1, "d1/en": 0}, "b/en": {"d1/en": 1}, "c/de": {"d0/de": 1}}
    rs = RetrievalSet("miracl-dev", queries, corpus, qrels)
    assert detect_setting(rs) == "miracl"
    assert detect_setting(RetrievalSet("mono", queries, corpus, qrels)) == "miracl"
    assert detect_setting(_pairs_set()) == "lareqa"
    res = evaluate_retrieval(GroupEncoder(), rs)
    assert res["per_lang"]["en"]["n_queries"] == 2
    assert res["mean"] == pytest.approx({"ndcg_cut_10": 1.0, "recall_100": 1.0, "map": 1.0})
    res = evaluate_retrieval(GroupEncoder(swap_lang="de"), rs)
    assert res["per_lang"]["de"]["map"] == pytest.approx(0.5)
    assert "nDCG@10" in format_table(res)
    small = subsample_queries(rs, 1)
    assert small.queries.column("qid").to_pylist() == ["a/en", "c/de"]
    assert set(small.qrels) == {"a/en", "c/de"}


def test_heatmap_png(tmp_path):
    out = heatmap(np.array([[1.0, np.nan], [0.25, 0.5]]), ["en", "de"], tmp_path / "h.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png"]


def test_eval_driver_end_to_end_with_tiny_encoder(tmp_path, capsys):
    from hybrid_ray.data.pairs import write_pairs
    from hybrid_ray.driver.evaluate import main
    from hybrid_ray.testing import tiny_encoder

    model = tmp_path / "model"
    tiny_encoder(model)
    rows = [{"pair_id": f"p{i}", "lang": lang, "query": f"question {i} day night",
             "positive": f"passage {i} light water"} for i in range(6) for lang in ("en", "de")]
    data = tmp_path / "data"
    write_pairs(pa.Table.from_pylist(rows), data / "test.parquet")
    out = tmp_path / "eval"
    assert main(["--model", str(model), "--data", str(data), "--out", str(out), "--max-queries", "4"]) == 0
    printed = capsys.readouterr().out
    assert "| mono |" in printed and "| cross |" in printed and "| multilingual |" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["setting"] == "lareqa" and res["n_queries"] == 8 and res["n_candidates"] == 12
    assert set(res["pairs"]) == {"de", "en"} and 0.0 <= res["settings"]["mono"]["map"] <= 1.0
    assert (out / "table.md").read_text().startswith("## data/test")
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


class QuantEncoder:
    """Deterministic pseudo-random vectors from a text's CRC, with values in {0, .25, .5}: the
    scores are exact in float32, so the rankings are full of exact ties."""

    def __init__(self, dim: int = 6) -> None:
        self.dim = dim

    def encode(self, texts, kind, batch_size=64):
        import zlib

        out = [np.random.default_rng(zlib.crc32(f"{kind}|{t}".encode())).integers(0, 3, self.dim) / 4.0
               for t in texts]
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


def _big_pairs_set(n_groups: int = 40, langs=("en", "de", "fr", "es")) -> RetrievalSet:
    rows = [(f"p{g}", x, f"question {g} {x}", f"passage {g} {x}") for g in range(n_groups) for x in langs]
    pid, lang, q, pos = zip(*rows, strict=True)
    table = pa.table({"pair_id": list(pid), "lang": list(lang), "query": list(q), "positive": list(pos)})
    return RetrievalSet.from_pairs(table, name="toy-big")


@pytest.mark.parametrize("max_k", [None, "auto", 3, 50])
def test_memmap_blockwise_eval_equals_in_memory(tmp_path, max_k):
    rs = _big_pairs_set()
    ref = evaluate_retrieval(QuantEncoder(), rs, max_k=max_k)
    for block_size in (1, 7):
        got = evaluate_retrieval(QuantEncoder(), rs, max_k=max_k, cache_dir=tmp_path / "c",
                                 block_size=block_size)
        for key in ("pairs", "settings", "language_bias"):
            assert json.dumps(got[key], sort_keys=True) == json.dumps(ref[key], sort_keys=True), key
        assert got["search"]["depths"] == ref["search"]["depths"]
        assert got["search"]["embeddings"] == "memmap" and ref["search"]["embeddings"] == "memory"
    assert np.load(tmp_path / "c" / "candidates.npy", mmap_mode="r").shape == (160, 6)
    assert np.load(tmp_path / "c" / "queries.npy", mmap_mode="r").shape == (160, 6)
    assert ref["search"]["truncated"] is (max_k in (3, 50))


def test_max_k_auto_depth_and_bad_values():
    from hybrid_ray.errors import ConfigError
    from hybrid_ray.evaluate import AUTO_FULL_POOL, DEFAULT_MAX_K, _depth

    assert _depth(3896, "auto") == 3896  # the demo's multilingual pool: ranked fully
    assert _depth(AUTO_FULL_POOL, "auto") == AUTO_FULL_POOL
    assert _depth(AUTO_FULL_POOL + 1, "auto") == DEFAULT_MAX_K
    assert _depth(5000, 1000) == 1000 and _depth(5000, None) == 5000
    for bad in (0, -3, "all"):
        with pytest.raises(ConfigError):
            evaluate_retrieval(GroupEncoder(), _pairs_set(), max_k=bad)


def test_eval_driver_cache_dir_memmaps_and_safe_reuse(tmp_path):
    from hybrid_ray.data.pairs import write_pairs
    from hybrid_ray.driver.evaluate import main
    from hybrid_ray.testing import tiny_encoder

    model = tmp_path / "model"
    tiny_encoder(model, hidden=32)
    rows = [{"pair_id": f"p{i}", "lang": lang, "query": f"question {i} day night",
             "positive": f"passage {i} light water"} for i in range(6) for lang in ("en", "de")]
    data = tmp_path / "data"
    write_pairs(pa.Table.from_pylist(rows), data / "test.parquet")
    cache = tmp_path / "emb"
    args = ["--model", str(model), "--data", str(data), "--cache-dir", str(cache), "--block-size", "5"]
    assert main([*args, "--out", str(tmp_path / "e1"), "--max-queries", "4"]) == 0
    q, c = np.load(cache / "queries.npy", mmap_mode="r"), np.load(cache / "candidates.npy", mmap_mode="r")
    assert q.shape == (8, 32) and c.shape == (12, 32) and q.dtype == c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(c), axis=1), 1.0, atol=1e-5)
    assert sorted(p.name for p in cache.iterdir()) == [
        "candidates.npy", "candidates.npy.json", "queries.npy", "queries.npy.json"]  # no temp files
    res1 = json.loads((tmp_path / "e1" / "results.json").read_text())
    assert res1["search"]["cache_dir"] == str(cache) and res1["search"]["embeddings"] == "memmap"
    stamp = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    # Same model and candidates, other queries: candidates are reused, queries re-encoded.
    assert main([*args, "--out", str(tmp_path / "e2"), "--max-queries", "6"]) == 0
    assert (cache / "candidates.npy").stat().st_mtime_ns == stamp["candidates.npy"]
    assert np.load(cache / "queries.npy", mmap_mode="r").shape == (12, 32)
    # In memory: same numbers as through the memmaps, and no cache directory.
    assert main([*args[:4], "--out", str(tmp_path / "e3"), "--max-queries", "6", "--no-cache"]) == 0
    assert not (tmp_path / "e3" / "cache").exists()
    res2 = json.loads((tmp_path / "e2" / "results.json").read_text())
    res3 = json.loads((tmp_path / "e3" / "results.json").read_text())
    assert res2["settings"] == res3["settings"] and res2["pairs"] == res3["pairs"]
    assert res2["language_bias"] == res3["language_bias"]
    # A changed model (files rewritten) never reuses the old vectors.
    tiny_encoder(model, hidden=16)
    assert main([*args, "--out", str(tmp_path / "e4"), "--max-queries", "6"]) == 0
    assert np.load(cache / "candidates.npy", mmap_mode="r").shape == (12, 16)
