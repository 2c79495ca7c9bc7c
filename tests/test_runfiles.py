"""Per-query results and TREC run files: an outside tool (pytrec_eval) reading only our files
reproduces our table, per query and as macro means, at the depth the evaluation searched."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytrec_eval

from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.errors import DataError
from hybrid_ray.evaluate import evaluate_retrieval
from hybrid_ray.runfiles import PerQueryLog, _strict_scores, read_per_query, read_qrels, read_run
from tests.test_evaluate import GroupEncoder, QuantEncoder, _big_pairs_set, _pairs_set

MEASURES = {"map", "recip_rank", "ndcg_cut_10"}


def _outside(out, setting):
    """pytrec_eval on runs/{setting}.trec + qrels/{setting}.txt, read from disk."""
    run, qrels = read_run(out / "runs" / f"{setting}.trec"), read_qrels(out / "qrels" / f"{setting}.txt")
    return pytrec_eval.RelevanceEvaluator(qrels, MEASURES).evaluate(run)


def _macro(table: pa.Table, setting: str, values: dict[str, dict[str, float]], measure: str) -> float:
    """Macro mean over (q_lang, c_lang) cells (multi: one per query language) of the outside tool's values."""
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in table.filter(pa.compute.equal(table["setting"], setting)).to_pylist():
        cells[(row["q_lang"], row["c_lang"])].append(values[row["run_qid"]][measure])
    return float(np.mean([np.mean(v) for v in cells.values()]))


@pytest.mark.parametrize("max_k", [None, 7])
def test_outside_tool_reproduces_our_map_from_the_files(tmp_path, max_k):
    rs = _big_pairs_set(n_groups=30)
    log = PerQueryLog()
    res = evaluate_retrieval(QuantEncoder(), rs, max_k=max_k, per_query=log)  # QuantEncoder: many exact ties
    written = log.write(tmp_path, tag="quant")
    assert sorted(written["runs"]) == ["runs/cross.trec", "runs/mono.trec", "runs/multi.trec"]
    assert res["search"]["truncated"] is (max_k is not None)
    table = read_per_query(tmp_path)
    for setting, ours in (("mono", res["settings"]["mono"]), ("cross", res["settings"]["cross"]),
                          ("multi", res["settings"]["multilingual"])):
        theirs = _outside(tmp_path, setting)
        rows = table.filter(pa.compute.equal(table["setting"], setting)).to_pylist()
        assert len(theirs) == len(rows) > 0
        for row in rows:  # every query, every measure
            for m in MEASURES:
                assert theirs[row["run_qid"]][m] == pytest.approx(row[m], abs=1e-9), (setting, row["run_qid"], m)
        assert _macro(table, setting, theirs, "map") == pytest.approx(ours["map"], abs=1e-4)
    # Nothing in a run goes deeper than the search did.
    if max_k is not None:
        run = read_run(tmp_path / "runs" / "multi.trec")
        assert max(len(v) for v in run.values()) <= max_k


def test_per_query_table_schema_and_known_values(tmp_path):
    # German passages point to the other group: X->de has its answer at rank 2 of 2.
    log = PerQueryLog()
    res = evaluate_retrieval(GroupEncoder(swap_lang="de"), _pairs_set(), per_query=log)
    log.write(tmp_path)
    t = pq.read_table(tmp_path / "per_query.parquet")
    assert t.schema.field("relevant_ranks").type == pa.list_(pa.int32())
    assert {"setting", "q_lang", "c_lang", "qid", "run_qid", "map", "recip_rank", "ndcg_cut_10",
            "language_bias", "n_relevant"} <= set(t.column_names)
    rows = {(r["setting"], r["run_qid"]): r for r in t.to_pylist()}
    en_de = rows[("cross", "p0/en@de")]
    assert en_de["c_lang"] == "de" and en_de["relevant_ranks"] == [2] and en_de["recip_rank"] == 0.5
    assert np.isnan(en_de["language_bias"])
    multi = rows[("multi", "p0/en")]
    assert multi["c_lang"] == "all" and multi["relevant_ranks"] == [1, 2, 4] and multi["n_relevant"] == 3
    assert multi["language_bias"] == 3.0  # en 1, fr 2, de 4
    # 2 groups x 3 languages: 6 mono, 12 cross, 6 multi rows; means agree with results.json.
    assert t.num_rows == 24
    mono_de = [r["map"] for r in rows.values() if r["setting"] == "mono" and r["q_lang"] == "de"]
    assert np.mean(mono_de) == pytest.approx(res["pairs"]["de"]["de"]["map"])
    # The qrels of a pair hold only the answer in the candidate language.
    assert read_qrels(tmp_path / "qrels" / "cross.txt")["p0/en@de"] == {"p0/de": 1}


