"""Smoke tests for the benchmarks: the dispatcher, and the training benchmark's plumbing.

No timing asserts: these machines are shared, and a benchmark's figures are for its result files,
not for CI. What must not break silently is that the programs run and write valid results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import driver


def test_driver_lists_every_benchmark(capsys) -> None:
    assert driver.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "sampler", "search", "encode", "serve", "all"):
        assert f"  {name} " in out
    for module, _ in driver.BENCHMARKS.values():
        assert Path(__file__).resolve().parents[1].joinpath(*module.split(".")).with_suffix(".py").exists()


def test_driver_rejects_unknown_benchmark(capsys) -> None:
    assert driver.main(["nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_driver_forwards_help_to_the_benchmark(capsys) -> None:
    assert driver.main(["train", "--help"]) == 0
    assert "--model" in capsys.readouterr().out


def _run_train_bench(tmp_path: Path, *only: str) -> dict:
    from bench import train_throughput

    code = train_throughput.main(["--model", "tiny", "--warmup", "1", "--steps", "2", "--batch", "8",
                                  "--only", *only, "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "train_throughput.json").read_text())
    assert (tmp_path / "train_throughput.md").read_text().startswith("# Training throughput")
    return result


def test_train_throughput_bare_loop_writes_valid_json(tmp_path: Path) -> None:
    result = _run_train_bench(tmp_path, "bare-1t")
    assert [r["name"] for r in result["runs"]] == ["bare-1t"]
    run = result["runs"][0]
    assert run["measured_steps"] == 2 and run["torch_threads"] == 1
    assert run["samples_per_s"] > 0 and run["peak_rss_all_processes_mb"] > 0
    assert result["machine"]["cores"] and result["versions"]["torch"] != "absent"
    assert run["loadavg_before"] is not None
    assert result["summary"]["hybrid_ray_1w_overhead_vs_bare_1t"] is None  # no hybrid-ray run


@pytest.mark.slow
def test_train_throughput_sentence_transformers_path(tmp_path: Path) -> None:
    """A second child process (torch + sentence-transformers imports): ~30-60 s on a loaded box."""
    pytest.importorskip("sentence_transformers")
    result = _run_train_bench(tmp_path, "bare-1t", "st-1t")
    assert result["summary"]["st_1t_over_bare_1t"] is not None


@pytest.mark.slow
def test_train_throughput_hybrid_ray_path(tmp_path: Path) -> None:
    """Ray + DeepSpeed start-up makes this ~1 minute on 2 cores."""
    result = _run_train_bench(tmp_path, "bare-1t", "hybrid-ray-1w")
    run = next(r for r in result["runs"] if r["name"] == "hybrid-ray-1w")
    assert run["measured_steps"] == 2 and run["peak_rss_train_workers_mb"] > 0
    assert result["summary"]["hybrid_ray_1w_overhead_vs_bare_1t"] is not None
