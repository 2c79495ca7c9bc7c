"""The one encoding path of ``index``, ``mine`` and ``eval``: Ray Data actors or in-process.

Why one module: the three commands encode the same way (rows of an Arrow string column, in
contiguous ranges, with a :class:`~hybrid_ray.modeling.encoder.DualEncoder` loaded from a model
directory) and only differ in where the vectors go (index shards, mining memmaps, evaluation
memmaps). Keeping the backends here means a fix or a new knob (``num_gpus`` per actor, the actor
count, the batch size) reaches all three.

* :func:`encode_rows_ray`: a Ray Data actor pool (one model load per actor; one GPU per actor on
  GPU nodes, one CPU per actor otherwise). Yields ``(rows, embeddings)`` in completion order.
* :func:`encode_rows_local`: the same contract in this process (small sets, tests, laptops);
  it can reuse an encoder the caller already loaded.
* :func:`choose_backend`: ``ray`` / ``local`` / ``auto`` (in-process up to ``local_max_rows``
  rows, where starting actors costs more than it saves).
* :func:`encode_rows_to_memmap`: any of the above streamed into an atomic float32 ``.npy``.

Scaling out: the pool has ``concurrency`` actors (default one per GPU of the cluster, else one
per CPU), each asks for ``num_gpus`` (default 1 when the cluster has GPUs) and encodes
``batch_size`` texts per call; N GPU workers = the same call on a cluster with N GPUs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from hybrid_ray.encode import finish_npy
from hybrid_ray.errors import ConfigError, DataError
from hybrid_ray.io import atomic_path

if TYPE_CHECKING:
    from hybrid_ray.export.backend import EncoderBackend

Backend = Literal["ray", "local"]
Mode = Literal["auto", "ray", "local"]
MODES = ("auto", "ray", "local")
Batches = Iterator[tuple[np.ndarray, np.ndarray]]
#: ``eval --encode auto`` encodes a text set in-process up to this many rows. Measured on 2 CPUs
#: (bench/results/eval_encode.md) Ray actors do not pay for their start-up on small sets; on a
#: cluster with GPUs lower it (``--local-max-rows``).
EVAL_LOCAL_MAX_ROWS = 50_000


@dataclass(frozen=True)
class EncodeOptions:
    """How a caller wants its texts encoded: backend mode, the model actors load, pool knobs.

    ``mode``: ``local`` (in-process), ``ray`` (Ray Data actor pool) or ``auto`` (local up to
    ``local_max_rows`` rows, else Ray). ``concurrency`` = actors (default one per GPU, else one
    per CPU), ``num_gpus`` = GPUs per actor (default 1 on GPU clusters).
    """

    mode: str = "local"
    model_dir: str | Path | None = None
    local_max_rows: int = EVAL_LOCAL_MAX_ROWS
    concurrency: int | None = None
    num_gpus: float | None = None
    encoder_backend: EncoderBackend | None = None  # torch / ONNX Runtime (hybrid_ray.export.backend)

    def backend(self, n_rows: int) -> Backend:
        """The backend for a set of ``n_rows`` texts (:func:`choose_backend`)."""
        backend = choose_backend(self.mode, n_rows, self.local_max_rows)
        if backend == "ray" and self.model_dir is None:
            raise ConfigError("Ray encoding needs the model directory the actors load", key="model_dir")
        return backend


class EncodeBatch:
    """Ray Data callable class: loads the encoder once per actor, embeds text batches.

    A class (not a function) so the model is loaded once per worker rather than once per batch;
    on GPU nodes each actor gets ``num_gpus`` GPUs and moves the model there. ``backend``
    (:mod:`hybrid_ray.export.backend`): eager PyTorch or an ONNX Runtime session (CPU, one
    thread per actor so that the pool does not oversubscribe the cores).
    """

    def __init__(self, model_dir: str, batch_size: int = 64, kind: str = "passage",
                 backend: EncoderBackend | None = None, threads: int | None = None) -> None:
        self.encoder = _open(model_dir, backend, threads)
        self.batch_size = batch_size
        self.kind = kind

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        emb = self.encoder.encode(texts, self.kind, batch_size=self.batch_size)
        return {"row": np.asarray(batch["row"], dtype=np.int64), "emb": np.asarray(emb, dtype=np.float32)}


def _open(model_dir: str | Path, backend: EncoderBackend | None, threads: int | None) -> Any:
    """The backend's encoder; a torch one moves to the GPU when this process sees one."""
    from hybrid_ray.export.backend import EncoderBackend, open_encoder

    backend = backend or EncoderBackend("torch")
    encoder = open_encoder(model_dir, backend, threads=threads)
    if backend.uses_gpu:
        import torch

        if torch.cuda.is_available():
            encoder = encoder.to("cuda")
    return encoder


