"""Loopback load test of the Ray Serve retrieval app vs a bare single-process server.

``python -m bench.serve_load [--model DIR] [--clients 8] [--seconds 15] [--shards 2]``

One run measures, with the same encoder, the same index files and the same client load:

1. **serve**: the real app (``hybrid_ray.serving.app:build_app``: Retriever ingress with ``@serve.batch``,
   one ShardSearcher deployment per shard) on a local Ray, HTTP on 127.0.0.1.
2. **bare**: the same FastAPI routes and validation (``hybrid_ray.serving.http.make_api``) over
   ``bench.serve_baseline.LocalRetriever`` -- encoder + every shard's FAISS index in ONE uvicorn process
   (a subprocess on 127.0.0.1, started after Ray is shut down so the two never share the CPUs).
   No Ray, no batching, no inter-process hops: the ratio serve/bare is the serving layer's cost
   (or gain, once batching pays off with a large encoder).
3. **direct**: in-process encode + search calls, sequential, no HTTP: the floor.

Clients are closed-loop threads (each sends its next request when the previous one returns) with
one ``httpx.Client`` each, for ``--seconds`` after a warm-up. Every non-200 answer or exception is
an error; the run fails (exit 1) if there is any. A third of the queries carry a language filter.
Writes bench/results/serve_load.json and serve_load.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hybrid_ray.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).parent / "results"
LANGS = ("en", "de", "fr")
WORDS = ["god", "light", "day", "night", "water", "earth", "heaven", "man", "said", "let", "cat", "dog",
         "house", "red", "blue", "green", "one", "two", "three", "world", "hello", "the", "of", "and"]


def corpus(n: int, seed: int = 0) -> Any:
    """Synthetic passages (3 languages, 4-24 words) from the tiny encoder's vocabulary."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lang = LANGS[i % 3]
        words = rng.choice(WORDS, size=int(rng.integers(4, 25)))
        rows.append({"docid": f"p{i}/{lang}", "lang": lang, "text": " ".join(words) + f" {i}"})
    return pa.Table.from_pylist(rows)


