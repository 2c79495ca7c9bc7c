"""Loopback load test of the Ray Serve retrieval app vs a bare single-process server, with Locust.

``python -m bench.serve_load [--model DIR] [--clients 8] [--seconds 15] [--shards 2]``

One run measures, with the same encoder, the same index files and the same Locust load
(headless, ``bench/locust_search.py``: closed-loop users, every answer checked for 200 and k hits):

1. **bare**: the same FastAPI routes, validation and guard (``hybrid_ray.serving.http.make_api``)
   over ``bench.serve_baseline.LocalRetriever`` -- encoder + every shard's FAISS index in ONE uvicorn
   process on 127.0.0.1, no Ray, no batching. Run first, before Ray starts, so the two never share the CPUs.
2. **serve**: the real app (``hybrid_ray.serving.app:build_app``) in its common deployment: the
   index fits ``ingress_shard_budget_mb``, so the shards are held in the Retriever replica
   (HTTP proxy -> Retriever, one actor hop, ``@serve.batch``).
3. **serve fan-out**: the same app with ``ingress_shard_budget_mb: 0`` (one ShardSearcher deployment
   per shard, a handle call per shard per batch): the path every query took before in-ingress shards.
4. **serve direct ingress**: the common deployment again, in a fresh Ray cluster started with Ray
   Serve's throughput-optimised mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: direct ingress, so the
   Retriever replica answers HTTP itself and no proxy process sits in front; user code on the
   replica's event loop; gRPC between deployments). ``hybrid-ray serve --direct-ingress`` deploys this.
5. **direct**: in-process encode + search calls, sequential, no HTTP: the floor.

Each server gets a one-user Locust run (the per-request path cost without queueing) and a
``--clients``-user run for ``--seconds`` after a warm-up. p50/p95/p99 and QPS are computed from
Locust's exact per-request samples (its CSV percentiles are bucketed). Every non-200 answer, wrong
hit count or exception is an error; the run fails (exit 1) if there is any. A third of the queries
carry a language filter. The 1-minute load average is recorded before and after every phase (the
machine is shared). Writes bench/results/serve_load.json and serve_load.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import command, loadavg, machine, versions, write_results
from hybrid_ray.driver.serve import direct_ingress_env  # what `hybrid-ray serve --direct-ingress` sets
from hybrid_ray.local import free_port

RESULTS = Path(__file__).parent / "results"
LOCUSTFILE = Path(__file__).with_name("locust_search.py")
LANGS = ("en", "de", "fr")
WORDS = ["god", "light", "day", "night", "water", "earth", "heaven", "man", "said", "let", "cat", "dog",
         "house", "red", "blue", "green", "one", "two", "three", "world", "hello", "the", "of", "and"]
#: The issue's targets for the common deployment against the bare baseline (same run).
TARGET_P50_RATIO, TARGET_QPS_RATIO = 1.5, 0.67


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
        "local_batch_ms": mean("hybrid_ray_encode_latency_seconds", 'kind="query+search"'),
        "shard_call_ms": {lab.split('"')[1]: mean("hybrid_ray_shard_latency_seconds", lab)
                          for lab in shard_labels},
    }


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


def server_cpu_s() -> dict[int, float] | None:
    """CPU seconds (user + system) of every process descended from this one, by pid (Linux /proc).

    Why: on a shared machine the kernel splits the cores between everyone's runnable threads, so a
    server made of several processes (proxy, replicas, Ray) gets a larger share than one bare
    process. CPU time per request is the comparison that does not depend on that share. Locust is
    started and gone between two snapshots, so it is never counted; this process idles meanwhile.
    """
    try:
        tick = os.sysconf("SC_CLK_TCK")
        parent: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d.name)] = int(fields[1])
            cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
    except (OSError, ValueError, IndexError):
        return None
    me, out = os.getpid(), {}
    for pid in cpu:
        p, seen = parent.get(pid), 0
        while p and p != me and seen < 64:
            p, seen = parent.get(p), seen + 1
        if p == me:
            out[pid] = cpu[pid]
    return out


def cpu_delta(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
    if before is None or after is None:
        return None
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def _process_name(pid: int) -> str:
    """A short name: Ray's actor title (``ray::ProxyActor``), else the program (``raylet``, ``gcs_server``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split()[0]
    if len([a for a in argv if a]) == 1:  # a rewritten title: one string, words separated by spaces
        argv = [a.encode() for a in first.split(" ")]
        first = argv[0].decode(errors="replace")
    prog = Path(first).name
    if prog.startswith("python") and b"-c" in argv[1:]:
        return "python -c (Ray worker)"
    if prog.startswith("python") and len(argv) > 1:
        script = next((a.decode(errors="replace") for a in argv[1:] if a and not a.startswith(b"-")), "")
        return f"python {Path(script).name}" if script else prog
    return prog


