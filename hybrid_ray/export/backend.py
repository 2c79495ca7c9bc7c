"""Which engine runs an encoder: eager PyTorch or ONNX Runtime (CPU), and where the ONNX graph comes from.

``eval``, ``index`` and Serve take one switch, ``backend``:

- ``torch`` (default): ``DualEncoder`` (eager PyTorch, CPU or GPU);
- ``onnx`` / ``onnx-int8``: :class:`~hybrid_ray.export.onnx.OnnxEncoder` on ONNX Runtime, CPU only
  (measured on 2 CPU cores: 1.9x eager's throughput, int8 3.4x; bench/results/encode_backends.md);
- ``auto``: ``onnx`` when the model directory already holds an ONNX graph, onnxruntime is
  installed and no CUDA device is visible, else ``torch``.

Both encoders satisfy the same :class:`hybrid_ray.encode.Encoder` protocol (``encode``, ``dim``,
``tokenize``, ``config``), so the callers never branch on the backend after loading it.

Where the graph comes from: ``<model_dir>/onnx/model.onnx`` when the directory is an ONNX export
(``hybrid-ray export --format onnx``, ``train --export-all``); otherwise it is exported once on
the fly into ``$HYBRID_RAY_CACHE/onnx/<key>/`` (default ``~/.cache/hybrid_ray/onnx``), the key
being the model's fingerprint (resolved path, every file's name, size and mtime). The entry is
built in a temporary directory and renamed into place, first writer wins, so concurrent replicas
or actors never read a half-written graph and never publish two. The directory must be a
hybrid-ray encoder directory either way: the graph is the backbone only, and the pooling,
prefixes and normalisation come from ``hybrid_ray_encoder.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_ray.errors import HybridRayError

ENCODER_FILE = "hybrid_ray_encoder.json"  # hybrid_ray.modeling.encoder's; not imported (torch) here

BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8", "auto")
#: Bumped when the cached export's layout or exporter settings change: old entries are not reused.
CACHE_FORMAT = 1
INSTALL_HINT = "install it with: pip install 'hybrid-ray[onnx]' (onnx, onnxscript, onnxruntime)"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderBackend:
    """A resolved backend: picklable, so a driver resolves it once and ships it to Ray workers."""

    name: str  # "torch" | "onnx"
    int8: bool = False
    onnx_dir: str | None = None  # the directory holding model.onnx (and model_int8.onnx)

    @property
    def label(self) -> str:
        """``torch``, ``onnx`` or ``onnx-int8``: what results and manifests record."""
        return "onnx-int8" if self.name == "onnx" and self.int8 else self.name

    @property
    def uses_gpu(self) -> bool:
        return self.name == "torch"


def parse_backend(spec: str, *, int8: bool = False) -> tuple[str, bool]:
    """``"onnx-int8"`` -> ``("onnx", True)``; a bad name raises naming the choices."""
    if spec not in BACKENDS:
        raise HybridRayError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {spec!r}")
    if spec == "onnx-int8":
        return "onnx", True
    return spec, bool(int8)


def require_onnxruntime() -> None:
    """A clear error instead of ``ModuleNotFoundError`` deep inside the first encode."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise HybridRayError(f"the 'onnx' encoder backend needs onnxruntime, which is not installed: "
                             f"{INSTALL_HINT}") from exc


def _onnx_runtime_available() -> bool:
    try:
        require_onnxruntime()
    except HybridRayError:
        return False
    return True


def _cuda_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def check_model_dir(model_dir: str | Path) -> Path:
    """The encoder directory, or an error that says what an ONNX-only directory lacks.

    An ONNX graph alone (an ``onnx/`` folder, an optimum or third-party export) does not say how
    token states become an embedding; embedding with a guessed pooling and no prefixes would be
    silently wrong, so it is refused with the file it needs.
    """
    from hybrid_ray.export.model_dir import read_encoder_dir
    from hybrid_ray.export.onnx import ONNX_DIR, ONNX_FILE

    path = Path(model_dir)
    if path.is_dir() and not (path / ENCODER_FILE).is_file():
        graphs = [p for p in (path / ONNX_FILE, path / ONNX_DIR / ONNX_FILE) if p.is_file()]
        if graphs and path.name == ONNX_DIR and (path.parent / ENCODER_FILE).is_file():
            raise HybridRayError(f"{str(path)!r} is the onnx/ folder of an export: pass the model directory "
                                 f"{str(path.parent)!r} instead")
        if graphs:
            raise HybridRayError(
                f"{str(path)!r} holds an ONNX graph but no {ENCODER_FILE} (pooling, query/passage prefixes, "
                "normalisation); without it the embeddings would silently use the wrong pooling and no "
                "prefixes. Export the hybrid-ray model directory with 'hybrid-ray export MODEL --format onnx'")
    read_encoder_dir(path)
    return path


