"""A toy data format and a toy metric added through the registries alone, then used end to end.

Nothing outside this file is edited: the format (a TSV of ``id, lang, query, passage`` rows,
rows sharing an id being translations of each other) and the metric (hit@1 over the ranks of
the relevant documents) are registered here, and ``hybrid-ray eval``, ``hybrid-ray data stats``,
validation's key derivation and Tune's direction look-up must all pick them up.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray.cli import main as cli
from hybrid_ray.data.formats import (
    DataFormat,
    detect_format,
    format_names,
    get_format,
    register_format,
    unregister_format,
)
from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.errors import ConfigError, DataError
from hybrid_ray.metric_registry import (
    Metric,
    get_metric,
    metric_mode,
    metrics_for,
    register_metric,
    unregister_metric,
)
from hybrid_ray.metrics import evaluate_run, run_from_ranking

LANGS = ("en", "de")


def _load_toy(path: Path, split: str | None, langs: list[str] | None) -> RetrievalSet:
    """Query (id, lang) is relevant to the passage of the same id in every language."""
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if langs:
        rows = [r for r in rows if r[1] in langs]
    keys = [f"{i}/{lang}" for i, lang, _, _ in rows]
    by_id: dict[str, dict[str, int]] = defaultdict(dict)
    for (i, _, _, _), key in zip(rows, keys, strict=True):
        by_id[i][key] = 1
    qrels = {key: dict(by_id[i]) for (i, _, _, _), key in zip(rows, keys, strict=True)}
    langs_col = [r[1] for r in rows]
    queries = pa.table({"qid": keys, "lang": langs_col, "text": [r[2] for r in rows]})
    corpus = pa.table({"docid": keys, "lang": langs_col, "text": [r[3] for r in rows]})
    return RetrievalSet(path.stem, queries, corpus, qrels)


TOY_FORMAT = DataFormat(
    name="toytsv",
    label="toy TSV",
    description="id<TAB>lang<TAB>query<TAB>passage, one row per id and language",
    kind="retrieval",
    detect=lambda path: path.is_file() and path.suffix == ".tsv",
    load_retrieval=_load_toy,
    priority=60,
)


def _hit_at_1(ranks: np.ndarray, n_relevant: int) -> float:
    return float(ranks.size > 0 and ranks[0] == 1)


TOY_METRIC = Metric("hit_1", "Hit@1", True, per_query=_hit_at_1, settings={"lareqa": 9, "miracl": 9},
                    val_name="hit1", description="a relevant document at rank 1")


@pytest.fixture
def toy_registered() -> Iterator[None]:
    register_format(TOY_FORMAT)
    register_metric(TOY_METRIC)
    try:
        yield
    finally:
        unregister_format(TOY_FORMAT.name)
        unregister_metric(TOY_METRIC.name)


def _write_toy(path: Path, n: int = 5, langs: tuple[str, ...] = LANGS) -> Path:
    lines = [f"t{i}\t{lang}\tquestion {i} day night\tpassage {i} light water" for i in range(n) for lang in langs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_toy_format_and_metric_through_eval_stats_and_validation(
    toy_registered: None, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = _write_toy(tmp_path / "toy.tsv")
    assert detect_format(data) == "toytsv" and "toytsv" in format_names("retrieval")
    assert [m.name for m in metrics_for("lareqa")][-1] == "hit_1"

    out = tmp_path / "eval"
    # Auto-detected: the eval driver's --format choices and detection both come from the registry.
    assert cli(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--no-cache"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["setting"] == "lareqa" and res["n_queries"] == 10
    # In a pair cell each query has exactly one relevant candidate, so hit@1 must equal trec_eval's R@1.
    for x, row in res["pairs"].items():
        for y, cell in row.items():
            assert cell["hit_1"] == pytest.approx(cell["recall_1"]), (x, y)
    for name in ("mono", "cross", "multilingual"):
        assert 0.0 <= res["settings"][name]["hit_1"] <= 1.0
    # Multilingual pool: two relevant per query, so R@1 is hit@1 / 2 query by query.
    for cell in res["settings"]["multilingual"]["per_lang"].values():
        assert cell["recall_1"] == pytest.approx(cell["hit_1"] / 2)
    table = (out / "table.md").read_text()
    assert "Hit@1" in table and "Language bias" in table

    # Named explicitly: the same numbers.
    out2 = tmp_path / "eval2"
    assert cli(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--format", "toytsv",
                "--out", str(out2), "--no-cache"]) == 0
    assert json.loads((out2 / "results.json").read_text())["settings"] == res["settings"]

    # data stats describes the toy format through the same record.
    capsys.readouterr()
    assert cli(["data", "stats", str(data), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["format"] == "toytsv" and stats["kind"] == "retrieval"
    assert stats["splits"]["toy.tsv"]["queries"] == 10 and stats["splits"]["toy.tsv"]["mean_relevant"] == 2.0

    # Validation derives its keys from the table, and Tune's direction look-up knows them.
    from hybrid_ray.validation import miracl_keys, pairs_keys, pairs_values

    assert "val_miracl_hit1" in miracl_keys() and "val_mono_hit1" in pairs_keys()
    values = pairs_values(res)
    assert values["val_mono_hit1"] == pytest.approx(res["settings"]["mono"]["hit_1"])
    assert values["val_multi_hit1"] == pytest.approx(res["settings"]["multilingual"]["hit_1"])
    assert metric_mode("val_cross_hit1") == "max" and get_metric("val_mono_hit1").label == "Hit@1"


def test_toy_metric_in_the_miracl_setting(toy_registered: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    # One language per id: no cross-language relevance, so evaluation picks the MIRACL setting.
    data = tmp_path / "mono.tsv"
    data.write_text("".join(f"m{i}\ten\tquestion {i}\tpassage {i}\n" for i in range(4)), encoding="utf-8")
    out = tmp_path / "eval"
    assert cli(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--no-cache"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["setting"] == "miracl" and list(res["mean"])[-1] == "hit_1"
    # One relevant document per query: AP = 1 / rank >= hit@1 query by query, so also on the mean.
    assert res["per_lang"]["en"]["hit_1"] == res["mean"]["hit_1"] <= res["mean"]["map"] + 1e-9
    assert "Hit@1" in (out / "table.md").read_text()


def test_per_query_metric_follows_trec_eval_order(toy_registered: None) -> None:
    qrels = {"q1": {"a": 1}, "q2": {"c": 1, "d": 1}, "q3": {"e": 1}}
    run = run_from_ranking({"q1": ["a", "b"], "q2": ["b", "d", "c"]})  # q3 missing from the run: scores 0
    res = evaluate_run(qrels, run, ("hit_1", "recall_1"))
    assert res["per_query"]["q1"] == {"hit_1": 1.0, "recall_1": 1.0}
    assert res["per_query"]["q2"]["hit_1"] == 0.0 and res["per_query"]["q3"]["hit_1"] == 0.0
    assert res["mean"]["hit_1"] == pytest.approx(1 / 3)
    # A raw tie is broken like trec_eval does (docid descending: b before a), so hit@1 agrees with R@1.
    tied = evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}}, ("hit_1", "recall_1"))
    assert tied["per_query"]["q"] == {"hit_1": 0.0, "recall_1": 0.0}


def test_unregistered_names_are_clean_errors(toy_registered: None, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="already registered"):
        register_format(TOY_FORMAT)
    with pytest.raises(ConfigError, match="already registered"):
        register_metric(TOY_METRIC)
    with pytest.raises(DataError, match="unknown data format .*beir, lareqa, miracl, mmarco, pairs, retrieval, toytsv"):
        get_format("bogus")
    with pytest.raises(DataError, match=r"looks like mMARCO: convert it first"):
        get_format("mmarco", "retrieval")
    with pytest.raises(ConfigError, match="unknown metric"):
        get_metric("val_mono_mrr")
    with pytest.raises(ConfigError, match="not a ranking metric"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, ("language_bias",))
    junk = tmp_path / "x.csv"
    junk.write_text("x")
    with pytest.raises(DataError, match="not a recognised data set .*toytsv"):
        detect_format(junk)


def test_unregister_restores_the_builtin_tables(tmp_path: Path) -> None:
    register_format(TOY_FORMAT)
    register_metric(TOY_METRIC)
    unregister_format("toytsv")
    unregister_metric("hit_1")
    assert "toytsv" not in format_names() and "hit_1" not in [m.name for m in metrics_for("lareqa")]
    with pytest.raises(DataError, match="not a recognised data set"):
        detect_format(_write_toy(tmp_path / "toy.tsv"))
    from hybrid_ray.validation import LOWER_IS_BETTER, MIRACL_KEYS, PAIRS_KEYS

    assert MIRACL_KEYS == ("val_miracl_map", "val_miracl_ndcg10", "val_miracl_recall100")
    assert PAIRS_KEYS == ("val_mono_map", "val_cross_map", "val_multi_map", "val_lang_bias")
    assert LOWER_IS_BETTER == {"val_lang_bias", "loss"}


def test_builtin_tables() -> None:
    assert format_names() == ["beir", "jsonl", "lareqa", "miracl", "mmarco", "pairs", "retrieval"]
    assert get_format("jsonl") is get_format("pairs")
    assert format_names("convert") == ["beir", "jsonl", "lareqa", "miracl", "mmarco", "pairs"]
    assert "mmarco" not in format_names("retrieval")
    assert [m.name for m in metrics_for("lareqa")] == ["map", "recall_1", "recall_10"]
    assert [m.name for m in metrics_for("miracl")] == ["ndcg_cut_10", "recall_100", "map"]
    assert metric_mode("val_lang_bias") == metric_mode("loss") == "min"
    assert metric_mode("val_miracl_ndcg10") == "max" and get_metric("val_miracl_recall100").name == "recall_100"
