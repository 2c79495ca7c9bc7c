"""The outer ASGI layer of the retrieval app: deadlines, request slots, content type, status metrics.

Why a pure ASGI layer (not a route dependency): everything here must happen *before* FastAPI
reads the body or matches a route, and must hold for every answer, 404 included.

- **Body deadline** (``body_timeout_s``): the whole body is read here, against a deadline from
  the request's start; a client that stops sending gets 408 and frees the replica. A body over
  ``max_body_bytes`` gets 413 (by Content-Length before reading, and by count while reading);
  a chunked body (no length) gets 411. The body is then replayed to FastAPI.
- **Request slots**: ``/search`` and the embedding routes take one of ``max_ongoing_requests``
  slots only once their body is in, so stalled uploads never hold work slots, and probes
  (``/health``, ``/ready``, ``/metrics``) never take one: they answer while every slot is busy.
  Serve's own per-replica cap is set above this (``max_ongoing_requests + max_pending_bodies``).
- **Request deadline** (``request_timeout_s``): no answer started in time: 504.
- **Content type**: a JSON route's body must be ``application/json`` (or ``+json``): else 415.
- **Errors**: every refusal is the API's error body (``{"error", "detail"}``, or OpenAI's shape on
  ``/v1/``); an unexpected exception becomes a 500 error body (logged), never a bare traceback.
- **Metrics**: every request is counted by endpoint and status; a client that disconnects
  before its body arrived is counted as 499 (client closed), not as a server error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hybrid_ray.serving.args import AppArgs
from hybrid_ray.serving.metrics import ServeMetrics

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Routes that do work (encode / search): they take a request slot and need a JSON body.
WORK_ROUTES = frozenset({"/search", "/embed", "/v1/embeddings"})
#: Every route path of the API (metrics label anything else "unmatched").
KNOWN_ROUTES = WORK_ROUTES | {"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/redoc"}
CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer


def error_body(path: str, status: int, message: str, detail: Any = None) -> dict[str, Any]:
    """The error body of ``path``: OpenAI's shape on ``/v1/`` routes, else ``{"error", "detail"}``."""
    if path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    return {"error": message, "detail": detail}


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Disconnected(Exception):
    """The client closed the connection before its body was in."""


class RequestGuard:
    """Pure ASGI middleware (``app.add_middleware(RequestGuard, args=..., metrics=...)``); see module doc."""

    def __init__(self, app: ASGIApp, args: AppArgs, metrics: ServeMetrics) -> None:
        self.app, self.args, self.metrics = app, args, metrics
        self._slots: asyncio.Semaphore | None = None  # made on the serving event loop, at first use

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.args.max_ongoing_requests)
        return self._slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_ROUTES else "unmatched"
        state = {"status": 500, "started": False}

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = int(message["status"]), True
            await send(message)

        async def refuse(status: int, message: str) -> None:
            body = json.dumps(error_body(path, status, message)).encode()
            await send_counted({"type": "http.response.start", "status": status,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
            await send_counted({"type": "http.response.body", "body": body})

        try:
            await self._handle(scope, receive, send_counted, refuse, path, t0)
        except _Disconnected:
            state["status"] = CLIENT_CLOSED
        except Exception:  # a bug: one 500 error body, logged, never a traceback to the client
            log.exception("unhandled error serving %s %s", scope.get("method"), path)
            if not state["started"]:
                await refuse(500, "internal server error")
        finally:
            self.metrics.requests.labels(endpoint, str(state["status"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      refuse: Callable[[int, str], Awaitable[None]], path: str, t0: float) -> None:
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if path in WORK_ROUTES and not is_json_type(headers.get("content-type", "")):
            await refuse(415, f"unsupported content type {headers.get('content-type', '(none)')!r}: "
                         "send application/json")
            return
        try:
            body = await self._read_body(receive, headers, t0)
        except _BodyError as exc:
            await refuse(exc.status, exc.message)
            return
        if path in WORK_ROUTES:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                await refuse(400, f"malformed request body: not valid UTF-8 (byte {exc.start})")
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only the disconnect notice

        if path not in WORK_ROUTES:
            await self.app(scope, replay, send)
            return
        remaining = self.args.request_timeout_s - (time.perf_counter() - t0)
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                async with self.slots:
                    await self.app(scope, replay, send)
        except TimeoutError:
            await refuse(504, f"request not answered within {self.args.request_timeout_s:g} s "
                         "(request_timeout_s)")

    async def _read_body(self, receive: Receive, headers: dict[str, str], t0: float) -> bytes:
        """The whole body, within ``body_timeout_s`` of the request's start and ``max_body_bytes``."""
        limit = self.args.max_body_bytes
        raw = headers.get("content-length")
        if raw is None:
            if headers.get("transfer-encoding"):
                raise _BodyError(411, "a Content-Length header is required (no chunked request bodies)")
        else:
            try:
                size = int(raw)
            except ValueError:
                raise _BodyError(400, f"invalid Content-Length {raw!r}") from None
            if size > limit:
                raise _BodyError(413, f"request body too large: {size} bytes > limit {limit} (max_body_bytes)")
        chunks: list[bytes] = []
        n = 0
        deadline = t0 + self.args.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                raise _BodyError(408, f"request body not received within {self.args.body_timeout_s:g} s "
                                 f"({n} bytes arrived; body_timeout_s)") from None
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            n += len(chunk)
            if n > limit:
                raise _BodyError(413, f"request body too large: over {limit} bytes (max_body_bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