def _ray_resources(concurrency: int | None, num_gpus: float | None, cpu_only: bool = False) -> tuple[int, float]:
    """Actor count and GPUs per actor: one actor per GPU on GPU nodes, else one per CPU.

    ``cpu_only`` (the ONNX Runtime backend): never a GPU, one actor per CPU.
    """
    import ray

    res = ray.cluster_resources()
    if cpu_only:
        if num_gpus:
            raise ConfigError("the ONNX backend encodes on CPU; do not ask for GPUs", key="num_gpus", value=num_gpus)
        return int(concurrency or max(1, int(res.get("CPU", 1)))), 0.0
    gpus = float(res.get("GPU", 0)) if num_gpus is None else float(num_gpus)
    if concurrency is None:
        concurrency = max(1, int(res.get("GPU", 0))) if gpus > 0 else max(1, int(res.get("CPU", 1)))
    return int(concurrency), (1.0 if gpus > 0 and num_gpus is None else gpus)


def ray_resources(concurrency: int | None, num_gpus: float | None) -> tuple[int, float]:
    """Actor count and GPUs per actor for the torch backend (see :func:`_ray_resources`)."""
    return _ray_resources(concurrency, num_gpus)


def actor_restart_args() -> dict[str, Any]:
    """Ray remote args for the encoding actors: no restarts on a local cluster, Ray Data's default elsewhere.

    Ray Data makes pool actors restartable (``max_restarts=-1``) and passes their constructor
    arguments by object reference; that pair makes Ray's C++ core print an ``E ... core_worker.cc``
    notice (ray#53727) straight to the *driver's* stderr for every actor, where no Python log
    filter reaches it, although nothing failed. On one machine a restart buys nothing (a dead
    encoding actor means the machine is out of memory, and a rerun resumes from the finished
    shards), so locally the actors are not restartable and the notice is never emitted. On a
    cluster (``RAY_ADDRESS`` / a submitted job) node loss is real: Ray Data's default stays.
    """
    from hybrid_ray.local import on_cluster

    return {} if on_cluster() else {"max_restarts": 0}


