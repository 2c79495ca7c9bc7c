"""Ray Serve retrieval application over a sharded index directory (``hybrid-ray index`` output).

Topology (``build_app``)::

    HTTP --> Retriever (ingress, FastAPI, @serve.batch query encoding)
                 |-- shard-0: ShardSearcher (FAISS index + docid/lang/text of shard 0)
                 |-- shard-1: ShardSearcher
                 ...

Why one deployment per shard: a shard is the unit the index builder writes and verifies, so it is
the natural unit of memory placement (one GPU, or one CPU node, per shard) and of failure. Each
query batch is fanned out to every shard concurrently; each shard returns its own top-k under
:mod:`hybrid_ray.search`'s total order (score desc, then lower global id), and :func:`merge_topk`
keeps the best k of the union -- exactly the top-k of one unsharded exact index.

Language filter (exact): every shard builds, at load time, one exact ``IndexFlatIP`` per language
over that language's rows (taken from the shard's verified ``.npy`` embeddings). A filtered
request searches only the requested languages' sub-indexes with the full ``k``, so ``k`` filtered
results come back whenever the index holds that many, without over-fetching from the main index and
hoping enough survive a post-filter. Sub-index row order follows shard row order, so the id
tie-break rule (and therefore exactness under merge) is preserved. Cost: one extra copy of the
vectors per shard (documented trade-off; an ``IDSelector`` on the main index would avoid it but has
no GPU implementation for every index type).

Failure policy: a shard whose files are missing or do not match the manifest checksums never
serves. Its ``check_health`` raises the loading error (Serve runs this check before marking a new
replica healthy, so the deployment fails loudly with the file name), ``GET /ready`` answers 503
naming the shard, and ``POST /search`` answers 503 instead of returning results from fewer shards.

Dynamic batching: Serve's ``@serve.batch`` queue forms the next batch as soon as
``batch_wait_timeout_s`` has passed, even while the previous batch is still running (it then
waits for the ``max_concurrent_batches`` semaphore). Under steady load that makes batches of ~1
(measured: mean 1.03 with 8 closed-loop clients) that queue up one behind the other. The
Retriever therefore admits a request into the batch queue only while no batch is running
(:class:`BatchGate`): requests that arrive during a batch wait, and all of them enter the queue
together when it ends, so the next batch holds everything that arrived meanwhile ("collect while
busy"; at most ``max_batch_size`` per batch). An idle server still answers a lone request after
``batch_wait_timeout_s``.

GPUs: ``num_gpus_per_shard`` / ``retriever_num_gpus`` default to ``"auto"`` (:func:`plan_gpus`):
with GPUs in the Ray cluster the retriever (query encoder) and, when FAISS has GPU support, every
shard get a GPU (or an equal fraction when there are fewer GPUs than deployments), else CPU.

Approximate indexes (IVF / HNSW / PQ): ``nprobe`` / ``efSearch`` come from the index manifest
(``hybrid-ray index --nprobe / --ef-search``), overridable by ``nprobe`` / ``ef_search`` here.
The per-language sub-indexes stay exact, so a language-filtered search is exact even over an
approximate main index.

Metrics are per Retriever replica, in a dedicated ``CollectorRegistry`` (so they do not mix with
Ray's own process metrics); scrape each replica, or use Ray's metrics export for cluster totals.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from hybrid_ray.errors import ConfigError, DataError, HybridRayError

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


# --------------------------------------------------------------------------- configuration
class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (``args:`` in a Serve config / RayService)."""

    model_config = ConfigDict(extra="forbid")

    index_dir: str = Field(description="index directory written by 'hybrid-ray index'")
    model_dir: str | None = Field(None, description="encoder directory; default: the manifest's model_dir")
    max_batch_size: int = Field(32, ge=1, description="@serve.batch max batch size (query encoding)")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="@serve.batch wait for a fuller batch")
    # Measured: Serve's default of 5 ongoing requests per replica capped batches at 2-3.
    max_ongoing_requests: int = Field(128, ge=1, description="Retriever max_ongoing_requests")
    shard_max_ongoing_requests: int = Field(32, ge=1)
    k_limit: int = Field(100, ge=1, description="largest k a request may ask for")
    max_query_chars: int = Field(2048, ge=1, description="longest query / text accepted (characters)")
    max_embed_texts: int = Field(256, ge=1, description="most texts per /embed request")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024,
                                description="largest request body accepted (bytes); larger: 413")
    encode_batch_size: int = Field(64, ge=1)
    num_gpus_per_shard: float | Literal["auto"] = Field(
        "auto", description="GPUs per shard replica; auto: 1 (or a share) when the cluster has GPUs "
        "and FAISS has GPU support, else 0")
    num_cpus_per_shard: float = Field(1.0, ge=0)
    retriever_num_cpus: float = Field(1.0, ge=0)
    retriever_num_gpus: float | Literal["auto"] = Field(
        "auto", description="GPUs of the Retriever (query encoder); auto: 1 (or a share) when the "
        "cluster has GPUs, else 0")
    nprobe: int | None = Field(None, ge=1, description="IVF indexes: lists visited per query "
                               "(default: the index manifest's, else FAISS's 1)")
    ef_search: int | None = Field(None, ge=1, description="HNSW indexes: efSearch (default: the "
                                  "index manifest's, else FAISS's 16)")
    retriever_replicas: int = Field(1, ge=1)
    verify: bool = Field(True, description="check shard sha256 checksums at load")
    access_log: bool = Field(True, description="Serve per-request access log lines (off for load tests)")
    shard_timeout_s: float = Field(30.0, gt=0, description="per-shard call timeout")

    @field_validator("num_gpus_per_shard", "retriever_num_gpus")
    @classmethod
    def _non_negative(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v < 0:
            raise ValueError("must be >= 0 or 'auto'")
        return v

    @classmethod
    def parse(cls, args: dict[str, Any] | AppArgs | None) -> AppArgs:
        """Validate user arguments, turning pydantic errors into one ConfigError line."""
        if isinstance(args, AppArgs):
            return args
        try:
            return cls.model_validate(dict(args or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "args"
            raise ConfigError(err["msg"], key=key, value=err.get("input")) from None


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """The index manifest (:func:`hybrid_ray.index.read_manifest`): readiness and app building use it."""
    from hybrid_ray.index import read_manifest as _read

    return _read(index_dir)


def serving_search_params(manifest: dict[str, Any], args: AppArgs) -> dict[str, int]:
    """nprobe / efSearch for the shards: the manifest's, overridden by the app args (validated)."""
    from hybrid_ray.index import resolve_search_params

    return resolve_search_params(manifest, {"nprobe": args.nprobe, "efSearch": args.ef_search})


def faiss_has_gpu() -> bool:
    """Whether the installed FAISS is a GPU build (faiss-gpu), whatever this process can see."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu")


def plan_gpus(
    num_gpus_per_shard: float | str,
    retriever_num_gpus: float | str,
    n_shards: int,
    cluster_gpus: float,
    faiss_gpu: bool,
) -> tuple[float, float]:
    """Resolve ``"auto"`` GPU requests: ``(gpus per shard replica, gpus of the Retriever)``.

    Explicit numbers are kept. ``auto`` asks for a GPU only when the cluster has one (and, for a
    shard, only when FAISS can use it). The deployments on ``auto`` share what explicit requests
    leave: one GPU each when there are enough, else an equal 1/m share with m deployments per GPU
    (``1 / ceil(deployments / whole GPUs)``, so shares never straddle two GPUs on different nodes).
    """
    shard = None if num_gpus_per_shard == "auto" else float(num_gpus_per_shard)
    retr = None if retriever_num_gpus == "auto" else float(retriever_num_gpus)
    wants = (n_shards if shard is None and faiss_gpu else 0) + (1 if retr is None else 0)
    pool = float(cluster_gpus) - (shard or 0.0) * n_shards - (retr or 0.0)
    share = 0.0
    if wants and pool > 0:
        whole = math.floor(pool + 1e-9)
        share = 1.0 / math.ceil(wants / whole) if whole >= 1 else math.floor(pool / wants * 100) / 100
        share = min(1.0, math.floor(share * 10_000) / 10_000)  # Ray keeps 4 decimals
    if shard is None:
        shard = share if faiss_gpu else 0.0
    if retr is None:
        retr = share
    return shard, retr


def cluster_gpus() -> float | None:
    """GPUs in the connected Ray cluster, or None when this process is not connected to Ray."""
    import ray

    if not ray.is_initialized():
        return None
    return float(ray.cluster_resources().get("GPU", 0.0))


# --------------------------------------------------------------------------- one shard, no Ray
@dataclass
class ShardHits:
    """One shard's answer for ``n`` queries: rectangular, padded with id -1 / score -inf.

    ``rows[q]`` holds ``(docid, lang, text)`` for the non-padding columns of query ``q``, in order.
    """

    scores: np.ndarray  # float32 [n, kk]
    ids: np.ndarray  # int64 [n, kk], global ids (shard offset + local row), -1 = none
    rows: list[list[tuple[str, str, str]]]


class ShardCore:
    """A loaded, verified shard: main FAISS index, per-language exact sub-indexes, passage table.

    Plain Python (no Ray), so it is unit-testable and reusable by the bare baseline server.
    """

    def __init__(self, name: str, offset: int, index: Any, vectors: np.ndarray, table: Any,
                 gpu: bool = False, search_params: dict[str, int] | None = None) -> None:
        import faiss

        from hybrid_ray.index import apply_search_params
        from hybrid_ray.search import build_index, maybe_to_gpu

        self.name = name
        self.offset = int(offset)
        self.docids: list[str] = table.column("docid").to_pylist()
        self.langs: list[str] = table.column("lang").to_pylist()
        self.texts: list[str] = table.column("text").to_pylist()
        self.count = len(self.docids)
        self.dim = int(index.d)
        self.on_gpu = bool(gpu)
        self.index = apply_search_params(maybe_to_gpu(index) if gpu else index, search_params)
        self.search_params = dict(search_params or {})
        self.index_type = type(faiss.downcast_index(index)).__name__
        lang_arr = np.asarray(self.langs, dtype=object)
        self.lang_rows: dict[str, np.ndarray] = {}
        self.lang_index: dict[str, faiss.Index] = {}
        for lang in sorted(set(self.langs)):
            rows = np.flatnonzero(lang_arr == lang).astype(np.int64)  # ascending: keeps tie order
            sub = build_index(np.asarray(vectors[rows]), "Flat")
            self.lang_rows[lang] = rows
            self.lang_index[lang] = maybe_to_gpu(sub) if gpu else sub

    @classmethod
    def load(cls, index_dir: str | Path, shard: int, *, verify: bool = True, gpu: bool = False,
             search_params: dict[str, int] | None = None) -> ShardCore:
        """Load shard ``shard`` of an index directory, checking files against the manifest.

        Raises DataError naming the missing / corrupt file (the same per-shard checks as
        :func:`hybrid_ray.index.load_sharded_index`, which loads every shard into one process).
        ``search_params``: nprobe / efSearch (default: the manifest's).
        """
        import faiss
        import pyarrow.parquet as pq

        from hybrid_ray.index import check_shard_files, resolve_search_params

        index_dir = Path(index_dir)
        manifest = read_manifest(index_dir)
        shards = manifest["shards"]
        if not 0 <= shard < len(shards):
            raise ConfigError(f"index has {len(shards)} shards", key="shard", value=shard)
        entry = shards[shard]
        check_shard_files(index_dir, entry, verify)
        if search_params is None:
            search_params = resolve_search_params(manifest)
        files = {k: index_dir / v["path"] for k, v in entry["files"].items()}
        try:
            index = faiss.read_index(str(files["faiss"]))
        except RuntimeError as exc:
            msg = str(exc).splitlines()[0]
            raise DataError(f"cannot read FAISS index: {msg}", path=files["faiss"]) from exc
        try:
            vectors = np.load(files["npy"], mmap_mode="r")
            table = pq.read_table(files["parquet"], columns=["docid", "lang", "text"])
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read shard data: {exc}", path=files["npy"]) from exc
        count = int(entry["count"])
        if index.ntotal != count or table.num_rows != count or vectors.shape[0] != count:
            raise DataError(f"shard has {index.ntotal} vectors / {table.num_rows} rows / {vectors.shape[0]} "
                            f"embeddings, manifest says {count}", path=files["faiss"])
        if int(vectors.shape[1]) != int(manifest["dim"]) or int(index.d) != int(manifest["dim"]):
            raise DataError(f"shard dimension {index.d} != manifest dim {manifest['dim']}",
                            path=files["faiss"])
        return cls(entry["name"], int(entry["offset"]), index, vectors, table, gpu=gpu,
                   search_params=search_params)

    def search(self, vectors: np.ndarray, k: int, langs: Sequence[str] | None = None) -> ShardHits:
        """This shard's exact top-``k`` for each query vector, optionally within ``langs``."""
        from hybrid_ray.search import _sort_rows, as_float32, search

        q = as_float32(vectors)
        if not langs:
            scores, local = search(self.index, q, k)
        else:
            parts_s, parts_i = [], []
            for lang in langs:
                if lang not in self.lang_index:  # language absent from this shard only
                    continue
                s, sub_ids = search(self.lang_index[lang], q, k)
                parts_s.append(s)
                parts_i.append(self.lang_rows[lang][sub_ids])
            if not parts_s:
                scores = np.zeros((len(q), 0), np.float32)
                local = np.zeros((len(q), 0), np.int64)
            else:
                scores, local = _sort_rows(np.concatenate(parts_s, 1), np.concatenate(parts_i, 1))
                scores, local = scores[:, :k], local[:, :k]
        ids = np.where(local >= 0, local + self.offset, -1).astype(np.int64)
        rows = [[(self.docids[j], self.langs[j], self.texts[j]) for j in r if j >= 0] for r in local.tolist()]
        return ShardHits(np.asarray(scores, np.float32), ids, rows)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "ok": True, "count": self.count, "dim": self.dim, "offset": self.offset,
                "langs": sorted(self.lang_rows), "gpu": self.on_gpu,
                "index": " ".join([self.index_type, *(f"{k}={v}" for k, v in self.search_params.items())])}


def merge_topk(parts: Sequence[ShardHits], k: int) -> list[list[dict[str, Any]]]:
    """Global top-``k`` per query from per-shard top-``k`` lists (exact; see module docstring).

    Uses the same (score desc, global id asc) order as :func:`hybrid_ray.search.search`, so the
    result equals one unsharded exact search, ties included.
    """
    from hybrid_ray.search import _sort_rows

    if not parts:
        return []
    n = parts[0].scores.shape[0]
    scores = np.concatenate([np.where(p.ids >= 0, p.scores, -np.inf) for p in parts], axis=1)
    ids = np.concatenate([p.ids for p in parts], axis=1)
    if scores.shape[1] == 0:
        return [[] for _ in range(n)]
    scores, ids = _sort_rows(scores.astype(np.float32), ids)
    out: list[list[dict[str, Any]]] = []
    for q in range(n):
        payload: dict[int, tuple[str, str, str]] = {}
        for p in parts:
            payload.update(zip((i for i in p.ids[q].tolist() if i >= 0), p.rows[q], strict=True))
        hits = []
        for s, gid in zip(scores[q, :k].tolist(), ids[q, :k].tolist(), strict=True):
            if gid < 0:
                break
            docid, lang, text = payload[gid]
            hits.append({"rank": len(hits) + 1, "docid": docid, "score": float(s), "lang": lang,
                         "text": text})
        out.append(hits)
    return out


# --------------------------------------------------------------------------- HTTP models
class SearchRequest(BaseModel):
    """``POST /search`` body. Limits (k, length) are the deployment's ``k_limit`` / ``max_query_chars``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    query: str = Field(description="query text (non-empty)", examples=["let there be light"])
    k: int = Field(10, description="number of passages to return, 1..k_limit")
    lang: str | list[str] | None = Field(None, description="only passages in this language / these languages")


class Hit(BaseModel):
    rank: int
    docid: str
    score: float = Field(description="cosine similarity (inner product of normalised vectors)")
    lang: str
    text: str


class SearchResponse(BaseModel):
    query: str
    k: int
    lang: list[str] | None
    hits: list[Hit]
    took_ms: float


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[str] = Field(description="texts to embed (1..max_embed_texts, each non-empty)")
    kind: Literal["query", "passage"] = Field("query", description="which prefix the encoder applies")


class EmbedResponse(BaseModel):
    kind: str
    dim: int
    embeddings: list[list[float]]


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong with the request, in one line")
    detail: Any = None


class ShardStatus(BaseModel):
    name: str
    ok: bool
    error: str | None = None
    count: int | None = None
    dim: int | None = None
    langs: list[str] | None = None
    gpu: bool | None = None
    index: str | None = Field(None, description="FAISS index type and search parameters")


class ReadyResponse(BaseModel):
    ready: bool
    shards: list[ShardStatus]
    languages: list[str]


class ApiError(Exception):
    """A request we refuse: status code + one-line message (rendered as ErrorResponse)."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


# --------------------------------------------------------------------------- metrics
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


# --------------------------------------------------------------------------- the HTTP API
class RetrievalService:
    """What the HTTP layer needs; implemented by the Serve ``Retriever`` and the bare baseline."""

    args: AppArgs
    metrics: ServeMetrics
    dim: int

    async def search_one(self, query: str, k: int, langs: tuple[str, ...] | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def embed(self, texts: list[str], kind: str) -> np.ndarray:
        raise NotImplementedError

    async def shard_status(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def languages(self) -> list[str]:
        """Languages of the index; raises ApiError(503) while any shard is not ready."""
        status = await self.shard_status()
        bad = [s for s in status if not s.get("ok")]
        if bad:
            raise ApiError(503, f"index not ready: {bad[0]['name']}: {bad[0].get('error')}",
                           detail=[ShardStatus(**s).model_dump() for s in bad])
        return sorted({lang for s in status for lang in s["langs"]})


def _check_text(value: str, field: str, limit: int) -> None:
    if not value.strip():
        raise ApiError(422, f"{field} is empty")
    if len(value) > limit:
        raise ApiError(422, f"{field} is too long: {len(value)} characters > limit {limit} (max_query_chars)")


def make_api(service: RetrievalService) -> FastAPI:
    """The FastAPI app (routes, validation, error format, metrics) over ``service``.

    Built per replica (``__serve_build_asgi_app__``), so the routes close over the replica's own
    limits and metrics registry rather than module globals.
    """
    args, metrics = service.args, service.metrics
    app = FastAPI(
        title="hybrid-ray retrieval",
        version=API_VERSION,
        description="Multilingual dense retrieval over a sharded FAISS index (Ray Serve). "
        f"k is limited to {args.k_limit}; texts to {args.max_query_chars} characters; request bodies "
        f"to {args.max_body_bytes} bytes.",
    )
    errors = {400: {"model": ErrorResponse}, 411: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
              422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}

    def body_error(request: Request) -> JSONResponse | None:
        """413 for a body over ``max_body_bytes`` (by Content-Length, before reading it); 411 for a
        body without a length (chunked), which could otherwise grow without bound."""
        if request.method not in ("POST", "PUT", "PATCH"):
            return None
        raw = request.headers.get("content-length")
        if raw is None:
            if request.headers.get("transfer-encoding"):
                return JSONResponse(ErrorResponse(error="a Content-Length header is required (no chunked "
                                                  "request bodies)").model_dump(), status_code=411)
            return None
        try:
            size = int(raw)
        except ValueError:
            return JSONResponse(ErrorResponse(error=f"invalid Content-Length {raw!r}").model_dump(),
                                status_code=400)
        if size > args.max_body_bytes:
            return JSONResponse(ErrorResponse(error=f"request body too large: {size} bytes > limit "
                                              f"{args.max_body_bytes} (max_body_bytes)").model_dump(),
                                status_code=413)
        return None

    @app.middleware("http")
    async def count_requests(request: Request, call_next):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        status = 500
        try:
            refused = body_error(request)
            response = refused if refused is not None else await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            endpoint = getattr(route, "path", None) or (
                request.url.path if request.url.path in ("/search", "/embed") else "unmatched")
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=exc.message, detail=exc.detail).model_dump(),
                            status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            msg = next(e for e in errs if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return JSONResponse(ErrorResponse(error=f"malformed JSON body: {msg}".rstrip(": ")).model_dump(),
                                status_code=400)
        parts = []
        for e in errs:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{loc}: {e.get('msg')}")
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errs]
        body = ErrorResponse(error="invalid request: " + "; ".join(parts), detail=detail)
        return JSONResponse(body.model_dump(), status_code=422)

    @app.post("/search", response_model=SearchResponse, responses=errors,
              summary="top-k passages for a query")
    async def search(req: SearchRequest) -> SearchResponse:
        t0 = time.perf_counter()
        _check_text(req.query, "query", args.max_query_chars)
        if not 1 <= req.k <= args.k_limit:
            raise ApiError(422, f"k must be between 1 and {args.k_limit} (k_limit), got {req.k}")
        langs: tuple[str, ...] | None = None
        if req.lang is not None:
            wanted = [req.lang] if isinstance(req.lang, str) else list(req.lang)
            if not wanted:
                raise ApiError(422, "lang is an empty list (omit it to search every language)")
            known = await service.languages()
            unknown = [x for x in wanted if x not in known]
            if unknown:
                raise ApiError(422, f"unknown language {unknown[0]!r}: the index holds {', '.join(known)}")
            langs = tuple(sorted(set(wanted)))
        else:
            await service.languages()  # refuse (503) rather than search a partial index
        hits = await service.search_one(req.query, req.k, langs)
        return SearchResponse(query=req.query, k=req.k, lang=list(langs) if langs else None,
                              hits=[Hit(**h) for h in hits],
                              took_ms=round((time.perf_counter() - t0) * 1e3, 3))

    @app.post("/embed", response_model=EmbedResponse, responses=errors,
              summary="embed texts with the encoder")
    async def embed(req: EmbedRequest) -> EmbedResponse:
        if not req.texts:
            raise ApiError(422, "texts is empty")
        if len(req.texts) > args.max_embed_texts:
            raise ApiError(413, f"too many texts: {len(req.texts)} > limit {args.max_embed_texts} "
                           "(max_embed_texts)")
        for i, t in enumerate(req.texts):
            _check_text(t, f"texts[{i}]", args.max_query_chars)
        vecs = await service.embed(req.texts, req.kind)
        return EmbedResponse(kind=req.kind, dim=int(vecs.shape[1]), embeddings=vecs.tolist())

    @app.get("/health", summary="liveness: the HTTP replica is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}},
             summary="readiness: every shard loaded and verified")
    async def ready() -> JSONResponse:
        status = await service.shard_status()
        ok = all(s.get("ok") for s in status) and all(s.get("dim") == service.dim for s in status)
        for s in status:
            if s.get("ok") and s.get("dim") != service.dim:
                s["ok"], s["error"] = False, f"shard dim {s.get('dim')} != encoder dim {service.dim}"
        langs = sorted({x for s in status if s.get("ok") for x in s.get("langs") or []})
        body = ReadyResponse(ready=ok, shards=[ShardStatus(**s) for s in status], languages=langs)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of this replica")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _load_encoder(model_dir: str, use_gpu: bool, num_threads: float) -> Any:
    import torch

    from hybrid_ray.modeling.encoder import DualEncoder

    if num_threads >= 1:
        torch.set_num_threads(int(num_threads))
    encoder = DualEncoder.from_pretrained(model_dir)
    if use_gpu and torch.cuda.is_available():
        encoder = encoder.to("cuda")
    return encoder.eval()


def _check_encoder(encoder: Any, manifest: dict[str, Any], model_dir: str) -> None:
    if int(encoder.dim) != int(manifest["dim"]):
        raise ConfigError(f"encoder dim {encoder.dim} != index dim {manifest['dim']}: the index was built "
                          "with another model", key="model_dir", value=model_dir)


# --------------------------------------------------------------------------- batching
class BatchGate:
    """Admit work into a ``@serve.batch`` queue only while no batch of it is running.

    See the module docstring: Serve's batch queue closes a batch after ``batch_wait_timeout_s``
    whether or not the previous batch has finished, so under load it queues many batches of one.
    Holding new arrivals here while a batch runs, and releasing them all at once when it ends,
    makes the next batch collect everything that arrived in the meantime.
    """

    def __init__(self) -> None:
        self._idle: asyncio.Event | None = None
        self.running = 0

    def _event(self) -> asyncio.Event:
        if self._idle is None:  # created on the replica's event loop, at first use
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    async def admit(self) -> None:
        """Return at once when idle, else when the running batch has finished."""
        await self._event().wait()

    def start(self) -> None:
        self.running += 1
        self._event().clear()

    def done(self) -> None:
        self.running -= 1
        if self.running <= 0:
            self.running = 0
            self._event().set()


# --------------------------------------------------------------------------- Serve deployments
@serve.deployment(health_check_period_s=10, health_check_timeout_s=30)
class ShardSearcher:
    """One index shard in one replica. A loading error is kept and raised by ``check_health``."""

    def __init__(self, index_dir: str, shard: int, verify: bool = True, omp_threads: int = 1,
                 search_params: dict[str, int] | None = None) -> None:
        import faiss

        # FAISS's OpenMP threads default to every core and spin while waiting; on a shared node
        # that burns the CPU other replicas need. Match the replica's CPU reservation instead.
        faiss.omp_set_num_threads(max(1, int(omp_threads)))
        self.shard = shard
        self.name = f"shard-{shard:04d}"  # the index builder's name; the manifest's once loaded
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
class Retriever(RetrievalService):
    """HTTP ingress: validates, batches query encoding, fans out to every shard, merges."""

    def __init__(self, shards: list[DeploymentHandle], args: dict[str, Any]) -> None:
        self.args = AppArgs.parse(args)
        self.metrics = ServeMetrics()
        self.shards = list(shards)
        manifest = read_manifest(self.args.index_dir)
        model_dir = self.args.model_dir or manifest["model_dir"]
        gpus = self.args.retriever_num_gpus
        self.encoder = _load_encoder(model_dir, gpus == "auto" or float(gpus) > 0, self.args.retriever_num_cpus)
        _check_encoder(self.encoder, manifest, model_dir)
        self.dim = int(self.encoder.dim)
        self.shard_names = [s["name"] for s in manifest["shards"]]
        self._languages: list[str] | None = None
        self._search_gate, self._embed_gate = BatchGate(), BatchGate()
        self._search_batch.set_max_batch_size(self.args.max_batch_size)
        self._search_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self._embed_batch.set_max_batch_size(self.args.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self)

    # ------------------------------------------------------------- shards
    async def _call_shard(
        self, i: int, vectors: np.ndarray, k: int, langs: tuple[str, ...] | None
    ) -> ShardHits:
        t0 = time.perf_counter()
        try:
            return await asyncio.wait_for(self.shards[i].search.remote(vectors, k, langs),
                                          self.args.shard_timeout_s)
        except Exception as exc:
            self.metrics.shard_errors.labels(self.shard_names[i]).inc()
            self._languages = None
            msg = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise ApiError(503, f"{self.shard_names[i]} unavailable: {msg}") from exc
        finally:
            self.metrics.shard_latency.labels(self.shard_names[i]).observe(time.perf_counter() - t0)

    async def shard_status(self) -> list[dict[str, Any]]:
        async def one(i: int) -> dict[str, Any]:
            try:
                return await asyncio.wait_for(self.shards[i].info.remote(), self.args.shard_timeout_s)
            except Exception as exc:
                return {"name": self.shard_names[i], "ok": False, "error": str(exc).splitlines()[0][:300]}

        return list(await asyncio.gather(*(one(i) for i in range(len(self.shards)))))

    async def languages(self) -> list[str]:
        if self._languages is None:
            self._languages = await super().languages()
        return self._languages

    # ------------------------------------------------------------- batched work
    async def search_one(self, query: str, k: int, langs: tuple[str, ...] | None) -> list[dict[str, Any]]:
        await self._search_gate.admit()
        result = await self._search_batch((query, k, langs))
        if isinstance(result, BaseException):  # @serve.batch hands back list items as results
            raise result
        return result

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _search_batch(self, items: list[tuple[str, int, tuple[str, ...] | None]]) -> list[Any]:
        """Encode the batch's queries once, then one fan-out per distinct language filter."""
        self._search_gate.start()
        try:
            return await self._search_items(items)
        finally:
            self._search_gate.done()

    async def _search_items(self, items: list[tuple[str, int, tuple[str, ...] | None]]) -> list[Any]:
        self.metrics.batch_size.labels("search").observe(len(items))
        t0 = time.perf_counter()
        vecs = await asyncio.to_thread(self.encoder.encode, [q for q, _, _ in items], "query",
                                       self.args.encode_batch_size)
        self.metrics.encode_latency.labels("query").observe(time.perf_counter() - t0)
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for j, (_, _, langs) in enumerate(items):
            groups.setdefault(langs, []).append(j)
        out: list[Any] = [None] * len(items)

        async def run(langs: tuple[str, ...] | None, idx: list[int]) -> None:
            kmax = max(items[j][1] for j in idx)
            try:
                parts = await asyncio.gather(*(self._call_shard(i, vecs[idx], kmax, langs)
                                               for i in range(len(self.shards))))
            except Exception as exc:  # fails this group's requests only (503), never partial results
                for j in idx:
                    out[j] = exc
                return
            # top-kmax under a total order, cut to k, is the top-k
            for j, hits in zip(idx, merge_topk(parts, kmax), strict=True):
                out[j] = hits[: items[j][1]]

        await asyncio.gather(*(run(g, idx) for g, idx in groups.items()))
        return out

    async def embed(self, texts: list[str], kind: str) -> np.ndarray:
        await self._embed_gate.admit()
        return await self._embed_batch((kind, texts))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, items: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        self._embed_gate.start()
        try:
            return await self._embed_items(items)
        finally:
            self._embed_gate.done()

    async def _embed_items(self, items: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        self.metrics.batch_size.labels("embed").observe(len(items))
        out: list[Any] = [None] * len(items)
        for kind in ("query", "passage"):
            idx = [j for j, (kk, _) in enumerate(items) if kk == kind]
            if not idx:
                continue
            flat = [t for j in idx for t in items[j][1]]
            t0 = time.perf_counter()
            vecs = await asyncio.to_thread(self.encoder.encode, flat, kind, self.args.encode_batch_size)
            self.metrics.encode_latency.labels(kind).observe(time.perf_counter() - t0)
            start = 0
            for j in idx:
                n = len(items[j][1])
                out[j] = vecs[start : start + n]
                start += n
        return out


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``serve run serve.app:build_app index_dir=...`` / config files.

    Reads only the manifest here (shard count, index type); each shard replica loads and verifies
    its own files. ``"auto"`` GPU requests are resolved here from the connected Ray cluster's
    resources (:func:`plan_gpus`); without a Ray connection (``serve run module:build_app``
    imports the app before connecting) they fall back to CPU with a warning.
    """
    a = AppArgs.parse(args)
    manifest = read_manifest(a.index_dir)
    search_params = serving_search_params(manifest, a)
    n_shards = len(manifest["shards"])
    gpus = cluster_gpus()
    if gpus is None and "auto" in (a.num_gpus_per_shard, a.retriever_num_gpus):
        log.warning("GPU 'auto': not connected to Ray, so no cluster resources to look at; using CPU "
                    "(set num_gpus_per_shard / retriever_num_gpus explicitly, or deploy a config file)")
    has_gpu = faiss_has_gpu()
    shard_gpus, retr_gpus = plan_gpus(a.num_gpus_per_shard, a.retriever_num_gpus, n_shards, gpus or 0.0, has_gpu)
    if a.num_gpus_per_shard == "auto" and (gpus or 0) > 0 and not has_gpu:
        log.warning("the cluster has GPUs but this FAISS is CPU-only: shards search on CPU "
                    "(install faiss-gpu-cu12 instead of faiss-cpu for GPU FAISS)")
    logging = {"enable_access_log": a.access_log}
    shard_opts: dict[str, Any] = {"num_cpus": a.num_cpus_per_shard}
    if shard_gpus > 0:
        shard_opts["num_gpus"] = shard_gpus
    shards = [
        ShardSearcher.options(name=f"shard-{i}", ray_actor_options=dict(shard_opts),
                              max_ongoing_requests=a.shard_max_ongoing_requests, logging_config=logging)
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
        max_ongoing_requests=a.max_ongoing_requests,
        ray_actor_options=retr_opts,
        logging_config=logging,
    ).bind(shards, resolved.model_dump())


# --------------------------------------------------------------------------- bare baseline
class LocalRetriever(RetrievalService):
    """The same API in one process, without Ray Serve: the load test's baseline.

    Same encoder, same shard cores and merge; no batching, shards searched one after another.
    """

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = AppArgs.parse(args)
        self.metrics = ServeMetrics()
        manifest = read_manifest(self.args.index_dir)
        model_dir = self.args.model_dir or manifest["model_dir"]
        self.encoder = _load_encoder(model_dir, False, self.args.retriever_num_cpus)
        _check_encoder(self.encoder, manifest, model_dir)
        self.dim = int(self.encoder.dim)
        params = serving_search_params(manifest, self.args)
        self.cores = [ShardCore.load(self.args.index_dir, i, verify=self.args.verify, search_params=params)
                      for i in range(len(manifest["shards"]))]

    async def search_one(self, query: str, k: int, langs: tuple[str, ...] | None) -> list[dict[str, Any]]:
        vec = self.encoder.encode([query], "query", self.args.encode_batch_size)
        return merge_topk([c.search(vec, k, langs) for c in self.cores], k)[0]

    async def embed(self, texts: list[str], kind: str) -> np.ndarray:
        return self.encoder.encode(texts, kind, self.args.encode_batch_size)

    async def shard_status(self) -> list[dict[str, Any]]:
        return [c.info() for c in self.cores]
