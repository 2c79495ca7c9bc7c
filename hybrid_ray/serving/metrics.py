"""Prometheus metrics of one Retriever replica (``GET /metrics``).

Metrics are per replica, in a dedicated ``CollectorRegistry`` (so they do not mix with Ray's own
process metrics); scrape each replica, or use Ray's metrics export for cluster totals. The metric
names are part of the served API (dashboards and the load benchmark read them).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class ServeMetrics:
    """Prometheus metrics in a dedicated registry (scraped from ``GET /metrics``)."""

    LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hybrid_ray_requests_total", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("hybrid_ray_request_latency_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=self.LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("hybrid_ray_batch_size", "items per @serve.batch call", ["op"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.encode_latency = Histogram("hybrid_ray_encode_latency_seconds", "encoder time per batch",
                                        ["kind"], buckets=self.LATENCY_BUCKETS, registry=r)
        self.shard_latency = Histogram("hybrid_ray_shard_latency_seconds",
                                       "shard search round trip seen by the retriever", ["shard"],
                                       buckets=self.LATENCY_BUCKETS, registry=r)
        self.shard_errors = Counter("hybrid_ray_shard_errors_total", "failed shard calls", ["shard"],
                                    registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
