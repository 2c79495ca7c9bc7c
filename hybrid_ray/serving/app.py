"""Ray Serve retrieval application over a sharded index directory (``hybrid-ray index`` output).

``hybrid_ray.serving.app:build_app`` is the import path of ``serve run`` / ``serve deploy``
(``serve/config.yaml``), the KubeRay RayService and ``hybrid-ray serve``. Topology::

    HTTP --> Retriever (ingress, FastAPI, @serve.batch query encoding)
                 |-- shard-0: ShardSearcher (FAISS index + docid/lang/text of shard 0)
                 |-- shard-1: ShardSearcher
                 ...

Why one deployment per shard: a shard is the unit the index builder writes and verifies, so it is
the natural unit of memory placement (one GPU, or one CPU node, per shard) and of failure. Each
query batch is fanned out to every shard concurrently and the answers are merged exactly
(:mod:`hybrid_ray.serving.shard`). The other concerns live next to this module: arguments and
GPU planning (:mod:`.args`), HTTP routes (:mod:`.http`), metrics (:mod:`.metrics`), batching
(:mod:`.batching`), the query encoder (:mod:`.encoder`).

Failure policy: a shard whose files are missing or do not match the manifest checksums never
serves. Its ``check_health`` raises the loading error (Serve runs this check before marking a new
replica healthy, so the deployment fails loudly with the file name), ``GET /ready`` answers 503
naming the shard, and ``POST /search`` answers 503 instead of returning results from fewer shards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from hybrid_ray.console import deployment_log_options
from hybrid_ray.errors import DataError, HybridRayError
from hybrid_ray.index import read_manifest, shard_name
from hybrid_ray.serving.args import AppArgs, cluster_gpus, faiss_has_gpu, plan_gpus, serving_search_params
from hybrid_ray.serving.batching import BatchedEncoding, SearchItem
from hybrid_ray.serving.encoder import check_encoder, load_encoder
from hybrid_ray.serving.http import ApiError, RetrievalService, make_api
from hybrid_ray.serving.metrics import ServeMetrics
from hybrid_ray.serving.shard import ShardCore, ShardHits, merge_hits

log = logging.getLogger(__name__)


# health_check_period_s: the Serve controller notices a dead replica on its next health check and
# only then starts a replacement, so this bounds a lost shard's outage (measured with 10 s: /ready
# 200 again 8.7 s after a kill -9). check_health is a field read: probing every 2 s costs nothing.
@serve.deployment(health_check_period_s=2, health_check_timeout_s=30)
class ShardSearcher:
    """One index shard in one replica. A loading error is kept and raised by ``check_health``."""

    def __init__(self, index_dir: str, shard: int, verify: bool = True, omp_threads: int = 1,
                 search_params: dict[str, int] | None = None) -> None:
        import faiss

        # FAISS's OpenMP threads default to every core and spin while waiting; on a shared node
        # that burns the CPU other replicas need. Match the replica's CPU reservation instead.
        faiss.omp_set_num_threads(max(1, int(omp_threads)))
        self.shard = shard
        self.name = shard_name(shard)  # the index builder's name; the manifest's once loaded
        self.core: ShardCore | None = None
        self.error: str | None = None
        try:
            self.core = ShardCore.load(index_dir, shard, verify=verify, gpu=self._gpu_assigned(),
                                       search_params=search_params)
            self.name = self.core.name
        except (HybridRayError, OSError, KeyError, RuntimeError) as exc:
            # Kept, not raised: check_health reports it (with the file name) on every probe.
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("shard %s failed to load: %s", shard, self.error)

    @staticmethod
    def _gpu_assigned() -> bool:
        """GPU FAISS only when FAISS has GPU support *and* Ray gave this replica a GPU."""
        import faiss

        get_num_gpus = getattr(faiss, "get_num_gpus", None)
        if get_num_gpus is None or get_num_gpus() <= 0:
            return False
        try:
            import ray

            return bool(ray.get_gpu_ids())
        except Exception:  # not inside Ray: trust FAISS
            return True

    def check_health(self) -> None:
        if self.error is not None:
            raise DataError(f"{self.name} is not serving: {self.error}")

    def info(self) -> dict[str, Any]:
        if self.core is None:
            return {"name": self.name, "ok": False, "error": self.error}
        return self.core.info()

    def search(self, vectors: np.ndarray, k: int, langs: Sequence[str] | None = None) -> ShardHits:
        self.check_health()
        assert self.core is not None
        return self.core.search(vectors, k, langs)


@serve.deployment
@serve.ingress()
class Retriever(BatchedEncoding, RetrievalService):
    """HTTP ingress: validates, batches query encoding, searches every shard, merges.

    ``shards`` empty: the shards are held in this replica (``ingress_shard_budget_mb``), so a query
    batch costs no actor hop at all; else one ``ShardSearcher`` deployment handle per shard.
    """

    def __init__(self, shards: list[DeploymentHandle], args: dict[str, Any]) -> None:
        self.args = AppArgs.parse(args)
        self.metrics = ServeMetrics()
        self.shards = list(shards)
        manifest = read_manifest(self.args.index_dir)
        model_dir = self.args.model_dir or manifest["model_dir"]
        gpus = self.args.retriever_num_gpus
        self.encoder = load_encoder(model_dir, gpus == "auto" or float(gpus) > 0, self.args.retriever_num_cpus,
                                    self.args.encoder_backend, self.args.onnx_cache_dir)
        check_encoder(self.encoder, manifest, model_dir)
        self.dim = int(self.encoder.dim)
        self.shard_names = [s["name"] for s in manifest["shards"]]
        self.local: list[Any] = []
        if not self.shards:  # in-ingress: the plain class, constructed in this process
            params = serving_search_params(manifest, self.args)
            threads = max(1, int(self.args.retriever_num_cpus))
            self.local = [ShardSearcher.func_or_class(self.args.index_dir, i, self.args.verify, threads, params)
                          for i in range(len(self.shard_names))]
        self._languages: list[str] | None = None
        self._init_batching()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self)

    def check_health(self) -> None:
        """In-ingress shards: a shard that failed to load fails this replica's health check (named)."""
        for shard in self.local:
            shard.check_health()

    # ------------------------------------------------------------- shards
    async def _call_shard(
        self, i: int, vectors: np.ndarray, k: int, langs: tuple[str, ...] | None
    ) -> ShardHits:
        """One shard deployment's answer within ``shard_timeout_s``, else ApiError 503 naming it."""
        t0 = time.perf_counter()
        try:
            return await asyncio.wait_for(self.shards[i].search.remote(vectors, k, langs),
                                          self.args.shard_timeout_s)
        except Exception as exc:
            raise self._shard_failed(i, exc) from exc
        finally:
            self.metrics.shard_latency.labels(self.shard_names[i]).observe(time.perf_counter() - t0)

    def _shard_failed(self, i: int, exc: BaseException) -> ApiError:
        self.metrics.shard_errors.labels(self.shard_names[i]).inc()
        self._languages = None
        if isinstance(exc, TimeoutError):
            msg = f"no answer within {self.args.shard_timeout_s:g} s (shard_timeout_s)"
        else:
            msg = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        return ApiError(503, f"{self.shard_names[i]} unavailable: {msg}", detail={"shard": self.shard_names[i]})

    async def shard_status(self) -> list[dict[str, Any]]:
        """Every shard's info; a shard deployment that does not answer within ``probe_timeout_s`` is down."""
        if self.local:
            return [s.info() for s in self.local]

        async def one(i: int) -> dict[str, Any]:
            try:
                return await asyncio.wait_for(self.shards[i].info.remote(), self.args.probe_timeout_s)
            except Exception as exc:
                self.metrics.shard_errors.labels(self.shard_names[i]).inc()
                self._languages = None
                err = (str(exc).splitlines() or [""])[0][:300] or f"no answer within {self.args.probe_timeout_s:g} s"
                return {"name": self.shard_names[i], "ok": False, "error": f"{type(exc).__name__}: {err}"}

        return list(await asyncio.gather(*(one(i) for i in range(len(self.shards)))))

    async def languages(self) -> list[str]:
        if self._languages is None:
            self._languages = await super().languages()
        return self._languages

    # ------------------------------------------------------------- one batch of /search
    async def _search_items(self, items: list[SearchItem]) -> list[Any]:
        """Encode the batch's queries once, then one search per distinct language filter."""
        if self.local:
            t0 = time.perf_counter()
            out = await asyncio.to_thread(self._search_local, items)
            self.metrics.encode_latency.labels("query+search").observe(time.perf_counter() - t0)
            return out
        vecs = await self._encode([q for q, _, _ in items], "query")
        out: list[Any] = [None] * len(items)

        async def run(langs: tuple[str, ...] | None, idx: list[int]) -> None:
            kmax = max(items[j][1] for j in idx)
            try:
                parts = await asyncio.gather(*(self._call_shard(i, vecs[idx], kmax, langs)
                                               for i in range(len(self.shards))))
            except ApiError as exc:  # fails this group's requests only (503), never partial results
                for j in idx:
                    out[j] = exc
                return
            # top-kmax under a total order, cut to k, is the top-k
            for j, hits in zip(idx, merge_hits(parts, kmax), strict=True):
                out[j] = hits[: items[j][1]]

        await asyncio.gather(*(run(g, idx) for g, idx in _groups(items).items()))
        return out

    def _search_local(self, items: list[SearchItem]) -> list[Any]:
        """In-ingress: encode + search every held shard + merge, in one worker-thread call."""
        vecs = self.encoder.encode([q for q, _, _ in items], "query", self.args.encode_batch_size)
        out: list[Any] = [None] * len(items)
        for langs, idx in _groups(items).items():
            kmax = max(items[j][1] for j in idx)
            parts = []
            for i, shard in enumerate(self.local):
                t0 = time.perf_counter()
                try:
                    parts.append(shard.search(vecs[idx], kmax, langs))
                except HybridRayError as exc:
                    raise self._shard_failed(i, exc) from exc
                # the same per-shard series as fan-out mode, so dashboards do not depend on the topology
                self.metrics.shard_latency.labels(self.shard_names[i]).observe(time.perf_counter() - t0)
            for j, hits in zip(idx, merge_hits(parts, kmax), strict=True):
                out[j] = hits[: items[j][1]]
        return out