def cpu_by_process(before: dict[int, float] | None, after: dict[int, float] | None) -> dict[str, float]:
    """Where the servers' CPU went during a run, summed by process name (largest first)."""
    if before is None or after is None:
        return {}
    out: dict[str, float] = {}
    for pid, t in after.items():
        name = _process_name(pid)
        out[name] = out.get(name, 0.0) + t - before.get(pid, 0.0)
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def locust(url: str, queries_file: Path, users: int, seconds: float, warmup_s: float, work: Path,
           locust_path: str | None = None) -> dict[str, Any]:
    """One headless Locust run against ``url``: exact latency percentiles, QPS and errors."""
    out = work / f"locust-{users}u-{time.monotonic_ns()}.json"
    env = os.environ | {"BENCH_QUERIES": str(queries_file), "BENCH_WARMUP_S": str(warmup_s),
                        "BENCH_OUT": str(out)}
    if locust_path:  # a Locust installed apart from this environment (--locust-path)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (locust_path, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
           "-u", str(users), "-r", str(users), "-t", f"{warmup_s + seconds:g}s", "--only-summary",
           "--loglevel", "WARNING", "--exit-code-on-error", "0", "--csv", str(work / f"csv-{users}u")]
    loadavg_before, cpu_before = loadavg(), server_cpu_s()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=warmup_s + seconds + 120)
    cpu_after = server_cpu_s()
    server_cpu = cpu_delta(cpu_before, cpu_after)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"locust failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    data = json.loads(out.read_text())
    t_end = data["measured_from"] + seconds
    lat = np.asarray([ms for start, ms in data["samples"] if start < t_end])
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if lat.size else (lambda q: None)
    return {"users": users, "requests": int(lat.size), "errors": int(data["failures"]),
            "error_examples": data["failure_examples"], "qps": round(lat.size / seconds, 1),
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "mean_ms": round(float(lat.mean()), 2) if lat.size else None,
            # the servers' CPU over the whole run (warm-up included) per request sent in it
            "server_cpu_s": round(server_cpu, 2) if server_cpu is not None else None,
            "server_cpu_ms_per_request": round(server_cpu * 1e3 / data["samples_all"], 2)
            if server_cpu is not None and data.get("samples_all") else None,
            "server_cpu_s_by_process": cpu_by_process(cpu_before, cpu_after),
            "loadavg_before": loadavg_before, "loadavg_after": loadavg()}


