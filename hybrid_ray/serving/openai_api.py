"""``POST /v1/embeddings``: the OpenAI embeddings API over the served encoder (beside ``/embed``).

Request and response follow OpenAI's shape, so the official ``openai`` client (and tools built on
it) work unchanged with ``base_url=http://HOST:PORT/v1``: ``input`` is a string or a list of
strings, ``model`` is required and echoed back (this server has one encoder), ``encoding_format``
is ``float`` or ``base64`` (little-endian float32, which the ``openai`` client asks for by default),
``usage`` counts the encoder's tokens. Token-id inputs (lists of integers) and ``dimensions`` other
than the encoder's are refused. An extension field ``kind`` (``query`` | ``passage``, default
``query``) picks the encoder prefix, like ``/embed``. Errors on this route use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` (:func:`hybrid_ray.serving.guard.error_body`).
"""

# No ``from __future__ import annotations``: the routes' request models are local classes
# (per-deployment limits), which FastAPI can only see as real, evaluated annotations.
import base64
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from hybrid_ray.serving.http import RequestModels, RetrievalService


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


def add_openai_routes(app: FastAPI, service: "RetrievalService", models: "RequestModels") -> None:
    """Register ``POST /v1/embeddings`` on ``app`` with the deployment's limits as constraints."""
    from hybrid_ray.serving.http import ApiError

    args = service.args
    Text = models.text  # noqa: N806

    class EmbeddingsRequest(BaseModel):
        """OpenAI ``POST /v1/embeddings`` body (``user`` accepted and ignored)."""

        model_config = ConfigDict(extra="forbid")
        input: Text | list[Text] = Field(description="a text, or a list of 1..max_embed_texts texts")
        model: str = Field(min_length=1, max_length=256, description="echoed back; this server has one encoder")
        encoding_format: Literal["float", "base64"] = "float"
        dimensions: int | None = Field(None, ge=1, description="must be the encoder's dimension if given")
        user: str | None = Field(None, max_length=256)
        kind: Literal["query", "passage"] = Field("query", description="extension: the encoder prefix")

    errors: dict[int | str, dict[str, Any]] = {c: {"model": OpenAIError} for c in (400, 408, 413, 415, 422, 503)}

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=errors,
              summary="OpenAI-compatible embeddings")
    async def embeddings(req: EmbeddingsRequest) -> EmbeddingsResponse:  # type: ignore[valid-type]
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts:
            raise ApiError(422, "input is an empty list")
        if len(texts) > args.max_embed_texts:
            raise ApiError(422, f"too many inputs: {len(texts)} > limit {args.max_embed_texts} (max_embed_texts)")
        if req.dimensions is not None and req.dimensions != service.dim:
            raise ApiError(422, f"dimensions {req.dimensions} is not the encoder's ({service.dim})")
        vecs = np.asarray(await service.embed(texts, req.kind), dtype="<f4")
        tokens = service.count_tokens(texts, req.kind)
        data = [Embedding(index=i, embedding=base64.b64encode(v.tobytes()).decode("ascii")
                          if req.encoding_format == "base64" else v.tolist()) for i, v in enumerate(vecs)]
        return EmbeddingsResponse(data=data, model=req.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))
