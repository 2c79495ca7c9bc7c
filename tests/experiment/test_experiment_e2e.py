"""One tiny experiment end to end: 2 trained trials + the baseline as a Ray Tune experiment,
evaluated with per-query results, the report written, and a rerun restored instead of retrained."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from hybrid_ray.data.pairs import write_pairs
from hybrid_ray.experiment.config import load_experiment_config
from hybrid_ray.experiment.run import run_experiment
from hybrid_ray.testing import signature_pairs


def _with_domain(t: pa.Table) -> pa.Table:
    ids = t.column("pair_id").to_pylist()
    return t.append_column("domain", pa.array(["a" if int(i.lstrip("ptq")) % 2 else "b" for i in ids]))


@pytest.mark.slow  # ~1.5 min on an idle 2-core machine, 6.6 min under load 47 (Ray start + 3 trials)
def test_tiny_experiment(tmp_path: Path) -> None:
    data = tmp_path / "pairs"
    write_pairs(_with_domain(signature_pairs(48, 0)), data / "train.parquet")
    write_pairs(_with_domain(signature_pairs(10, 1, id_prefix="t")), data / "test.parquet")
    spec = load_experiment_config("experiments/tiny.yaml", [
        f"train_overrides+=[data.path={data}]", f"eval_sets=[{{name: test, path: {data}, split: test}}]",
        f"run.storage_path={tmp_path / 'runs'}", f"report.out={tmp_path / 'report' / 'tiny'}"])
    report = run_experiment(spec)
    assert not report["errors"]
    sr = report["sets"]["test"]
    assert set(sr["summary"]) == {"off-the-shelf", "default a=0", "default a=1"}
    for label in ("default_a0_s1", "default_a1_s1", "off-the-shelf"):
        d = spec.exp_dir / "evals" / label / "test"
        assert (d / "per_query.parquet").is_file()
        res = json.loads((d / "results.json").read_text())
        assert set(res["per_domain"]) == {"a", "b"}
        assert res["encoding"] == "frozen-prefix + top layers"  # the tiny run trains 1 of 2 layers
    assert (tmp_path / "report" / "tiny.md").is_file() and (tmp_path / "report" / "tiny.png").is_file()
    assert any(t["why"] == "vs off-the-shelf" for t in sr["comparisons"]["tests"])
    assert list(spec.exp_dir.glob("trial_*/events.out.tfevents*"))  # Tune's TensorBoard output
    mtime = (spec.exp_dir / "train" / "default_a0_s1" / "encoder" / "train_metrics.json").stat().st_mtime
    again = run_experiment(spec)  # restored: nothing is trained or evaluated again
    assert again["sets"]["test"]["summary"].keys() == sr["summary"].keys()
    assert (spec.exp_dir / "train" / "default_a0_s1" / "encoder" / "train_metrics.json").stat().st_mtime == mtime