def onnx_cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$HYBRID_RAY_CACHE/onnx`` (default ``~/.cache/hybrid_ray/onnx``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("HYBRID_RAY_CACHE") or Path.home() / ".cache" / "hybrid_ray"
    return Path(root).expanduser() / "onnx"


def cache_key(model_dir: str | Path) -> str:
    """The model's fingerprint (path + files' names, sizes, mtimes) and the cache format, hashed."""
    import hashlib

    from hybrid_ray.encode import model_fingerprint

    return hashlib.sha256(f"{model_fingerprint(model_dir)}\0{CACHE_FORMAT}".encode()).hexdigest()[:32]


def ensure_onnx(model_dir: str | Path, *, int8: bool = False, cache_dir: str | Path | None = None) -> Path:
    """The directory holding ``model_dir``'s ONNX graph (``model_int8.onnx`` too with ``int8``).

    The model's own ``onnx/`` when it has the requested file; else the cache entry, exported (or
    int8-quantised from the cached fp32 graph) now if missing.
    """
    from hybrid_ray.export.onnx import INT8_FILE, ONNX_DIR, ONNX_FILE, export_onnx, quantize_int8
    from hybrid_ray.io import _publish_mode, atomic_path, write_json_atomic

    model_dir = check_model_dir(model_dir)
    want = INT8_FILE if int8 else ONNX_FILE
    own = model_dir / ONNX_DIR
    if (own / want).is_file():
        return own
    require_onnxruntime()
    root = onnx_cache_root(cache_dir)
    entry = root / cache_key(model_dir)
    if not (entry / ONNX_FILE).is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=root))
        try:
            log.info("exporting %s to ONNX in %s (once per model version)", model_dir, entry)
            export_onnx(model_dir, tmp, int8=int8)
            write_json_atomic(tmp / "source.json", {"model_dir": str(model_dir.resolve()),
                                                    "cache_format": CACHE_FORMAT})
            _publish_mode(tmp, directory=True)  # mkdtemp's 0700 would hide it from other users
            try:
                os.rename(tmp, entry)  # atomic; fails if another process published first
            except OSError:
                if not (entry / ONNX_FILE).is_file():
                    raise
                log.info("another process exported %s first; using its graph", model_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if int8 and not (entry / INT8_FILE).is_file():
        with atomic_path(entry / INT8_FILE) as tmp_file:
            quantize_int8(entry / ONNX_FILE, tmp_file)
    return entry


def resolve_backend(model_dir: str | Path, spec: str = "torch", *, int8: bool = False,
                    cache_dir: str | Path | None = None, prepare: bool = True) -> EncoderBackend:
    """Turn ``spec`` into an :class:`EncoderBackend`, exporting the ONNX graph now if it needs one.

    ``prepare=False``: only decide (its ``label``), without exporting (``onnx_dir`` stays None).
    """
    from hybrid_ray.export.onnx import INT8_FILE, ONNX_DIR, ONNX_FILE

    name, int8 = parse_backend(spec, int8=int8)
    path = check_model_dir(model_dir)
    if name == "auto":
        graph = path / ONNX_DIR / (INT8_FILE if int8 else ONNX_FILE)
        name = "onnx" if graph.is_file() and _onnx_runtime_available() and not _cuda_visible() else "torch"
    if name == "torch":
        if int8:
            raise HybridRayError("int8 applies to the ONNX backend only; use backend 'onnx-int8'")
        return EncoderBackend("torch")
    if not prepare:
        return EncoderBackend("onnx", int8)
    return EncoderBackend("onnx", int8, str(ensure_onnx(path, int8=int8, cache_dir=cache_dir)))


def open_encoder(model_dir: str | Path, backend: EncoderBackend, *, threads: int | None = None) -> Any:
    """Load the encoder ``backend`` names: a ``DualEncoder`` (eval mode, CPU) or an ``OnnxEncoder``."""
    if backend.name == "torch":
        from hybrid_ray.modeling.encoder import DualEncoder

        return DualEncoder.from_pretrained(model_dir).eval()
    from hybrid_ray.export.onnx import OnnxEncoder

    return OnnxEncoder(model_dir, int8=backend.int8, threads=threads, onnx_dir=backend.onnx_dir)


def load_encoder(model_dir: str | Path, backend: str = "auto", *, int8: bool = False, threads: int | None = None,
                 cache_dir: str | Path | None = None) -> Any:
    """:func:`resolve_backend` then :func:`open_encoder`: the one call eval / index / Serve make."""
    return open_encoder(model_dir, resolve_backend(model_dir, backend, int8=int8, cache_dir=cache_dir),
                        threads=threads)


def backend_label(encoder: Any) -> str:
    """What an encoder object runs on (``torch`` for anything without a ``backend`` attribute)."""
    return str(getattr(encoder, "backend", "torch"))


def describe(backend: EncoderBackend) -> dict[str, Any]:
    """The backend as results / manifests record it."""
    out: dict[str, Any] = {"backend": backend.label}
    if backend.onnx_dir:
        out["onnx_dir"] = backend.onnx_dir
        info = Path(backend.onnx_dir) / "export.json"
        if info.is_file():
            try:
                out["exporter"] = json.loads(info.read_text()).get("exporter")
            except (OSError, ValueError):
                pass
    return out
