"""bench.encode_backends on the tiny encoder, reusing the session's ONNX export (no timing asserts)."""

from __future__ import annotations

import json


def test_bench_writes_interleaved_rounds_and_agreement(mean_dir, full_export, tmp_path):
    from bench import driver, encode_backends

    assert driver.BENCHMARKS["backends"][0] == "bench.encode_backends"
    argv = ["--model", str(mean_dir), "--onnx-dir", str(full_export), "--n", "12", "--batch-size", "4",
            "--rounds", "3", "--out", str(tmp_path)]
    assert encode_backends.main(argv) == 0
    result = json.loads((tmp_path / "encode_backends.json").read_text())
    assert result["export_s"] is None  # the matching export was reused, not redone
    assert [r["order"][0] for r in result["rounds"]] == ["eager", "onnx", "onnx-int8"]  # rotated order
    assert all(r["loadavg_before"] and r["loadavg_after"] for r in result["rounds"])
    assert set(result["summary"]) == {"eager", "onnx", "onnx-int8"}
    assert result["summary"]["eager"]["ratio_vs_eager"] == 1.0
    for s in result["summary"].values():
        assert s["min_per_s"] <= s["median_per_s"] <= s["max_per_s"]
    assert result["agreement_vs_eager"]["onnx"]["min_cosine"] > 0.999
    assert result["agreement_vs_eager"]["onnx-int8"]["min_cosine"] > 0.99
    md = (tmp_path / "encode_backends.md").read_text()
    assert "| onnx-int8 |" in md and "Command: `python -m bench.encode_backends" in md
