"""Paired comparison of evaluations: known differences found, null ones not, and the driver end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray.compare import (
    EvalRun,
    adjust,
    compare_evals,
    format_markdown,
    holm,
    macro_weights,
    paired_test,
)
from hybrid_ray.errors import ConfigError, DataError


def test_known_difference_is_detected():
    rng = np.random.default_rng(7)
    a = rng.uniform(0, 1, 300)
    b = np.clip(a + 0.05 + rng.normal(0, 0.05, 300), 0, 1)
    res = paired_test(a, b, n_resamples=2000, seed=0)
    assert res["p"] < 0.05 and res["ci_low"] > 0 and res["ci_low"] < res["diff"] < res["ci_high"]
    assert res["diff"] == pytest.approx(np.mean(b - a))


@pytest.mark.parametrize("kind", ["symmetric", "noise"])
def test_null_difference_is_not_detected(kind):
    rng = np.random.default_rng(11)
    a = rng.uniform(0, 1, 300)
    e = rng.normal(0, 0.05, 150)
    b = a + (np.concatenate([e, -e]) if kind == "symmetric" else rng.normal(0, 0.05, 300))
    res = paired_test(a, b, n_resamples=2000, seed=0)
    assert res["p"] > 0.05 and res["ci_low"] < 0 < res["ci_high"]
    if kind == "symmetric":
        assert res["diff"] == pytest.approx(0, abs=1e-12) and res["p"] > 0.9


def test_identical_runs_and_fixed_seed():
    a = np.linspace(0, 1, 50)
    assert paired_test(a, a, n_resamples=500)["p"] == 1.0
    b = a + np.sin(np.arange(50))
    assert paired_test(a, b, n_resamples=500, seed=3) == paired_test(a, b, n_resamples=500, seed=3)


def test_macro_weights_give_the_difference_of_macro_means():
    cells = ["en|en"] * 3 + ["de|de"] * 1
    a, b = np.array([0.0, 0.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0])
    w = macro_weights(cells)
    # macro(A) = (0 + 1) / 2, macro(B) = 1: difference 0.5, not the pooled mean difference 0.75.
    assert paired_test(a, b, w, n_resamples=200)["diff"] == pytest.approx(0.5)


def test_holm_and_bh():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert (adjust([0.01, 0.02, 0.03], "bh") <= adjust([0.01, 0.02, 0.03], "holm")).all()
    with pytest.raises(ConfigError, match="correction"):
        adjust([0.1], "bonferroni-ish")


def _table(values_mono, values_multi, bias, langs=("en", "de", "sw")):
    rows = []
    for x in langs:
        for i, v in enumerate(values_mono[x]):
            rows.append({"setting": "mono", "q_lang": x, "c_lang": x, "qid": f"q{i}/{x}", "map": v,
                         "language_bias": float("nan")})
        for i, v in enumerate(values_multi[x]):
            rows.append({"setting": "multi", "q_lang": x, "c_lang": "all", "qid": f"q{i}/{x}", "map": v,
                         "language_bias": bias[x][i]})
    return pa.Table.from_pylist(rows)


def _runs(tmp_path, better_on="sw", n=60, seed=0):
    rng = np.random.default_rng(seed)
    langs = ("en", "de", "sw")
    base_mono = {x: rng.uniform(0.2, 0.8, n) for x in langs}
    base_multi = {x: rng.uniform(0.2, 0.8, n) for x in langs}
    base_bias = {x: rng.integers(0, 20, n).astype(float) for x in langs}
    a = _table(base_mono, base_multi, base_bias)
    # B: much better on one language's mono queries only; identical elsewhere.
    mono_b = {x: (np.clip(v + 0.3, 0, 1) if x == better_on else v) for x, v in base_mono.items()}
    b = _table(mono_b, base_multi, base_bias)
    return EvalRun("A", tmp_path / "a", a, ["en", "de"]), EvalRun("B", tmp_path / "b", b, ["en", "de"])


def test_compare_breakdowns_find_the_language_that_moved(tmp_path):
    ra, rb = _runs(tmp_path)
    res = compare_evals([ra, rb], n_resamples=500, resource_groups={"en": "high", "de": "high", "sw": "low"})
    by = {(t["setting"], t["metric"], t["grouping"], t["group"]): t for t in res["tests"]}
    assert by[("mono", "map", "language", "sw")]["better"] == "B"
    assert by[("mono", "map", "language", "en")]["p"] == 1.0 and by[("mono", "map", "language", "en")]["better"] is None
    assert by[("mono", "map", "resource", "low")]["better"] == "B"
    assert by[("mono", "map", "seen", "zero-shot")]["better"] == "B"
    # families from the shipped language table: sw is Atlantic-Congo, en and de Indo-European
    assert by[("mono", "map", "family", "Atlantic-Congo")]["better"] == "B"
    assert by[("mono", "map", "family", "Indo-European")]["better"] is None
    assert res["families"] == {"de": "Indo-European", "en": "Indo-European", "sw": "Atlantic-Congo"}
    assert by[("mono", "map", "seen", "seen")]["better"] is None
    assert by[("multi", "language_bias", "overall", "all")]["diff"] == 0.0
    overall = by[("mono", "map", "overall", "all")]
    assert overall["diff"] == pytest.approx(overall["mean_b"] - overall["mean_a"])
    assert res["train_langs"] == ["de", "en"]
    md = format_markdown(res)
    assert "### By query language" in md and "| mono mAP | B | sw |" in md and "Seen (training)" in md
    assert "### By language family" in md
    json.dumps(res)


def test_different_query_sets_are_an_error_naming_both(tmp_path):
    ra, rb = _runs(tmp_path)
    short = EvalRun("C", tmp_path / "c", rb.table.slice(0, rb.table.num_rows - 5), None)
    with pytest.raises(DataError, match=r"different query sets.*/a and .*/c differ in 5"):
        compare_evals([ra, short], n_resamples=200)
    with pytest.raises(ConfigError, match="training languages"):
        compare_evals([ra, EvalRun("D", tmp_path / "d", rb.table, ["sw"])], n_resamples=200)


def test_compare_driver_end_to_end(tmp_path, capsys):
    from hybrid_ray.data.pairs import write_pairs
    from hybrid_ray.driver.compare import main as compare_main
    from hybrid_ray.driver.evaluate import main as eval_main
    from hybrid_ray.testing import tiny_encoder

    rows = [{"pair_id": f"p{i}", "lang": lang, "query": f"question {i} day night",
             "positive": f"passage {i} light water"} for i in range(8) for lang in ("en", "de", "sw")]
    data = tmp_path / "data"
    write_pairs(pa.Table.from_pylist(rows), data / "test.parquet")
    (data / "meta.json").write_text(json.dumps({"languages": {"train": ["en", "de"], "zero_shot": ["sw"]}}))
    evals = []
    for name, hidden in (("small", 16), ("large", 32)):
        tiny_encoder(tmp_path / name, hidden=hidden)
        out = tmp_path / f"eval-{name}"
        assert eval_main(["--model", str(tmp_path / name), "--data", str(data), "--out", str(out), "--no-cache"]) == 0
        evals.append(out)
    res = json.loads((evals[0] / "results.json").read_text())
    assert res["train_langs"] == ["de", "en"] and res["per_query_files"]["runs"] == [
        "runs/mono.trec", "runs/cross.trec", "runs/multi.trec"]
    assert (evals[0] / "runs" / "cross.trec").read_text().split("\n")[0].endswith(" small")
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert compare_main([*map(str, evals), "--out", str(out), "--resamples", "200"]) == 0
    printed = capsys.readouterr().out
    assert "## Paired comparison against eval-small" in printed and "| mono mAP | eval-large |" in printed
    result = json.loads((out / "compare.json").read_text())
    groupings = {t["grouping"] for t in result["tests"]}
    assert groupings >= {"overall", "language", "seen"}
    assert {(t["setting"], t["metric"]) for t in result["tests"] if t["grouping"] == "overall"} == {
        ("mono", "map"), ("cross", "map"), ("multi", "map"), ("multi", "language_bias")}
    overall = {t["setting"]: t for t in result["tests"] if t["grouping"] == "overall" and t["metric"] == "map"}
    for setting, key in (("mono", "mono"), ("cross", "cross"), ("multi", "multilingual")):
        table_a = json.loads((evals[0] / "results.json").read_text())["settings"][key]["map"]
        table_b = json.loads((evals[1] / "results.json").read_text())["settings"][key]["map"]
        assert overall[setting]["diff"] == pytest.approx(table_b - table_a, abs=1e-9)
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "compare.md").read_text() == printed.split("wrote ")[0].rstrip("\n") + "\n"
    # Different query sets: a clear error naming both directories.
    short = tmp_path / "eval-short"
    eval_main(["--model", str(tmp_path / "small"), "--data", str(data), "--out", str(short), "--no-cache",
               "--max-queries", "4"])
    with pytest.raises(DataError, match=r"eval-small and .*eval-short differ in"):
        compare_main([str(evals[0]), str(short), "--out", str(out), "--resamples", "200"])
