"""Metric parity: our wrapper == raw pytrec_eval == hand-computed values on tiny cases."""

from __future__ import annotations

import math

import pytest
import pytrec_eval

from hybrid_ray.errors import ConfigError
from hybrid_ray.metrics import evaluate_run, language_bias, run_from_ranking

METRICS = ("map", "recall_1", "recall_10", "recall_100", "ndcg_cut_10")


def _raw(qrels, run, metrics=METRICS):
    return pytrec_eval.RelevanceEvaluator(qrels, set(metrics)).evaluate(run)


def test_multiple_relevant_hand_computed_and_parity():
    qrels = {"q1": {"a": 1, "c": 1, "z": 1}}  # z is never retrieved
    ranking = {"q1": ["a", "b", "c", "d"]}
    res = evaluate_run(qrels, run_from_ranking(ranking), METRICS)
    q = res["per_query"]["q1"]
    assert q["map"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert q["recall_1"] == pytest.approx(1 / 3)
    assert q["recall_10"] == pytest.approx(2 / 3)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert q["ndcg_cut_10"] == pytest.approx(dcg / idcg)
    raw = _raw(qrels, run_from_ranking(ranking))["q1"]
    for m in METRICS:
        assert q[m] == pytest.approx(raw[m])


def test_ties_are_evaluated_in_our_order_not_trec_evals():
    qrels = {"q1": {"a": 1}}
    # Raw trec_eval breaks the a/b tie by docid descending: b first, so AP = 1/2.
    tied = {"q1": {"a": 1.0, "b": 1.0}}
    assert _raw(qrels, tied)["q1"]["map"] == pytest.approx(0.5)
    assert evaluate_run(qrels, tied)["per_query"]["q1"]["map"] == pytest.approx(0.5)
    # Our searcher ranks a first (lower index wins); run_from_ranking makes that unambiguous.
    ours = evaluate_run(qrels, run_from_ranking({"q1": ["a", "b"]}))
    assert ours["per_query"]["q1"]["map"] == pytest.approx(1.0)
    assert ours["per_query"]["q1"]["recall_1"] == pytest.approx(1.0)


def test_query_without_relevant_is_skipped_and_missing_query_scores_zero():
    qrels = {"q1": {"a": 1}, "q_none": {"x": 0}, "q_missing": {"a": 1}}
    run = run_from_ranking({"q1": ["b", "a"], "q_none": ["x"], "not_judged": ["a"]})
    res = evaluate_run(qrels, run)
    assert res["skipped"] == ["q_none"]
    assert set(res["per_query"]) == {"q1", "q_missing"}
    assert res["per_query"]["q_missing"] == {m: 0.0 for m in METRICS}
    assert res["per_query"]["q1"]["map"] == pytest.approx(0.5)
    assert res["mean"]["map"] == pytest.approx(0.25)
    assert res["n_queries"] == 2


def test_graded_relevance_and_empty_inputs():
    res = evaluate_run({"q": {"a": 2, "b": 1}}, run_from_ranking({"q": ["b", "a"]}), ("ndcg_cut_10",))
    dcg = 1 / math.log2(2) + 2 / math.log2(3)  # trec_eval's gain is the relevance itself (linear)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert res["mean"]["ndcg_cut_10"] == pytest.approx(dcg / idcg)
    empty = evaluate_run({}, {})
    assert empty["n_queries"] == 0 and empty["mean"]["map"] == 0.0


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, ("mrr_10",))


def test_language_bias_hand_built():
    ranks = {"q_en": [1, 4, 2], "q_de": [3, 3], "q_de2": [1, 11], "q_one": [5]}
    langs = {"q_en": "en", "q_de": "de", "q_de2": "de", "q_one": "en"}
    res = language_bias(ranks, langs)
    assert res["per_query"] == {"q_en": 3.0, "q_de": 0.0, "q_de2": 10.0}  # q_one: < 2 answers
    assert res["per_lang"] == {"de": 5.0, "en": 3.0}
    assert res["macro"] == pytest.approx(4.0)
    assert language_bias(ranks)["macro"] == pytest.approx(13 / 3)
