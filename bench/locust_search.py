"""Locust user for :mod:`bench.serve_load`: closed-loop ``POST /search`` with answer checks.

Run by the benchmark as ``python -m locust -f bench/locust_search.py --headless ...`` (a separate
process: Locust monkey-patches the standard library with gevent, so it never runs inside the
benchmark's own process). Inputs come through environment variables:

- ``BENCH_QUERIES``: a JSON file with the request bodies (each user walks them from its own offset).
- ``BENCH_WARMUP_S``: requests that *start* before this many seconds after the test's start are
  sent but not recorded (connections, caches and batching settle first).
- ``BENCH_OUT``: where the exact per-request samples are written at the end (JSON). Locust's own
  CSV percentiles are rounded to its response-time buckets (whole ms below 100 ms, 10 ms above),
  too coarse for a ratio of two p50s of a few ms; the benchmark computes p50/p95/p99 from these.

A request counts as failed unless it answers 200 with exactly ``k`` hits.
"""

from __future__ import annotations

import itertools
import json
import os
import time

from locust import FastHttpUser, constant, events, task

_BODIES = json.loads(open(os.environ["BENCH_QUERIES"], encoding="utf-8").read())
_WARMUP_S = float(os.environ.get("BENCH_WARMUP_S", "2"))
_T0 = time.time()
_SAMPLES: list[tuple[float, float]] = []  # (start epoch s, response time ms) after the warm-up
_ALL = [0]  # every request sent, warm-up included (the server CPU time is per request of the whole run)
_FAILURES: list[str] = []
_OFFSETS = itertools.count()


@events.test_start.add_listener
def _started(environment, **_kw) -> None:
    global _T0
    _T0 = time.time()


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception, start_time=None, **_kw) -> None:
    _ALL[0] += 1
    start = start_time if start_time is not None else time.time() - response_time / 1e3
    if start - _T0 < _WARMUP_S:
        return
    _SAMPLES.append((start, float(response_time)))
    if exception is not None:
        _FAILURES.append(f"{name}: {exception!r}"[:300])


@events.quitting.add_listener
def _write(environment, **_kw) -> None:
    out = os.environ.get("BENCH_OUT")
    if not out:
        return
    measured_from = _T0 + _WARMUP_S
    data = {"t_start": _T0, "measured_from": measured_from, "t_end": time.time(),
            "samples": _SAMPLES, "samples_all": _ALL[0], "failures": len(_FAILURES), "failure_examples": _FAILURES[:5]}
    tmp = f"{out}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, out)


class SearchUser(FastHttpUser):
    """One closed-loop client: the next request leaves when the previous answer is in."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.i = next(_OFFSETS) * 7

    @task
    def search(self) -> None:
        body = _BODIES[self.i % len(_BODIES)]
        self.i += 1
        with self.client.post("/search", json=body, name="/search", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {(r.text or '')[:200]}")
                return
            try:
                hits = r.json()["hits"]
            except (ValueError, KeyError, TypeError) as exc:
                r.failure(f"bad body: {exc!r}")
                return
            if len(hits) != body["k"]:
                r.failure(f"{len(hits)} hits for k={body['k']}")
