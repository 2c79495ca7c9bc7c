"""Live resilience of the Serve app on loopback: stalled clients, and a shard replica killed under load.

Both tests deploy the real app (``build_app``, tiny encoder, 2-shard index) on one local Ray
cluster started for the module (with the dashboard: the shard-kill test finds the replica's PID
through Ray's state API). Each test deploys its own application and deletes it afterwards.

- **Slow clients** (in-ingress shards, the common deployment): 200 connections send their headers
  and part of the body, then stall. While they are connected ``/health`` must answer 200 within
  1 s (and a normal ``/search`` must still work); each stalled request must get 408 once
  ``body_timeout_s`` has passed, not before and not much later.
- **Shard kill** (fan-out: ``ingress_shard_budget_mb: 0``): closed-loop /search load runs while
  ``kill -9`` hits one shard replica's process. No answer may be wrong or partial (every 200 is
  the exact pre-kill answer), every error is a 503 naming the killed shard, ``/ready`` says 503
  within 2 s of the kill and 200 again after the replacement replica is up. The recovery time is
  printed, and written to ``bench/results/serve_shard_kill.json`` with ``HYBRID_RAY_RECORD_RESULTS=1``
  (a measurement, not asserted).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from hybrid_ray.local import free_port

WORDS = ["god", "light", "day", "night", "water", "earth", "heaven", "man", "cat", "dog", "house", "red"]
LANGS = ("en", "de", "fr")
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
N_STALLED = 200
BODY_TIMEOUT_S = 4.0


def _corpus(n: int = 60) -> pa.Table:
    rows = []
    for i in range(n):
        lang = LANGS[i % 3]
        text = " ".join(WORDS[(i * 5 + j * 7) % len(WORDS)] for j in range(2 + i % 5)) + f" {i}"
        rows.append({"docid": f"d{i}/{lang}", "lang": lang, "text": text})
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    """A 2-shard index and a loopback Ray cluster (dashboard on: the state API) with Serve on a free port."""
    import ray
    from ray import serve

    from hybrid_ray.index import build_sharded_index
    from hybrid_ray.local import init_ray

    index = tmp_path_factory.mktemp("resilience") / "index"
    build_sharded_index(tiny_model_dir, _corpus(), index, shards=2, local=True)
    init_ray(num_cpus=4, include_dashboard=True)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield index, f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _deploy(name: str, index: Path, url: str, **extra) -> None:
    from ray import serve

    from hybrid_ray.serving.app import build_app

    args = {"index_dir": str(index), "num_cpus_per_shard": 0.5, "retriever_num_cpus": 1,
            "access_log": False, "k_limit": 20, **extra}
    serve.run(build_app(args), name=name, route_prefix="/", blocking=False)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"app {name} not ready after 180 s")


# --------------------------------------------------------------------------- stalled clients
def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict] | None:
    """(status, JSON body) once ``buf`` holds a whole response, else None."""
    head, sep, rest = bytes(buf).partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    length = int(headers.get("content-length", "-1"))
    if length < 0 or len(rest) < length:
        return None
    return int(lines[0].split()[1]), json.loads(rest[:length])


@pytest.mark.slow
def test_stalled_clients_get_408_and_never_lock_out_probes(cluster):
    check_stalled_clients(*cluster)


def check_stalled_clients(index: Path, url: str, deploy: bool = True) -> None:
    """Stall N_STALLED uploads, probe, collect the 408s (shared with the direct-ingress test, which
    deploys its app once with ``body_timeout_s=BODY_TIMEOUT_S`` and passes ``deploy=False``)."""
    from ray import serve

    if deploy:
        _deploy("stalled", index, url, body_timeout_s=BODY_TIMEOUT_S)
    host, port = url.removeprefix("http://").split(":")
    body = b'{"query": "god light", "k": 3}'.ljust(100)
    head = (f"POST /search HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    socks, sent_at = [], []
    try:
        for _ in range(N_STALLED):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(head + body[:13])  # headers + 13 of 100 body bytes, then nothing
            socks.append(s)
            sent_at.append(time.monotonic())
        # more stalled connections than the Retriever's request slots would be without the guard (128)
        time.sleep(0.5)
        with httpx.Client(base_url=url, timeout=10) as http:
            for _ in range(5):
                t0 = time.monotonic()
                r = http.get("/health")
                took = time.monotonic() - t0
                assert r.status_code == 200 and took < 1.0, (r.status_code, round(took, 3))
            r = http.post("/search", json={"query": "god light", "k": 3})
            assert r.status_code == 200 and len(r.json()["hits"]) == 3, r.text
            assert time.monotonic() - sent_at[-1] < BODY_TIMEOUT_S, "probes ran too late to prove anything"

        sel = selectors.DefaultSelector()
        bufs = {s.fileno(): bytearray() for s in socks}
        for i, s in enumerate(socks):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        answers: dict[int, tuple[int, dict, float]] = {}
        deadline = sent_at[-1] + BODY_TIMEOUT_S + 15
        while len(answers) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                i, s = key.data, key.fileobj
                chunk = s.recv(65536)
                bufs[s.fileno()].extend(chunk)
                got = _read_response(s, bufs[s.fileno()])
                if got is not None or not chunk:
                    answers[i] = (*(got or (0, {})), time.monotonic() - sent_at[i])
                    sel.unregister(s)
        sel.close()
    finally:
        for s in socks:
            s.close()
        if deploy:
            serve.delete("stalled")
    assert len(answers) == N_STALLED, f"only {len(answers)} of {N_STALLED} stalled requests were answered"
    statuses = {st for st, _, _ in answers.values()}
    assert statuses == {408}, statuses
    waits = sorted(w for _, _, w in answers.values())
    # cut off by the body timeout: not before it (minus clock slack), and within it plus the proxy hop
    assert waits[0] >= BODY_TIMEOUT_S - 0.5 and waits[-1] <= BODY_TIMEOUT_S + 5.0, (waits[0], waits[-1])
    _, sample, _ = answers[0]
    assert set(sample) == {"error", "detail"} and "body_timeout_s" in sample["error"]
    print(f"\n408 after {waits[0]:.2f}-{waits[-1]:.2f} s (body_timeout_s {BODY_TIMEOUT_S:g})")


# --------------------------------------------------------------------------- shard kill under load
def _replica_pid(app: str, deployment: str) -> int:
    import ray
    from ray.util.state import list_actors

    # this cluster's address: other people's local clusters may run on the same machine
    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                         detail=True, limit=1000)
    pids = [a.pid for a in actors if a.class_name == f"ServeReplica:{app}:{deployment}"]
    assert len(pids) == 1, [(a.class_name, a.pid) for a in actors]
    return int(pids[0])


@pytest.mark.slow
def test_shard_kill_under_load_fails_clean_and_recovers(cluster):
    index, url = cluster
    from ray import serve

    app = "shardkill"
    _deploy(app, index, url, ingress_shard_budget_mb=0, shard_timeout_s=2.0, probe_timeout_s=0.5)
    queries = [{"query": f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5) % len(WORDS)]}", "k": 5,
                **({"lang": LANGS[i % 3]} if i % 4 == 3 else {})} for i in range(12)]
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/ready").json()["shards"][0]["name"] == "shard-0000"
        expected = {}
        for q in queries:
            r = http.post("/search", json=q)
            assert r.status_code == 200, r.text
            expected[json.dumps(q, sort_keys=True)] = [(h["docid"], h["score"]) for h in r.json()["hits"]]
            assert len(r.json()["hits"]) == 5

    stop = threading.Event()
    answers: list[tuple[float, int, dict, str]] = []  # (time, status, body, query key)
    ready: list[tuple[float, int]] = []

    def load(c: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = c
            while not stop.is_set():
                q = queries[i % len(queries)]
                i += 1
                try:
                    r = http.post("/search", json=q)
                    answers.append((time.monotonic(), r.status_code, r.json(), json.dumps(q, sort_keys=True)))
                except (httpx.HTTPError, ValueError) as exc:
                    answers.append((time.monotonic(), -1, {"exception": repr(exc)}, ""))

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                try:
                    ready.append((time.monotonic(), http.get("/ready").status_code))
                except httpx.HTTPError:
                    ready.append((time.monotonic(), -1))
                time.sleep(0.1)

    threads = [threading.Thread(target=load, args=(c,), daemon=True) for c in range(4)]
    threads.append(threading.Thread(target=probe, daemon=True))
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)  # load running
        pid = _replica_pid(app, "shard-0")
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = t_kill + 120
        t_recovered = None
        while time.monotonic() < deadline:
            time.sleep(0.2)
            after = [(t, st) for t, st in ready if t > t_kill]
            down = [t for t, st in after if st == 503]
            if down and any(st == 200 and t > down[0] for t, st in after):
                t_recovered = next(t for t, st in after if st == 200 and t > down[0])
                break
        time.sleep(2.0)  # load keeps running on the recovered service
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=40)
        with httpx.Client(base_url=url, timeout=10) as http:
            metrics = http.get("/metrics").text
        serve.delete(app)

    after_kill = [(t, st) for t, st in ready if t > t_kill]
    first_503 = next((t for t, st in after_kill if st == 503), None)
    assert first_503 is not None, f"/ready never said 503 after the kill: {after_kill[:20]}"
    assert first_503 - t_kill <= 2.0, f"/ready said 503 only {first_503 - t_kill:.2f} s after the kill"
    assert t_recovered is not None, f"/ready not 200 again within 120 s: {after_kill[-5:]}"

    wrong, bad_errors = [], []
    for _, status, body, key in answers:
        if status == 200:
            got = [(h["docid"], h["score"]) for h in body["hits"]]
            if got != expected[key]:  # partial (fewer shards) or wrong results
                wrong.append((key, got))
        elif not (status == 503 and set(body) == {"error", "detail"} and "shard-0000" in body["error"]):
            bad_errors.append((status, body))
    n_503 = sum(1 for _, st, _, _ in answers if st == 503)
    assert not wrong, wrong[:3]
    assert not bad_errors, bad_errors[:3]
    assert n_503 > 0, "no request saw the lost shard: the kill did not happen under load"
    assert sum(1 for t, st, _, _ in answers if st == 200 and t > t_recovered) > 0, "no answers after recovery"
    shard_errors = [ln for ln in metrics.splitlines()
                    if ln.startswith('hybrid_ray_shard_errors_total{shard="shard-0000"}')]
    assert shard_errors and float(shard_errors[0].rsplit(" ", 1)[1]) > 0, "shard errors not counted"

    first_search_503 = min(t for t, st, _, _ in answers if st == 503)
    ok_again = [t for t, st, _, _ in answers if st == 200 and t > first_search_503]
    result = {
        "test": "tests/serve/test_serve_resilience.py::test_shard_kill_under_load_fails_clean_and_recovers",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "ready_503_after_kill_s": round(first_503 - t_kill, 3),
        "ready_200_again_after_kill_s": round(t_recovered - t_kill, 3),
        "first_search_503_after_kill_s": round(first_search_503 - t_kill, 3),
        "search_200_again_after_kill_s": round(ok_again[0] - t_kill, 3) if ok_again else None,
        "requests": len(answers),
        "ok_200": sum(1 for _, st, _, _ in answers if st == 200),
        "errors_503_naming_shard": n_503,
        "wrong_or_partial": len(wrong),
        "config": {"shards": 2, "load_clients": 4, "shard_timeout_s": 2.0, "probe_timeout_s": 0.5,
                   "ingress_shard_budget_mb": 0},
    }
    print("\nshard kill:", json.dumps(result))
    if os.environ.get("HYBRID_RAY_RECORD_RESULTS") == "1":  # a recorded run, not every CI run
        from hybrid_ray.io import write_json_atomic

        write_json_atomic(RESULTS / "serve_shard_kill.json", result)
