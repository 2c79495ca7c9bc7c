"""The HTTP API of the retrieval app: request / response models, routes, limits, error format.

:func:`make_api` builds the FastAPI app over any :class:`RetrievalService` (the Ray Serve
``Retriever`` ingress, or a bare in-process service), so the routes, validation and error bodies
are one piece of code whatever serves them. Errors are one-line ``ErrorResponse`` bodies: 400
malformed JSON, 411 chunked body, 413 body / batch over a limit, 422 invalid request, 503 a shard
not ready (never results from fewer shards).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from hybrid_ray.serving.args import AppArgs
from hybrid_ray.serving.metrics import ServeMetrics

API_VERSION = "1.0.0"


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
