"""Report aggregation on synthetic per-query results: seed intervals, the picked alpha, paired tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybrid_ray.experiment.config import (
    EvalSetSchema,
    ExperimentSchema,
    ExperimentSpec,
    ReportSchema,
    expand_grid,
)
from hybrid_ray.experiment.report import average_per_query, build_report, seed_interval, write_report
from hybrid_ray.experiment.trial import eval_dir

LANGS = ["en", "sw"]
N_Q = 60


def _per_query(rng: np.random.Generator, mono: float, cross: float) -> pa.Table:
    rows = {"setting": [], "q_lang": [], "c_lang": [], "qid": [], "domain": [], "map": [], "language_bias": []}
    for x in LANGS:
        for i in range(N_Q):
            for setting, y, level in (("mono", x, mono), ("cross", [c for c in LANGS if c != x][0], cross),
                                      ("multi", "all", mono)):
                rows["setting"].append(setting)
                rows["q_lang"].append(x)
                rows["c_lang"].append(y)
                rows["qid"].append(f"p{i}/{x}")
                rows["domain"].append("letters" if i % 2 else "law")
                rows["map"].append(float(np.clip(level + rng.normal(0, 0.05), 0, 1)))
                rows["language_bias"].append(float(abs(rng.normal(3, 1))) if setting == "multi" else float("nan"))
    return pa.table(rows)


def _results(table: pa.Table) -> dict:
    def m(setting):
        t = table.filter(pa.compute.equal(table.column("setting"), setting))
        return float(np.mean(t.column("map").to_numpy()))

    pairs = {x: {y: {"map": m("mono") if x == y else m("cross"), "n_queries": N_Q} for y in LANGS} for x in LANGS}
    return {"setting": "lareqa", "n_queries": N_Q * len(LANGS), "pairs": pairs,
            "settings": {"mono": {"map": m("mono")}, "cross": {"map": m("cross")}, "multilingual": {"map": m("multi")}},
            "language_bias": {"macro": 3.0}, "train_langs": ["en"],
            "per_domain": {"law": {"mono": m("mono"), "n_queries": N_Q}}}


@pytest.fixture
def spec(tmp_path: Path) -> ExperimentSpec:
    cfg = ExperimentSchema(train_config="x", alphas=[0.0, 0.5, 1.0], seeds=[1, 2, 3],
                           eval_sets=[EvalSetSchema(name="t", path=str(tmp_path))],
                           report=ReportSchema(resamples=500))
    spec = ExperimentSpec(cfg=cfg, train_base=None, trials=expand_grid(cfg), exp_dir=tmp_path / "exp",
                          report_base=tmp_path / "report" / "exp")
    rng = np.random.default_rng(0)
    for t in spec.trials:
        # alpha 0.5 is better cross-lingually by +0.1; mono is the same everywhere (a null effect)
        cross = 0.3 if not t.train else (0.5 if t.alpha == 0.5 else 0.4)
        mono = 0.6 if t.train else 0.55
        table = _per_query(rng, mono, cross)
        out = eval_dir(spec.exp_dir, t.label, "t")
        out.mkdir(parents=True)
        pq.write_table(table, out / "per_query.parquet")
        (out / "results.json").write_text(json.dumps(_results(table)))
    return spec


def test_seed_interval_is_a_t_interval() -> None:
    iv = seed_interval([1.0, 2.0, 3.0])
    assert iv["mean"] == 2.0 and iv["n"] == 3
    assert iv["ci_high"] - 2.0 == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert seed_interval([0.5])["ci_low"] == 0.5


def test_average_per_query_matches_rows_across_seeds() -> None:
    rng = np.random.default_rng(1)
    a, b = _per_query(rng, 0.5, 0.5), _per_query(rng, 0.5, 0.5)
    avg = average_per_query([a, b.take(pa.array(np.arange(b.num_rows)[::-1]))])  # other row order
    assert avg.num_rows == a.num_rows
    got = dict(zip(zip(avg.column("setting").to_pylist(), avg.column("qid").to_pylist(), strict=True),
                   avg.column("map").to_pylist(), strict=True))
    key = (a.column("setting")[0].as_py(), a.column("qid")[0].as_py())
    assert got[key] == pytest.approx((a.column("map")[0].as_py() + b.column("map")[0].as_py()) / 2)


def test_report_aggregates_and_tests(spec: ExperimentSpec) -> None:
    report = build_report(spec)
    sr = report["sets"]["t"]
    assert set(sr["summary"]) == {"off-the-shelf", "default a=0", "default a=0.5", "default a=1"}
    cross = sr["summary"]["default a=0.5"]["cross_map"]
    assert cross["n"] == 3 and cross["ci_low"] < cross["mean"] < cross["ci_high"]
    assert cross["mean"] == pytest.approx(0.5, abs=0.01)
    comps = sr["comparisons"]
    assert comps["compare_alpha"] == 0.5  # the best cross mAP among 0 < alpha < 1
    overall = {(t["why"], t["setting"]): t for t in comps["tests"] if t["grouping"] == "overall"}
    vs_xy = overall[("hybrid vs X-Y", "cross")]
    assert vs_xy["diff"] == pytest.approx(0.1, abs=0.01) and vs_xy["significant"]
    assert not overall[("hybrid vs X-Y", "mono")]["significant"]  # a null difference is not detected
    assert overall[("vs off-the-shelf", "cross")]["significant"]
    assert {t["grouping"] for t in comps["tests"]} >= {"language", "resource", "seen", "domain"}
    seed_rows = {(r["a"], r["b"]): r for r in comps["seed_level"]}
    assert seed_rows[("default a=0", "default a=0.5")]["cross_map"]["mean"] == pytest.approx(0.1, abs=0.01)
    assert sr["per_lang"]["default a=0.5"]["sw"]["cross_map"] == pytest.approx(0.5, abs=0.02)


def test_report_files(spec: ExperimentSpec) -> None:
    paths = write_report(build_report(spec), spec.report_base, header=["Command: `x`", ""])
    names = {p.name for p in paths}
    assert {"exp.md", "exp.json", "exp.png", "exp-t-mono.png", "exp-t-cross.png"} <= names
    md = (spec.report_base.parent / "exp.md").read_text()
    assert "Command: `x`" in md and "hybrid vs X-X" in md and "| default a=0.5 | 3 |" in md
    saved = json.loads((spec.report_base.parent / "exp.json").read_text())
    assert saved["sets"]["t"]["comparisons"]["compare_alpha"] == 0.5


def test_partial_experiment_reports_what_finished(spec: ExperimentSpec) -> None:
    for t in spec.trials:
        if t.seed == 3 or (t.train and t.alpha == 1.0):
            (eval_dir(spec.exp_dir, t.label, "t") / "results.json").unlink()
    sr = build_report(spec)["sets"]["t"]
    assert "default a=1" not in sr["summary"]
    assert sr["summary"]["default a=0.5"]["cross_map"]["n"] == 2
    assert not any(t["why"] == "hybrid vs X-X" for t in sr["comparisons"]["tests"])