def locust_version(locust_path: str | None) -> str:
    """The version of the Locust that :func:`locust` runs (it may live outside this environment)."""
    env = os.environ | ({"PYTHONPATH": locust_path} if locust_path else {})
    try:
        out = subprocess.run([sys.executable, "-m", "locust", "--version"], env=env, capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    return out.split()[1] if out.startswith("locust ") else "absent"


def measure(url: str, args: argparse.Namespace, queries_file: Path, work: Path) -> dict[str, Any]:
    """A one-user run (per-request path cost) then the ``--clients``-user load run."""
    one = locust(url, queries_file, 1, args.seq_seconds, args.warmup_s, work, args.locust_path)
    res = locust(url, queries_file, args.clients, args.seconds, args.warmup_s, work, args.locust_path)
    return res | {"one_user": {k: one[k] for k in ("requests", "errors", "qps", "p50_ms", "p95_ms")}}


def run_serve(index_dir: Path, args: argparse.Namespace, queries_file: Path, work: Path, name: str,
              **extra: Any) -> dict[str, Any]:
    """Deploy the app as ``name`` (``extra`` app args), measure it, read its metrics, delete it."""
    import httpx
    from ray import serve

    from hybrid_ray.serving.app import build_app

    app_args = {"index_dir": str(index_dir), "num_cpus_per_shard": 0.5, "retriever_num_cpus": 1,
                "access_log": False, "max_batch_size": args.max_batch_size,
                "batch_wait_timeout_s": args.batch_wait_timeout_s, **extra}
    t0 = time.perf_counter()
    serve.run(build_app(app_args), name=name, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{args.serve_port}"
    wait_ready(url)
    startup = time.perf_counter() - t0
    try:
        res = measure(url, args, queries_file, work)
        res |= batch_stats(httpx.get(f"{url}/metrics", timeout=10).text)
    finally:
        serve.delete(name)
    app_args["index_dir"] = "<tmp>/index"
    return res | {"startup_s": round(startup, 1), "app_args": app_args}


def serve_child(index_dir: str, port: int, max_batch_size: int, batch_wait_timeout_s: float) -> None:
    """A Ray cluster + Serve app in this process (env from the parent), up until stdin closes."""
    from ray import serve

    from hybrid_ray.local import init_ray
    from hybrid_ray.serving.app import build_app

    init_ray(num_cpus=4, log_to_driver=False)
    # The replica binds `port` (direct_ingress_env); Serve's proxy still starts, on another port, idle.
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    app_args = {"index_dir": index_dir, "num_cpus_per_shard": 0.5, "retriever_num_cpus": 1, "access_log": False,
                "max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s}
    serve.run(build_app(app_args), name="bench-direct", route_prefix="/", blocking=False)
    print("deployed", flush=True)
    sys.stdin.read()  # the parent closes our stdin when it is done measuring
    serve.shutdown()


def run_serve_child(index_dir: Path, args: argparse.Namespace, queries_file: Path, work: Path) -> dict[str, Any]:
    """The common deployment under Serve's direct ingress, in its own process and Ray cluster."""
    import httpx

    port = free_port()
    env = os.environ | direct_ingress_env(port)
    cmd = [sys.executable, "-m", "bench.serve_load", "--serve-child", str(index_dir), "--port", str(port),
           "--max-batch-size", str(args.max_batch_size), "--batch-wait-timeout-s", str(args.batch_wait_timeout_s)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=open(work / "serve-child.log", "w"), text=True)  # noqa: SIM115
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        startup = time.perf_counter() - t0
        res = measure(url, args, queries_file, work)
        res |= batch_stats(httpx.get(f"{url}/metrics", timeout=10).text)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return res | {"startup_s": round(startup, 1), "env": direct_ingress_env(port)}


def run_bare(index_dir: Path, args: argparse.Namespace, queries_file: Path, work: Path) -> dict[str, Any]:
    port = free_port()
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # as Ray gives a 1-CPU replica
    cmd = [sys.executable, "-m", "bench.serve_load", "--bare-server", str(index_dir), "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, 120)
        startup = time.perf_counter() - t0
        res = measure(url, args, queries_file, work)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return res | {"startup_s": round(startup, 1)}


def _met(r: dict[str, float | None]) -> bool:
    return bool(r["p50"] is not None and r["qps"] is not None and r["p50"] <= TARGET_P50_RATIO
                and r["qps"] >= TARGET_QPS_RATIO)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios(run: dict[str, Any], bare: dict[str, Any]) -> dict[str, float | None]:
    return {"p50": _ratio(run["p50_ms"], bare["p50_ms"]), "p95": _ratio(run["p95_ms"], bare["p95_ms"]),
            "qps": _ratio(run["qps"], bare["qps"]),
            "one_user_p50": _ratio(run["one_user"]["p50_ms"], bare["one_user"]["p50_ms"])}


def markdown(r: dict[str, Any]) -> str:
    s, f, b, d, c = r["serve"], r["fanout"], r["bare"], r["direct"], r["config"]
    di = r["direct_ingress"]

    def row(label: str, x: dict[str, Any]) -> str:
        return (f"| {label} | {x['requests']} | {x['errors']} | {x['qps']} | {x['p50_ms']} | {x['p95_ms']} "
                f"| {x['p99_ms']} | {x['one_user']['p50_ms']} | {x.get('server_cpu_ms_per_request')} "
                f"| {x['loadavg_before'][0]} / "
                f"{x['loadavg_after'][0]} |")

    rs, rf, rd, t = r["ratio"]["serve"], r["ratio"]["fanout"], r["ratio"]["direct_ingress"], r["targets"]
    verdict = "met" if t["met"] else "MISSED"
    verdict_di = "met" if t["met_direct_ingress"] else "MISSED"
    return "\n".join([
        "# Serving load test (loopback, Locust headless)",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores (shared with other users); 1/5/15-min "
        f"load average before the run {r['machine']['loadavg']}, after {r['loadavg_after']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "",
        f"Model: {c['model']} (dim {c['dim']}); {c['passages']} passages in {len(LANGS)} languages, "
        f"{c['shards']} shards (Flat, exact); Locust: {c['clients']} closed-loop users (FastHttpUser, no wait) "
        f"for {c['seconds']:g} s after a {c['warmup_s']:g} s warm-up, then 1 user for {c['seq_seconds']:g} s; "
        "k=10, a third of the queries language-filtered. Percentiles from every request's exact time.",
        "",
        "| run | requests | errors | QPS | p50 ms | p95 ms | p99 ms | 1-user p50 ms | server CPU ms / request "
        "| load 1m before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
        row("bare uvicorn, 1 process (baseline)", b),
        row("Ray Serve, shards in the ingress replica (common deployment)", s),
        row(f"Ray Serve, fan-out to {c['shards']} shard deployments (before)", f),
        row("Ray Serve, in-ingress shards, direct ingress (no proxy; `--direct-ingress`)", di),
        f"| direct in-process call (1 thread, no HTTP) | {d['calls']} | 0 | {d['qps_1_thread']} | {d['p50_ms']} "
        f"| | {d['p99_ms']} | | | |",
        "",
        f"**Serve (in-ingress) / bare: p50 {rs['p50']}x, p95 {rs['p95']}x, QPS {rs['qps']}x** "
        f"(targets p50 <= {TARGET_P50_RATIO}x, QPS >= {TARGET_QPS_RATIO}x: {verdict}); one user p50 "
        f"{rs['one_user_p50']}x. Fan-out / bare: p50 {rf['p50']}x, p95 {rf['p95']}x, QPS {rf['qps']}x.",
        "",
        f"**Serve with direct ingress / bare: p50 {rd['p50']}x, p95 {rd['p95']}x, QPS {rd['qps']}x** "
        f"(same targets: {verdict_di}); one user p50 {rd['one_user_p50']}x. Server CPU seconds by process: "
        f"{di.get('server_cpu_s_by_process')}; inside the replica: request {di['replica_request_ms']} ms, "
        f"batch {di['mean_batch_size']}, encode+search per batch {di['local_batch_ms']} ms.",
        "",
        f"Inside the Retriever replica under load (means): in-ingress: request {s['replica_request_ms']} ms, "
        f"batch {s['mean_batch_size']} over {s['search_batches']} batches, encode+search per batch "
        f"{s['local_batch_ms']} ms; fan-out: request {f['replica_request_ms']} ms, batch {f['mean_batch_size']}, "
        f"query encoding {f['encode_batch_ms']} ms per batch, shard round trips {f['shard_call_ms']} ms. "
        f"Client p50 minus the replica's mean request time is roughly the proxy hop. Server CPU seconds "
        f"by process during the load run: in-ingress {s.get('server_cpu_s_by_process')}; bare "
        f"{b.get('server_cpu_s_by_process')}. Startup: serve "
        f"{s['startup_s']} s, fan-out {f['startup_s']} s, bare {b['startup_s']} s.",
        "",
        "Server CPU ms / request: CPU time (user + system) of every server process over the load run "
        "(warm-up included) divided by the requests sent in it; for Serve that is the proxy, replicas, "
        "controller, raylet and GCS, for bare the one uvicorn process; Locust is not counted. On a "
        "shared machine the kernel shares the cores out per runnable thread, so several processes get "
        "more of them than one: QPS ratios then favour Serve, CPU per request does not.",
        "",
        "The bare baseline is the same FastAPI routes and guard (`hybrid_ray.serving.http.make_api`) over "
        "`bench.serve_baseline.LocalRetriever` (encoder + all shards in one uvicorn process, no batching) in "
        "a subprocess, run before Ray starts. Locust, Ray and the servers share the same cores, so absolute "
        "figures are a lower bound for a dedicated host; the ratios, from one run, are the point.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="encoder dir (default: a tiny offline encoder)")
    p.add_argument("--clients", type=int, default=8, help="Locust users of the load run")
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds of the load run")
    p.add_argument("--seq-seconds", type=float, default=6.0, help="measured seconds of the 1-user run")
    p.add_argument("--warmup-s", type=float, default=2.0, help="seconds of every run not recorded")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--passages", type=int, default=3000)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.0)
    p.add_argument("--locust-path", default=None,
                   help="extra sys.path for the Locust process (a Locust installed apart from this env)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--bare-server", default=None, help=argparse.SUPPRESS)
    p.add_argument("--serve-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare_server:
        bare_server(args.bare_server, args.port)
        return 0
    if args.serve_child:
        serve_child(args.serve_child, args.port, args.max_batch_size, args.batch_wait_timeout_s)
        return 0

    from hybrid_ray.index import build_sharded_index
    from hybrid_ray.local import apply_loopback_env, init_ray
    from hybrid_ray.testing import tiny_encoder

    apply_loopback_env()
    if locust_version(args.locust_path) == "absent":
        print("locust is not installed: pip install -c constraints.txt '.[bench]' (or point --locust-path "
              "at a directory holding it)", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    mach = machine()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            model = str(work / "tiny-model")
            tiny_encoder(model)
        index_dir = work / "index"
        t0 = time.perf_counter()
        manifest = build_sharded_index(model, corpus(args.passages), index_dir, shards=args.shards, local=True)
        build_s = time.perf_counter() - t0
        queries_file = work / "queries.json"
        queries_file.write_text(json.dumps(queries(256)))
        print(f"index built in {build_s:.1f} s; bare baseline...", flush=True)
        bare_res = run_bare(index_dir, args, queries_file, work)
        print(f"bare: {bare_res['qps']} QPS, p50 {bare_res['p50_ms']} ms; Ray Serve (in-ingress)...", flush=True)
        import ray
        from ray import serve

        # Replica logs are not forwarded: this process drives the runs.
        init_ray(num_cpus=4, log_to_driver=False)
        args.serve_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": args.serve_port})
        try:
            serve_res = run_serve(index_dir, args, queries_file, work, "bench")
            print(f"serve: {serve_res['qps']} QPS, p50 {serve_res['p50_ms']} ms; fan-out...", flush=True)
            fan_res = run_serve(index_dir, args, queries_file, work, "bench-fanout", ingress_shard_budget_mb=0)
            print(f"fan-out: {fan_res['qps']} QPS, p50 {fan_res['p50_ms']} ms; direct...", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
        print("Ray Serve with direct ingress (own cluster)...", flush=True)
        di_res = run_serve_child(index_dir, args, queries_file, work)
        print(f"direct ingress: {di_res['qps']} QPS, p50 {di_res['p50_ms']} ms; in-process floor...", flush=True)
        direct = run_direct(index_dir, queries(256))
    rs = ratios(serve_res, bare_res)
    rd = ratios(di_res, bare_res)
    result = {
        "command": command("bench.serve_load", argv),
        "machine": mach,
        "loadavg_after": loadavg(),
        "versions": versions(["ray", "torch", "faiss-cpu", "fastapi", "uvicorn", "numpy"])
        | {"locust": locust_version(args.locust_path)},
        "config": {"model": "tiny offline BERT (2 layers, 32 dims)" if args.model is None else args.model,
                   "dim": manifest["dim"], "passages": args.passages, "shards": args.shards,
                   "clients": args.clients, "seconds": args.seconds, "seq_seconds": args.seq_seconds,
                   "warmup_s": args.warmup_s, "index_build_s": round(build_s, 1), "load_tool": "locust headless"},
        "bare": bare_res,
        "serve": serve_res,
        "fanout": fan_res,
        "direct_ingress": di_res,
        "direct": direct,
        "ratio": {"serve": rs, "fanout": ratios(fan_res, bare_res), "direct_ingress": rd},
        "targets": {"p50_ratio_max": TARGET_P50_RATIO, "qps_ratio_min": TARGET_QPS_RATIO,
                    "met": _met(rs), "met_direct_ingress": _met(rd)},
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    write_results(args.out, "serve_load", result, markdown(result))
    print(markdown(result))
    errors = serve_res["errors"] + bare_res["errors"] + fan_res["errors"] + di_res["errors"]
    if errors:
        print(f"FAILED: {errors} errors", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