def queries(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        body: dict[str, Any] = {"query": " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))), "k": 10}
        if i % 3 == 2:
            body["lang"] = LANGS[i % len(LANGS)]
        out.append(body)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 240) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def load(url: str, bodies: list[dict[str, Any]], clients: int, seconds: float, warmup_s: float = 2.0
         ) -> dict[str, Any]:
    """Closed-loop load: ``clients`` threads for ``warmup_s`` (discarded) then ``seconds``."""
    import httpx

    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    t_start = time.monotonic()
    t_measure = t_start + warmup_s
    t_end = t_measure + seconds

    def worker(c: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            i = c
            while True:
                t0 = time.monotonic()
                if t0 >= t_end:
                    return
                try:
                    r = client.post("/search", json=bodies[i % len(bodies)])
                    ok = r.status_code == 200 and len(r.json()["hits"]) == bodies[i % len(bodies)]["k"]
                    err = None if ok else f"{r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    err = f"{type(exc).__name__}: {exc}"
                t1 = time.monotonic()
                if t0 >= t_measure:
                    lat[c].append(t1 - t0)
                    if err:
                        errors[c].append(err)
                i += clients

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_lat = np.asarray([x for row in lat for x in row])
    all_err = [e for row in errors for e in row]
    return {
        "requests": int(all_lat.size),
        "errors": len(all_err),
        "error_examples": all_err[:3],
        "qps": round(all_lat.size / seconds, 1),
        "p50_ms": round(float(np.percentile(all_lat, 50)) * 1e3, 2) if all_lat.size else None,
        "p99_ms": round(float(np.percentile(all_lat, 99)) * 1e3, 2) if all_lat.size else None,
        "mean_ms": round(float(all_lat.mean()) * 1e3, 2) if all_lat.size else None,
    }


def batch_stats(metrics_text: str) -> dict[str, float]:
    """Where the time goes inside the Retriever replica, from its Prometheus text (whole run)."""
    vals: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("hybrid_ray_") and ("_sum{" in line or "_count{" in line):
            name, value = line.rsplit(" ", 1)
            vals[name] = float(value)

    def mean(metric: str, labels: str, scale: float = 1e3) -> float:
        c = vals.get(f"{metric}_count{{{labels}}}", 0.0)
        return round(vals.get(f"{metric}_sum{{{labels}}}", 0.0) / c * scale, 2) if c else 0.0

    shard_labels = sorted({n.split("{", 1)[1][:-1] for n in vals if n.startswith("hybrid_ray_shard_latency")})
    return {
        "search_batches": int(vals.get('hybrid_ray_batch_size_count{op="search"}', 0)),
        "mean_batch_size": mean("hybrid_ray_batch_size", 'op="search"', 1.0),
        "replica_request_ms": mean("hybrid_ray_request_latency_seconds", 'endpoint="/search"'),
        "encode_batch_ms": mean("hybrid_ray_encode_latency_seconds", 'kind="query"'),
        "shard_call_ms": {lab.split('"')[1]: mean("hybrid_ray_shard_latency_seconds", lab)
                          for lab in shard_labels},
    }


def sequential(url: str, bodies: list[dict[str, Any]], n: int = 40) -> float:
    """p50 ms of one client, one request at a time: the per-request path cost without queueing."""
    import httpx

    lat = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(n + 5):
            t0 = time.perf_counter()
            c.post("/search", json=bodies[i % len(bodies)]).raise_for_status()
            if i >= 5:
                lat.append(time.perf_counter() - t0)
    return round(float(np.percentile(lat, 50)) * 1e3, 2)


def run_serve(index_dir: Path, args: argparse.Namespace, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    from hybrid_ray.serving.app import build_app

    port = free_port()
    t0 = time.perf_counter()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app_args = {"index_dir": str(index_dir), "num_cpus_per_shard": 0.5, "retriever_num_cpus": 1,
                "access_log": False,
                "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s}
    serve.run(build_app(app_args), name="bench", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    startup = time.perf_counter() - t0
    try:
        seq = sequential(url, bodies)
        res = load(url, bodies, args.clients, args.seconds) | {"sequential_p50_ms": seq}
        res |= batch_stats(httpx.get(f"{url}/metrics", timeout=10).text)
    finally:
        serve.shutdown()
        ray.shutdown()
    return res | {"startup_s": round(startup, 1), "app_args": app_args}


def run_bare(index_dir: Path, args: argparse.Namespace, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    port = free_port()
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # as Ray gives a 1-CPU replica
    cmd = [sys.executable, "-m", "bench.serve_load", "--bare-server", str(index_dir), "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, 120)
        startup = time.perf_counter() - t0
        seq = sequential(url, bodies)
        res = load(url, bodies, args.clients, args.seconds) | {"sequential_p50_ms": seq}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return res | {"startup_s": round(startup, 1)}


def bare_server(index_dir: str, port: int) -> None:
    """The baseline process: same API over in-process shards, one uvicorn worker, loopback."""
    import uvicorn

    from bench.serve_baseline import LocalRetriever
    from hybrid_ray.serving.http import make_api

    app = make_api(LocalRetriever({"index_dir": index_dir, "retriever_num_cpus": 1}))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_direct(index_dir: Path, bodies: list[dict[str, Any]], n: int = 200) -> dict[str, Any]:
    import asyncio

    from bench.serve_baseline import LocalRetriever

    svc = LocalRetriever({"index_dir": str(index_dir), "retriever_num_cpus": 1})
    lat = []
    for i in range(n + 20):
        b = bodies[i % len(bodies)]
        langs = (b["lang"],) if "lang" in b else None
        t0 = time.perf_counter()
        asyncio.run(svc.search_one(b["query"], b["k"], langs))
        if i >= 20:
            lat.append(time.perf_counter() - t0)
    a = np.asarray(lat)
    return {"calls": n, "p50_ms": round(float(np.percentile(a, 50)) * 1e3, 2),
            "p99_ms": round(float(np.percentile(a, 99)) * 1e3, 2), "qps_1_thread": round(n / a.sum(), 1)}


def _versions() -> dict[str, str]:
    import faiss
    import fastapi
    import ray
    import torch

    return {"python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__,
            "faiss": faiss.__version__, "fastapi": fastapi.__version__, "numpy": np.__version__}


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = -1.0
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "loadavg_1m_at_start": load1}


def markdown(r: dict[str, Any]) -> str:
    s, b, d = r["serve"], r["bare"], r["direct"]
    rows = [
        "| run | requests | errors | QPS | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|---|---|",
        f"| Ray Serve (batched, {r['config']['shards']} shard deployments) | {s['requests']} | {s['errors']} "
        f"| {s['qps']} | {s['p50_ms']} | {s['p99_ms']} | {s['mean_ms']} |",
        f"| bare uvicorn, 1 process | {b['requests']} | {b['errors']} | {b['qps']} | {b['p50_ms']} "
        f"| {b['p99_ms']} | {b['mean_ms']} |",
        f"| direct in-process call (1 thread, no HTTP) | {d['calls']} | 0 | {d['qps_1_thread']} "
        f"| {d['p50_ms']} | {d['p99_ms']} | |",
    ]
    c = r["config"]
    return "\n".join([
        "# Serving load test (loopback)",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, load average at start "
        f"{r['machine']['loadavg_1m_at_start']:.2f} (shared machine)  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "",
        f"Model: {c['model']} (dim {c['dim']}); {c['passages']} passages in {len(LANGS)} languages, "
        f"{c['shards']} shards (Flat, exact); {c['clients']} closed-loop clients for {c['seconds']} s "
        "after a 2 s warm-up; k=10, a third of the queries language-filtered.",
        "",
        *rows,
        "",
        f"Serving-layer ratio (serve / bare): p50 {r['ratio']['p50']}x, p99 {r['ratio']['p99']}x, "
        f"QPS {r['ratio']['qps']}x. Mean @serve.batch size {s['mean_batch_size']} over "
        f"{s['search_batches']} batches. Serve startup {s['startup_s']} s, bare {b['startup_s']} s.",
        "",
        f"One client, one request at a time (p50): Ray Serve {s['sequential_p50_ms']} ms, bare "
        f"{b['sequential_p50_ms']} ms. Inside the Retriever replica under load (means): request "
        f"{s['replica_request_ms']} ms, query encoding {s['encode_batch_ms']} ms per batch, shard round "
        f"trips {s['shard_call_ms']} ms.",
        "",
        "The bare baseline is the same FastAPI routes (`hybrid_ray.serving.http.make_api`) over "
        "`bench.serve_baseline.LocalRetriever` (encoder + all shards in one uvicorn process, no batching) in a "
        "subprocess, run after Ray is shut down. Clients, Ray and the servers share the same cores, "
        "so absolute figures are a lower bound for a dedicated host; the ratio is the point.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="encoder dir (default: a tiny offline encoder)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--passages", type=int, default=3000)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--bare-server", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare_server:
        bare_server(args.bare_server, args.port)
        return 0

    from hybrid_ray.index import build_sharded_index
    from hybrid_ray.local import apply_loopback_env, init_ray
    from hybrid_ray.testing import tiny_encoder

    apply_loopback_env()
    t_all = time.perf_counter()
    machine = _machine()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "tiny-model")
            tiny_encoder(model)
        index_dir = Path(tmp) / "index"
        # Replica logs are not forwarded: the driver is also the load generator.
        init_ray(num_cpus=4, log_to_driver=False)
        t0 = time.perf_counter()
        manifest = build_sharded_index(model, corpus(args.passages), index_dir, shards=args.shards,
                                       concurrency=1)
        build_s = time.perf_counter() - t0
        bodies = queries(256)
        print(f"index built in {build_s:.1f} s; load-testing Ray Serve...", flush=True)
        serve_res = run_serve(index_dir, args, bodies)
        print(f"serve: {serve_res['qps']} QPS, p50 {serve_res['p50_ms']} ms; bare baseline...", flush=True)
        bare_res = run_bare(index_dir, args, bodies)
        direct = run_direct(index_dir, bodies)
    result = {
        "command": "python -m bench.serve_load " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "versions": _versions(),
        "config": {"model": "tiny offline BERT (2 layers, 32 dims)" if args.model is None else args.model,
                   "dim": manifest["dim"], "passages": args.passages, "shards": args.shards,
                   "clients": args.clients, "seconds": args.seconds, "index_build_s": round(build_s, 1)},
        "serve": serve_res,
        "bare": bare_res,
        "direct": direct,
        "ratio": {
            "p50": round(serve_res["p50_ms"] / bare_res["p50_ms"], 2),
            "p99": round(serve_res["p99_ms"] / bare_res["p99_ms"], 2),
            "qps": round(serve_res["qps"] / bare_res["qps"], 2),
        },
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "serve_load.json", result)
    write_text_atomic(args.out / "serve_load.md", markdown(result))
    print(markdown(result))
    errors = serve_res["errors"] + bare_res["errors"]
    if errors:
        print(f"FAILED: {errors} errors", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
