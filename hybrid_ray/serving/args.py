"""Arguments of the retrieval app (``args:`` of a Serve config / RayService) and GPU planning.

GPUs: ``num_gpus_per_shard`` / ``retriever_num_gpus`` default to ``"auto"`` (:func:`plan_gpus`):
with GPUs in the Ray cluster the retriever (query encoder) and, when FAISS has GPU support, every
shard get a GPU (or an equal fraction when there are fewer GPUs than deployments), else CPU.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybrid_ray.errors import ConfigError


class AppArgs(BaseModel):
    """Arguments of :func:`hybrid_ray.serving.app.build_app` (``args:`` in a Serve config / RayService)."""

    model_config = ConfigDict(extra="forbid")

    index_dir: str = Field(description="index directory written by 'hybrid-ray index'")
    model_dir: str | None = Field(None, description="encoder directory; default: the manifest's model_dir")
    max_batch_size: int = Field(32, ge=1, description="@serve.batch max batch size (query encoding)")
    # 0: the BatchGate already collects the requests that arrive while a batch runs, so an idle
    # replica need not wait for company (measured: one client p50 14.5 ms at 0 vs 22 ms at 0.005).
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="@serve.batch wait for a fuller batch once "
                                        "the first request is in (requests arriving during a batch are "
                                        "collected for the next one anyway)")
    # Measured: Serve's default of 5 ongoing requests per replica capped batches at 2-3.
    max_ongoing_requests: int = Field(128, ge=1, description="/search and /embed requests a Retriever replica "
                                      "works on at once; probes and bodies still arriving do not count")
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
    encoder_backend: Literal["torch", "onnx", "onnx-int8", "auto"] = Field(
        "torch", description="query encoder engine: torch (eager PyTorch, CPU or GPU), onnx / onnx-int8 "
        "(ONNX Runtime, CPU; the model dir's onnx/ graph, else exported once into onnx_cache_dir), auto "
        "(onnx when the model dir has a graph and no GPU is visible)")
    onnx_cache_dir: str | None = Field(None, description="where graphs exported on the fly are kept "
                                       "(default $HYBRID_RAY_CACHE/onnx, i.e. ~/.cache/hybrid_ray/onnx)")
    retriever_replicas: int = Field(1, ge=1)
    verify: bool = Field(True, description="check shard sha256 checksums at load")
    access_log: bool = Field(True, description="Serve per-request access log lines (off for load tests)")
    shard_timeout_s: float = Field(5.0, gt=0, description="per-shard search call timeout: a lost shard "
                                   "fails requests with 503 naming it after at most this long")
    probe_timeout_s: float = Field(1.0, gt=0, description="per-shard timeout of GET /ready (a lost shard "
                                   "turns /ready to 503 within about this long)")
    body_timeout_s: float = Field(10.0, gt=0, description="a request body not fully received within this "
                                  "many seconds of the request's start gets 408")
    request_timeout_s: float = Field(30.0, gt=0, description="a request not answered within this many seconds "
                                     "gets 504")
    max_pending_bodies: int = Field(1024, ge=1, description="connections that may be sending their body at "
                                    "once, on top of max_ongoing_requests (Serve's per-replica cap is the sum)")
    ingress_shard_budget_mb: float = Field(
        1024.0, ge=0, description="index files up to this size (MiB, all shards) are searched inside the "
        "Retriever replica (no shard deployments, no actor hop per query); larger indexes fan out to one "
        "ShardSearcher deployment per shard; 0: always fan out")

    @field_validator("num_gpus_per_shard", "retriever_num_gpus")
    @classmethod
    def _non_negative(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v < 0:
            raise ValueError("must be >= 0 or 'auto'")
        return v

    @model_validator(mode="after")
    def _onnx_is_cpu(self) -> AppArgs:
        gpus = self.retriever_num_gpus
        if self.encoder_backend.startswith("onnx") and gpus != "auto" and float(gpus) > 0:
            raise ValueError(f"encoder_backend {self.encoder_backend!r} runs on CPU: set retriever_num_gpus "
                             "to 0 (or 'auto'), or use encoder_backend 'torch' on a GPU")
        return self

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