def encode_rows_ray(
    model_dir: str | Path,
    texts: pa.Array | pa.ChunkedArray,
    ranges: list[tuple[int, int]],
    *,
    batch_size: int = 64,
    concurrency: int | None = None,
    num_gpus: float | None = None,
    progress: bool = False,
    kind: str = "passage",
    backend: EncoderBackend | None = None,
    **_: Any,
) -> Batches:
    """Encode the rows of ``texts`` inside ``ranges`` with a pool of Ray Data actors.

    Yields ``(rows, embeddings)`` batches in completion order (not row order). One pipeline,
    and so one actor pool and one model load per actor, serves every range: starting actors
    (importing torch, loading weights) costs far more than encoding a small shard. Blocks are
    cut at range bounds, so a batch never spans two ranges.
    """
    import ray

    uses_gpu = backend is None or backend.uses_gpu
    concurrency, gpus_per_actor = _ray_resources(concurrency, num_gpus, cpu_only=not uses_gpu)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    total = sum(e - s for s, e in ranges)
    # Enough blocks for every actor to have work, few enough that scheduling does not dominate.
    block = max(batch_size, -(-total // (4 * concurrency)))
    tables = []
    for s, e in ranges:
        for b in range(s, e, block):
            n = min(block, e - b)
            tables.append(pa.table({"row": pa.array(np.arange(b, b + n, dtype=np.int64)),
                                    "text": texts.slice(b, n)}))
    if not tables:
        return
    ds = ray.data.from_arrow(tables)
    kwargs: dict[str, Any] = {"num_gpus": gpus_per_actor} if gpus_per_actor > 0 else {"num_cpus": 1}
    restarts = actor_restart_args()
    with warnings.catch_warnings():
        if restarts:
            # Ray 2.60 has no named map_batches parameter for max_restarts; the **ray_remote_args
            # route (the one Ray Data's own comment names) warns that it goes away in Ray 2.64.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            EncodeBatch,
            # One CPU per actor: an ONNX Runtime session with one thread (it would start one per core).
            fn_constructor_kwargs={"model_dir": str(model_dir), "batch_size": batch_size, "kind": kind,
                                   "backend": backend, "threads": None if gpus_per_actor > 0 else 1},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            **kwargs,
            **restarts,
        )
    for out in ds.iter_batches(batch_format="numpy", batch_size=None):
        yield np.asarray(out["row"], dtype=np.int64), np.asarray(out["emb"], dtype=np.float32)


def encode_rows_local(
    model_dir: str | Path | None,
    texts: pa.Array | pa.ChunkedArray,
    ranges: list[tuple[int, int]],
    *,
    batch_size: int = 64,
    kind: str = "passage",
    encoder: Any = None,
    backend: EncoderBackend | None = None,
    **_: Any,
) -> Batches:
    """In-process counterpart of :func:`encode_rows_ray` (no Ray): small sets, tests, laptops.

    ``encoder``: an already loaded encoder (anything with ``encode(texts, kind, batch_size)``),
    else a :class:`DualEncoder` is loaded from ``model_dir``.
    """
    from hybrid_ray.encode import encode_batches

    if encoder is None:
        if model_dir is None:
            raise ConfigError("in-process encoding needs a model directory or an encoder", key="model_dir")
        encoder = _open(model_dir, backend, None)
    for s, e in ranges:
        row = s
        for emb in encode_batches(encoder, texts.slice(s, e - s), kind, batch_size):
            yield np.arange(row, row + len(emb), dtype=np.int64), emb
            row += len(emb)


def choose_backend(mode: str, n_rows: int, local_max_rows: int) -> Backend:
    """``ray`` or ``local`` for encoding ``n_rows`` texts under ``mode`` (``auto``/``ray``/``local``).

    ``auto`` encodes in-process up to ``local_max_rows`` rows: below that, starting a Ray actor
    pool (a torch import and a model load per actor) costs more than the pool saves.
    """
    if mode not in MODES:
        raise ConfigError("must be auto, ray or local", key="encode", value=mode)
    if local_max_rows < 0:
        raise ConfigError("must be >= 0", key="local_max_rows", value=local_max_rows)
    if mode == "auto":
        return "local" if n_rows <= local_max_rows else "ray"
    return mode  # type: ignore[return-value]


def encode_rows(
    where: Backend,
    model_dir: str | Path | None,
    texts: pa.Array | pa.ChunkedArray,
    ranges: list[tuple[int, int]],
    **kwargs: Any,
) -> Batches:
    """Dispatch to :func:`encode_rows_ray` (starting / joining Ray first) or :func:`encode_rows_local`.

    ``where`` is ``ray`` or ``local``; a ``backend`` keyword is the encoder backend (torch / ONNX
    Runtime, :mod:`hybrid_ray.export.backend`), passed through to either. Looked up at call time, so tests can replace
    either function on this module.
    """
    if where == "ray":
        if model_dir is None:
            raise ConfigError("Ray encoding needs a model directory (actors load it)", key="model_dir")
        from hybrid_ray.local import init_ray

        init_ray()
        return encode_rows_ray(model_dir, texts, ranges, **kwargs)
    return encode_rows_local(model_dir, texts, ranges, **kwargs)


def _mark(seen: np.ndarray, rows: np.ndarray, path: Path | None) -> None:
    """Record ``rows`` as arrived; DataError for a row out of range or seen before (even in this batch)."""
    if not len(rows):
        return
    if rows.min() < 0 or rows.max() >= len(seen) or seen[rows].any() or len(np.unique(rows)) != len(rows):
        raise DataError(f"encoding returned a row twice or out of range 0..{len(seen) - 1}", path=path)
    seen[rows] = True


def write_rows_memmap(batches: Iterable[tuple[np.ndarray, np.ndarray]], n: int, out_path: str | Path,
                      *, on_batch: Any = None) -> np.ndarray:
    """Stream ``(rows, embeddings)`` batches (any order) into a float32 ``[n, d]`` ``.npy``, atomically.

    Every row must arrive exactly once (DataError otherwise: a lost or repeated Ray block must
    not leave zeros in the matrix). ``on_batch(done)`` is called after each batch (progress).
    Returns the finished file opened read-only (mmap).
    """
    out_path = Path(out_path)
    seen = np.zeros(n, bool)
    done = 0
    with atomic_path(out_path) as tmp:
        mm = None
        for rows, emb in batches:
            if mm is None:
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, emb.shape[1]))
            _mark(seen, rows, out_path)
            mm[rows] = emb
            done += len(rows)
            if on_batch is not None:
                on_batch(done)
        if done != n:
            raise DataError(f"encoding returned {done} of {n} vectors", path=out_path)
        finish_npy(tmp, mm)
        del mm
    return np.load(out_path, mmap_mode="r")


def collect_rows(batches: Iterable[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """``(rows, embeddings)`` batches (any order) gathered into one in-memory float32 ``[n, d]``."""
    out: np.ndarray | None = None
    seen = np.zeros(n, bool)
    for rows, emb in batches:
        if out is None:
            out = np.empty((n, emb.shape[1]), np.float32)
        _mark(seen, rows, None)
        out[rows] = emb
    if out is None:
        return np.zeros((0, 0), np.float32)
    if not seen.all():
        raise DataError(f"encoding returned {int(seen.sum())} of {n} vectors")
    return out


__all__ = ["EVAL_LOCAL_MAX_ROWS", "MODES", "EncodeBatch", "EncodeOptions", "actor_restart_args", "choose_backend",
           "collect_rows", "encode_rows", "encode_rows_local", "encode_rows_ray", "ray_resources", "write_rows_memmap"]