def _groups(items: list[SearchItem]) -> dict[tuple[str, ...] | None, list[int]]:
    """Batch positions by language filter: each group is one search call per shard."""
    groups: dict[tuple[str, ...] | None, list[int]] = {}
    for j, (_, _, langs) in enumerate(items):
        groups.setdefault(langs, []).append(j)
    return groups


def index_bytes(manifest: dict[str, Any]) -> int:
    """Bytes of every shard file of the index (the manifest's sizes): its memory footprint, roughly."""
    return sum(int(f["bytes"]) for s in manifest["shards"] for f in s["files"].values())


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``serve run hybrid_ray.serving.app:build_app index_dir=...`` / config files.

    Reads only the manifest here (shard count, sizes, index type). An index whose files fit
    ``ingress_shard_budget_mb`` is held by the Retriever replica itself (the common, fast
    deployment: no actor hop per query); a larger one gets one ShardSearcher deployment per shard,
    each loading and verifying its own files. ``"auto"`` GPU requests are resolved here from the connected Ray cluster's
    resources (:func:`plan_gpus`); without a Ray connection (``serve run module:build_app``
    imports the app before connecting) they fall back to CPU with a warning.
    """
    a = AppArgs.parse(args)
    manifest = read_manifest(a.index_dir)
    search_params = serving_search_params(manifest, a)
    n_shards = len(manifest["shards"])
    in_ingress = index_bytes(manifest) <= a.ingress_shard_budget_mb * 2**20
    gpus = cluster_gpus()
    if gpus is None and "auto" in (a.num_gpus_per_shard, a.retriever_num_gpus):
        log.warning("GPU 'auto': not connected to Ray, so no cluster resources to look at; using CPU "
                    "(set num_gpus_per_shard / retriever_num_gpus explicitly, or deploy a config file)")
    has_gpu = faiss_has_gpu()
    # An ONNX Runtime encoder runs on CPU: "auto" must not reserve a GPU it would leave idle.
    retr_want = 0.0 if a.encoder_backend.startswith("onnx") else a.retriever_num_gpus
    shard_gpus, retr_gpus = plan_gpus(a.num_gpus_per_shard, retr_want,
                                     0 if in_ingress else n_shards, gpus or 0.0, has_gpu)
    if a.num_gpus_per_shard == "auto" and (gpus or 0) > 0 and not has_gpu:
        log.warning("the cluster has GPUs but this FAISS is CPU-only: shards search on CPU "
                    "(install faiss-gpu-cu12 instead of faiss-cpu for GPU FAISS)")
    log_config = {"enable_access_log": a.access_log, **deployment_log_options(a.access_log)}
    shard_opts: dict[str, Any] = {"num_cpus": a.num_cpus_per_shard}
    if shard_gpus > 0:
        shard_opts["num_gpus"] = shard_gpus
    shards = [] if in_ingress else [
        ShardSearcher.options(name=f"shard-{i}", ray_actor_options=dict(shard_opts),
                              max_ongoing_requests=a.shard_max_ongoing_requests, logging_config=log_config)
        .bind(str(Path(a.index_dir).resolve()), i, a.verify, max(1, int(a.num_cpus_per_shard)), search_params)
        for i in range(n_shards)
    ]
    retr_opts: dict[str, Any] = {"num_cpus": a.retriever_num_cpus}
    if retr_gpus > 0:
        retr_opts["num_gpus"] = retr_gpus
    resolved = a.model_copy(update={"index_dir": str(Path(a.index_dir).resolve()),
                                    "num_gpus_per_shard": shard_gpus, "retriever_num_gpus": retr_gpus})
    return Retriever.options(
        name="Retriever",
        num_replicas=a.retriever_replicas,
        # Serve's cap counts bodies still arriving and probes too; the work slots are the guard's.
        max_ongoing_requests=a.max_ongoing_requests + a.max_pending_bodies,
        ray_actor_options=retr_opts,
        logging_config=log_config,
    ).bind(shards, resolved.model_dump())