def test_miracl_run_files_and_graded_judgements(tmp_path):
    queries = pa.table({"qid": ["a/en", "b/en", "c/de"], "lang": ["en", "en", "de"],
                        "text": ["question 0", "question 1", "question 0"]})
    corpus = pa.table({"docid": ["d0/en", "d1/en", "d0/de", "d1/de"], "lang": ["en", "en", "de", "de"],
                       "text": ["passage 0 en", "passage 1 en", "passage 0 de", "passage 1 de"]})
    qrels = {"a/en": {"d0/en": 1, "d1/en": 0}, "b/en": {"d1/en": 1}, "c/de": {"d0/de": 1}}
    log = PerQueryLog(run_depth=0)
    res = evaluate_retrieval(GroupEncoder(swap_lang="de"), RetrievalSet("miracl-dev", queries, corpus, qrels),
                             per_query=log)
    log.write(tmp_path)
    theirs = _outside(tmp_path, "miracl")
    assert read_qrels(tmp_path / "qrels" / "miracl.txt")["a/en"] == {"d0/en": 1, "d1/en": 0}
    assert theirs["c/de"]["map"] == pytest.approx(res["per_lang"]["de"]["map"]) == pytest.approx(0.5)
    assert len(read_run(tmp_path / "runs" / "miracl.trec")["a/en"]) == 2  # run_depth 0: whole list


def test_strict_scores_keep_our_order_through_ties():
    got = _strict_scores(np.array([0.5, 0.5, 0.5, 0.25, -0.1]))
    assert got == ["0.500000", "0.499999", "0.499998", "0.250000", "-0.100000"]
    # Strictly decreasing even in single precision (what trec_eval holds scores in).
    assert all(np.float32(a) > np.float32(b) for a, b in zip(got, got[1:], strict=False))
    assert _strict_scores(np.array([0.3, 0.3, 0.2999995])) == ["0.300000", "0.299999", "0.299998"]


def test_bad_run_line_and_bad_ids_are_named(tmp_path):
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2 tag\n")
    with pytest.raises(DataError, match=r"bad.trec:2"):
        read_run(bad)
    log = PerQueryLog()
    log.add("mono", "en", ["q 1"], ["en"], {"q 1": {"map": 1.0}}, np.array([[0]]), np.array([[1.0]]),
            np.array([[True]]), np.array(["d1"], dtype=object), {"q 1": {"d1": 1}}, min_depth=1)
    with pytest.raises(DataError, match="qid"):
        log.write(tmp_path)
    with pytest.raises(DataError, match="per_query.parquet"):
        read_per_query(tmp_path / "nothing")


def test_max_depth_caps_the_extension_and_counts_cut_queries(tmp_path):
    rs = _big_pairs_set(n_groups=30)
    log = PerQueryLog(max_depth=12)
    res = evaluate_retrieval(QuantEncoder(), rs, per_query=log)
    written = log.write(tmp_path)
    run = read_run(tmp_path / "runs" / "multi.trec")
    assert max(len(v) for v in run.values()) == 12 and written["cut"]["multi"] > 0
    # Queries not cut still score exactly; cut ones score as if searched to depth 12.
    theirs = _outside(tmp_path, "multi")
    ref = evaluate_retrieval(QuantEncoder(), rs, max_k=12)
    assert _macro(read_per_query(tmp_path), "multi", theirs, "map") == pytest.approx(
        ref["settings"]["multilingual"]["map"], abs=1e-4)
    assert res["settings"]["multilingual"]["map"] > ref["settings"]["multilingual"]["map"]
