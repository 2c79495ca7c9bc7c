"""``hybrid-ray serve --index DIR``: run the retrieval app on a local Ray (loopback) until Ctrl-C.

Same application as ``serve run serve/config.yaml`` and the KubeRay RayService
(``hybrid_ray.serving.app:build_app``); this driver only adds the local-cluster defaults (127.0.0.1, Ray via
:func:`hybrid_ray.local.init_ray`), prints ready-to-paste curl commands and shuts down cleanly.

``--no-blocking`` deploys, waits until ``/ready`` answers and returns: on a real cluster
(``RAY_ADDRESS`` set) the app keeps running after the driver exits; on a local Ray it is a
deploy-and-check smoke test (the local cluster goes away with the process).

``--direct-ingress`` starts the local Ray with Ray Serve's throughput-optimised mode
(:func:`direct_ingress_env`): the Retriever replica itself answers HTTP on ``--port`` and no proxy
process relays each request (bench/results/serve_load.md measures both). It is Ray's own,
experimental, feature: with more than one Retriever replica each gets the next port of the range,
and a replaced replica (a redeploy, a crash) binds the next free port while the old one drains
(Ray's 30 s minimum), so clients must follow the port; Ray's HAProxy mode is the cluster answer.
On a cluster the same variables go in the Ray containers' environment (k8s/rayservice-retrieval.yaml).

On a local Ray every shard file is checked against the manifest (size + sha256) before Ray starts,
so a missing or corrupt shard is one clean error line naming the file (exit 2) rather than a
deployment that keeps retrying; on a cluster the shard replicas do that check themselves and a
failed deployment is reported with the shard's own message (:func:`deploy_error`).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hybrid_ray.cli import auto_or_number, run_main
from hybrid_ray.console import add_verbose_flag, configure_console, serve_start_kwargs
from hybrid_ray.errors import ConfigError, HybridRayError

APP_NAME = "hybrid-ray"


def direct_ingress_env(port: int, replicas: int = 1) -> dict[str, str]:
    """Environment for Ray Serve's direct ingress on ``port`` (set before Ray starts).

    ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` turns on direct ingress (the ingress replica runs its own
    HTTP server), runs user code on the replica's event loop and uses gRPC between deployments.
    Ingress replicas take HTTP ports from the ``RAY_SERVE_DIRECT_INGRESS_*_HTTP_PORT`` range in
    order, so the first one gets ``port``. Serve (2.60) still starts its HTTP proxy: it must listen
    on another port (``main`` picks a free one), and nothing is sent to it.
    """
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + max(1, replicas) + 8)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hybrid-ray serve", description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="index directory built by 'hybrid-ray index'")
    p.add_argument("--model", default=None, help="encoder directory (default: the index manifest's)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--blocking", action=argparse.BooleanOptionalAction, default=True,
                   help="wait for Ctrl-C (default) or return once the app is ready")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.0)
    p.add_argument("--max-ongoing-requests", type=int, default=128)
    p.add_argument("--k-limit", type=int, default=100)
    p.add_argument("--max-query-chars", type=int, default=2048)
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024,
                   help="largest request body (bytes); larger requests get 413")
    p.add_argument("--num-gpus-per-shard", type=auto_or_number(float), default="auto",
                   help="GPUs per shard replica, or auto (default): one GPU (or a share) per shard when "
                   "the Ray cluster has GPUs and FAISS has GPU support, else CPU")
    p.add_argument("--retriever-num-gpus", type=auto_or_number(float), default="auto",
                   help="GPUs of the query encoder replica, or auto (default): GPU when the cluster has one")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8", "auto"],
                   help="query encoder engine (app arg encoder_backend): torch (default), onnx / onnx-int8 "
                   "(ONNX Runtime on CPU; exported once into the ONNX cache if the model has no onnx/), "
                   "auto (onnx when the model dir has a graph and no GPU is visible)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF indexes: override the manifest's nprobe")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW indexes: override the manifest's efSearch")
    p.add_argument("--num-cpus-per-shard", type=float, default=1.0)
    p.add_argument("--retriever-replicas", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the local Ray")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip shard sha256 checks")
    p.add_argument("--ready-timeout-s", type=float, default=300.0)
    p.add_argument("--direct-ingress", action="store_true",
                   help="local Ray only: the Retriever replica answers HTTP on --port itself, no Serve proxy "
                   "in front (Ray Serve's throughput-optimised mode; lower latency, see bench/results/serve_load.md)")
    add_verbose_flag(p)
    return p.parse_args(argv)


def app_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The ``build_app`` arguments for these options (same keys as serve/config.yaml)."""
    args: dict[str, Any] = {
        "index_dir": str(Path(ns.index).resolve()),
        "max_batch_size": ns.max_batch_size,
        "batch_wait_timeout_s": ns.batch_wait_timeout_s,
        "max_ongoing_requests": ns.max_ongoing_requests,
        "k_limit": ns.k_limit,
        "max_query_chars": ns.max_query_chars,
        "max_body_bytes": ns.max_body_bytes,
        "num_gpus_per_shard": ns.num_gpus_per_shard,
        "retriever_num_gpus": ns.retriever_num_gpus,
        "encoder_backend": ns.backend,
        "num_cpus_per_shard": ns.num_cpus_per_shard,
        "retriever_replicas": ns.retriever_replicas,
        "verify": ns.verify,
    }
    if ns.model:
        args["model_dir"] = str(Path(ns.model).resolve())
    if ns.nprobe is not None:
        args["nprobe"] = ns.nprobe
    if ns.ef_search is not None:
        args["ef_search"] = ns.ef_search
    return args


def deploy_error(exc: BaseException) -> str:
    """The useful line of a failed ``serve.run``: the shard's own 'is not serving' message if any."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    cause = next((ln for ln in lines if "is not serving:" in ln), None)
    if cause is None:
        cause = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else type(exc).__name__)
    return f"deploying the app failed: {cause}"


def preflight(args: dict[str, Any], local: bool) -> float:
    """Everything checkable before Ray starts: app arguments, manifest, search parameters, and
    (``local``: the index is on this machine) every shard file's size and sha256.

    Returns the CPUs the app reserves (shard replicas + retriever replicas).
    """
    from hybrid_ray.index import read_manifest, verify_index
    from hybrid_ray.serving.args import AppArgs, serving_search_params

    a = AppArgs.parse(args)
    manifest = verify_index(a.index_dir, a.verify) if local else read_manifest(a.index_dir)
    serving_search_params(manifest, a)
    return len(manifest["shards"]) * a.num_cpus_per_shard + a.retriever_replicas * a.retriever_num_cpus


def local_num_cpus(requested: int | None, app_cpus: float) -> int:
    """Logical CPUs for a local Ray: ``--num-cpus`` if given, else the machine's cores, raised to
    what the app reserves -- otherwise a replica that does not fit waits forever to be scheduled
    (e.g. 2 shards + the retriever at 1 CPU each on a 2-core laptop)."""
    import os

    if requested is not None:
        if requested < math.ceil(app_cpus):
            raise ConfigError(f"the app reserves {app_cpus:g} CPUs (shards x --num-cpus-per-shard + retriever); "
                              "raise --num-cpus or lower --num-cpus-per-shard", key="--num-cpus", value=requested)
        return requested
    return max(os.cpu_count() or 1, math.ceil(app_cpus))


def examples(url: str) -> str:
    return "\n".join([
        f"  curl -s {url}/ready",
        f"  curl -s -X POST {url}/search -H 'content-type: application/json' "
        "-d '{\"query\": \"let there be light\", \"k\": 5}'",
        f"  curl -s -X POST {url}/search -H 'content-type: application/json' "
        "-d '{\"query\": \"let there be light\", \"k\": 5, \"lang\": [\"en\", \"de\"]}'",
        f"  curl -s -X POST {url}/embed -H 'content-type: application/json' "
        "-d '{\"texts\": [\"hello world\"], \"kind\": \"query\"}'",
        f"  curl -s {url}/metrics",
        f"  open {url}/docs   (OpenAPI: {url}/openapi.json)",
    ])


def wait_ready(url: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``/ready`` until 200; a shard that cannot load fails deployment before this."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/ready", timeout=10)
            if r.status_code == 200:
                return r.json()
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise HybridRayError(f"the app did not become ready within {timeout_s:.0f} s: {last}")


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    configure_console(ns.verbose)
    if not 0 < ns.port < 65536:
        raise ConfigError("must be 1..65535", key="--port", value=ns.port)
    import ray
    from ray import serve

    from hybrid_ray.local import free_port, init_ray, on_cluster
    from hybrid_ray.serving.app import build_app

    args = app_args(ns)
    local = not on_cluster()
    app_cpus = preflight(args, local=local)  # before starting anything
    if ns.direct_ingress:
        if not local:
            raise ConfigError("set the direct-ingress variables in the cluster's Ray containers instead "
                              "(see k8s/rayservice-retrieval.yaml)", key="--direct-ingress", value=True)
        import os

        os.environ.update(direct_ingress_env(ns.port, ns.retriever_replicas))  # read when Ray starts
    init_ray(num_cpus=local_num_cpus(ns.num_cpus, app_cpus) if local else None)
    try:
        app = build_app(args)  # resolves GPU 'auto' from the cluster's resources
        # Direct ingress: the Retriever replica binds --port itself; Serve still starts its proxy, so
        # give that one another (unused) port or the replica could not bind ours.
        proxy_port = free_port(ns.host) if ns.direct_ingress else ns.port
        serve.start(http_options={"host": ns.host, "port": proxy_port}, **serve_start_kwargs())
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as exc:  # deployment failed (e.g. a shard failed its health check)
            raise HybridRayError(deploy_error(exc)) from exc
        host = "127.0.0.1" if ns.host in ("0.0.0.0", "::") else ns.host
        url = f"http://{host}:{ns.port}"
        info = wait_ready(url, ns.ready_timeout_s)
        n = sum(s.get("count") or 0 for s in info["shards"])
        print(f"hybrid-ray serving {n} passages from {len(info['shards'])} shard(s) "
              f"({', '.join(info['languages'])}) at {url}")
        print("try:\n" + examples(url), flush=True)
        if not ns.blocking:
            return 0
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print("Ctrl-C to stop.", flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        print("shutting down...", file=sys.stderr)
        return 0
    finally:
        if not (on_cluster() and not ns.blocking):  # on a cluster, --no-blocking leaves it running
            serve.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    run_main(main)
