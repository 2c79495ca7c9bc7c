"""The HTTP API of the retrieval app: request / response models, routes, limits, error format.

:func:`make_api` builds the FastAPI app over any :class:`RetrievalService` (the Ray Serve
``Retriever`` ingress, or a bare in-process service), so the routes, validation and error bodies
are one piece of code whatever serves them. Errors are one-line ``ErrorResponse`` bodies
(``{"error", "detail"}``) for every non-2xx answer: 400 malformed JSON / not UTF-8, 404 / 405,
408 body not received in time, 411 chunked body, 413 body over a limit, 415 not JSON, 422 invalid
request (the limits are pydantic constraints, so they are in the OpenAPI schema), 503 a shard not
ready (never results from fewer shards), 504 not answered in time. ``/v1/embeddings``
(:mod:`.openai_api`) answers in OpenAI's error shape instead.
"""

# No ``from __future__ import annotations``: the routes' request models are local classes
# (per-deployment limits), which FastAPI can only see as real, evaluated annotations.
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from hybrid_ray.serving.args import AppArgs
from hybrid_ray.serving.metrics import ServeMetrics

API_VERSION = "1.0.0"


# --------------------------------------------------------------------------- HTTP models
def valid_text(value: str) -> str:
    """Refuse text the tokenizer cannot take (lone surrogates) or that holds nothing (blank).

    JSON may carry a lone surrogate (``"\\ud800"``); it is a valid Python ``str`` but not
    encodable text, and the tokenizer raises on it inside a batch. It is refused here, per request,
    before it can enter a batch.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode text (lone surrogate at position {exc.start})") from None
    if not value.strip():
        raise ValueError("is empty or only whitespace")
    return value


def text_type(max_chars: int) -> Any:
    """A request text: 1..``max_chars`` characters, valid Unicode, not blank (in the OpenAPI schema)."""
    return Annotated[str, Field(min_length=1, max_length=max_chars), AfterValidator(valid_text)]


def lang_type() -> Any:
    return Annotated[str, Field(min_length=1, max_length=64), AfterValidator(valid_text)]


class RequestModels:
    """The request models of one deployment: its limits (``k_limit``, ``max_query_chars``,
    ``max_embed_texts``) are pydantic constraints, so they are enforced *and* in the OpenAPI schema."""

    def __init__(self, args: AppArgs) -> None:
        Text, Lang = text_type(args.max_query_chars), lang_type()  # noqa: N806 (type aliases)

        class SearchRequest(BaseModel):
            """``POST /search`` body."""

            model_config = ConfigDict(extra="forbid", strict=True)
            query: Text = Field(description="query text (non-empty)", examples=["let there be light"])
            k: int = Field(10, ge=1, le=args.k_limit, description="number of passages to return")
            lang: Lang | Annotated[list[Lang], Field(min_length=1, max_length=64)] | None = Field(
                None, description="only passages in this language / these languages")

        class EmbedRequest(BaseModel):
            """``POST /embed`` body."""

            model_config = ConfigDict(extra="forbid", strict=True)
            texts: list[Text] = Field(min_length=1, max_length=args.max_embed_texts,
                                      description="texts to embed (each non-empty)")
            kind: Literal["query", "passage"] = Field("query", description="which prefix the encoder applies")

        self.search, self.embed = SearchRequest, EmbedRequest
        self.text = Text


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

    def count_tokens(self, texts: list[str], kind: str) -> int:
        """Tokens the encoder sees for ``texts`` (prefix included, truncated): OpenAI's ``usage``."""
        encoder = getattr(self, "encoder", None)
        if encoder is None:
            return sum(len(t.split()) for t in texts)
        return int(encoder.tokenize(texts, kind)["attention_mask"].sum())

    async def languages(self) -> list[str]:
        """Languages of the index; raises ApiError(503) while any shard is not ready."""
        status = await self.shard_status()
        bad = [s for s in status if not s.get("ok")]
        if bad:
            raise ApiError(503, f"index not ready: {bad[0]['name']}: {bad[0].get('error')}",
                           detail=[ShardStatus(**s).model_dump() for s in bad])
        return sorted({lang for s in status for lang in s["langs"]})


def make_api(service: RetrievalService) -> FastAPI:
    """The FastAPI app (routes, validation, error format, metrics) over ``service``.

    Built per replica (``__serve_build_asgi_app__``), so the routes close over the replica's own
    limits and metrics registry rather than module globals. The outer :class:`RequestGuard` reads
    bodies with a deadline, holds the request slots and counts every answer.
    """
    from hybrid_ray.serving.guard import RequestGuard, error_body
    from hybrid_ray.serving.openai_api import add_openai_routes

    args, metrics = service.args, service.metrics
    models = RequestModels(args)
    app = FastAPI(
        title="hybrid-ray retrieval",
        version=API_VERSION,
        description="Multilingual dense retrieval over a sharded FAISS index (Ray Serve). "
        f"k is limited to {args.k_limit}; texts to {args.max_query_chars} characters; request bodies "
        f"to {args.max_body_bytes} bytes, received within {args.body_timeout_s:g} s (else 408). Every error "
        "answer is {\"error\": ..., \"detail\": ...} (OpenAI's error shape on /v1/ routes).",
    )
    app.add_middleware(RequestGuard, args=args, metrics=metrics)
    codes = (400, 408, 411, 413, 415, 422, 503, 504)
    errors: dict[int | str, dict[str, Any]] = {c: {"model": ErrorResponse} for c in codes}

    def answer(request: Request, status: int, message: str, detail: Any = None) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, status, message, detail), status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(request, exc.status, exc.message, exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """404 / 405 / body parse errors in the one error shape."""
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "malformed request body: not valid UTF-8 JSON"
        response = answer(request, exc.status_code, message)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        bad_json = next((e for e in errs if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            msg = bad_json.get("ctx", {}).get("error", "")
            return answer(request, 400, f"malformed JSON body: {msg}".rstrip(": "))
        parts = []
        for e in errs:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{loc}: {e.get('msg')}")
        # never echo the input: it may hold text that cannot be encoded (lone surrogates)
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errs]
        return answer(request, 422, "invalid request: " + "; ".join(parts), detail)

    SearchRequest, EmbedRequest = models.search, models.embed  # noqa: N806

    @app.post("/search", response_model=SearchResponse, responses=errors,
              summary="top-k passages for a query")
    async def search(req: SearchRequest) -> SearchResponse:  # type: ignore[valid-type]
        t0 = time.perf_counter()
        langs: tuple[str, ...] | None = None
        if req.lang is not None:
            wanted = [req.lang] if isinstance(req.lang, str) else list(req.lang)
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
    async def embed(req: EmbedRequest) -> EmbedResponse:  # type: ignore[valid-type]
        vecs = await service.embed(req.texts, req.kind)
        return EmbedResponse(kind=req.kind, dim=int(vecs.shape[1]), embeddings=vecs.tolist())

    add_openai_routes(app, service, models)

    @app.get("/health", summary="liveness: the HTTP replica is up (no request slot taken)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}},
             summary="readiness: every shard loaded, verified and answering (no request slot taken)")
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
