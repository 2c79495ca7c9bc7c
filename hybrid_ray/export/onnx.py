"""ONNX export of an encoder directory, int8 quantisation, and an ONNX Runtime encoder.

Exporter: ``torch.onnx.export(dynamo=True)``, PyTorch's maintained exporter (the TorchScript one
is deprecated). ``optimum-onnx`` would be the other maintained route, but every release pins
``transformers<4.58`` and cannot install next to this project's transformers 5 pin.

The graph is the backbone only (``input_ids``, ``attention_mask`` -> ``last_hidden_state``, batch
and sequence dynamic); pooling and normalisation run in numpy in :class:`OnnxEncoder`, reading
``hybrid_ray_encoder.json`` like ``DualEncoder`` does, so one graph serves any pooling setting and
the layout (``onnx/model.onnx`` in the model dir) is the one sentence-transformers'
``backend="onnx"`` loads. int8 is ONNX Runtime's dynamic quantisation (int8 weights, activations
quantised per batch at run time): no calibration data, the usual CPU serving trade.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hybrid_ray.errors import HybridRayError
from hybrid_ray.export.model_dir import hidden_size, read_encoder_dir
from hybrid_ray.modeling.encoder import EncoderConfig, Kind

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
INFO_FILE = "export.json"
INPUTS = ("input_ids", "attention_mask")
# Per-channel int8 weights: on multilingual-e5-small, min cosine vs fp32 0.994 (per-tensor: 0.973)
# at the same size (114 MiB vs 450 MiB fp32); measured in bench/results/encode_backends.md.
INT8_SETTINGS = {"weight_type": "QInt8", "per_channel": True}
# Above this many parameter bytes the weights go to a side file (ONNX protobufs stop at 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30
Backend = Literal["torch", "onnx", "onnx-int8", "auto"]
EXAMPLE_TEXTS = ["a short example text", "a somewhat longer example text so that the batch needs padding"]

log = logging.getLogger(__name__)


def _backbone(model):
    """Wrap the HF model so the exported graph has two inputs and one output, by name."""
    import torch

    class Backbone(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Backbone(model).eval()


def export_onnx(model_dir: str | Path, out_dir: str | Path | None = None, *, int8: bool = False,
                opset: int | None = None) -> dict[str, Path]:
    """Export ``model_dir`` to ``<out_dir>/model.onnx`` (default ``<model_dir>/onnx``), optionally int8.

    The export is checked before returning: ONNX Runtime must reproduce PyTorch's hidden states on
    a padded example batch, else a :class:`HybridRayError` says by how much it missed. Write into a
    directory being built (an ``atomic_dir``); files here are written in place.
    """
    import torch
    from torch.export import Dim

    from hybrid_ray.modeling.encoder import DualEncoder

    read_encoder_dir(model_dir)
    out = Path(out_dir) if out_dir is not None else Path(model_dir) / ONNX_DIR
    out.mkdir(parents=True, exist_ok=True)
    encoder = DualEncoder.from_pretrained(model_dir).eval()
    backbone = _backbone(encoder.model)
    batch = encoder.tokenize(EXAMPLE_TEXTS, "passage")
    args = (batch["input_ids"], batch["attention_mask"])
    axes = {0: Dim("batch"), 1: Dim("sequence")}  # one Dim per axis, shared: both inputs have one shape
    dims = {"input_ids": axes, "attention_mask": axes}
    n_bytes = sum(p.numel() * p.element_size() for p in encoder.model.parameters())
    external = n_bytes > EXTERNAL_DATA_BYTES
    path = out / ONNX_FILE
    _quiet_exporter_logs()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree deprecation inside torch.export
        # Both inputs share the batch / sequence Dims, which is the point; the exporter says so per axis.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        torch.onnx.export(backbone, args, str(path), dynamo=True, input_names=list(INPUTS),
                          output_names=["last_hidden_state"], dynamic_shapes=dims, external_data=external,
                          opset_version=opset, optimize=True, verbose=False)
        expected = backbone(*args).numpy()
    got = _session(path).run(None, {k: v.numpy() for k, v in batch.items() if k in INPUTS})[0]
    err = float(np.abs(got - expected).max())
    if not np.isfinite(err) or err > 1e-3:
        raise HybridRayError(f"ONNX export {str(path)!r} does not reproduce PyTorch: max |diff| {err:.3g} > 1e-3")
    paths = {"onnx": path}
    info: dict[str, Any] = {"exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
                            "inputs": list(INPUTS), "output": "last_hidden_state", "max_abs_diff_vs_torch": err}
    if int8:
        paths["onnx_int8"] = quantize_int8(path, out / INT8_FILE, external_data=external)
        info["int8"] = {"file": INT8_FILE, "method": "onnxruntime.quantization.quantize_dynamic", **INT8_SETTINGS}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    paths["info"] = out / INFO_FILE
    return paths


def _quiet_exporter_logs() -> None:
    """The exporter logs a warning per optional torchvision op it cannot find; none applies here."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def quantize_int8(src: str | Path, dst: str | Path, *, external_data: bool = False) -> Path:
    """Dynamic int8 quantisation of ``src``: int8 weights per output channel, activations per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ORT logs a "consider pre-processing" hint on the root logger; it concerns static (calibrated)
    # quantisation of conv nets, not dynamic int8 MatMuls.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(src), str(dst), weight_type=getattr(QuantType, INT8_SETTINGS["weight_type"]),
                         per_channel=INT8_SETTINGS["per_channel"], use_external_data_format=external_data)
    finally:
        root.setLevel(level)
    return Path(dst)


def _session(path: Path, threads: int | None = None):
    from hybrid_ray.export.backend import require_onnxruntime

    require_onnxruntime()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """``DualEncoder.encode`` on ONNX Runtime (CPU): same prefixes, tokenizer, pooling, normalisation.

    A drop-in for eval / index / Serve where only ``encode(texts, kind, batch_size)``, ``dim``,
    ``tokenize`` and ``config`` are used; it holds no torch module, so there is nothing to train or
    move to a GPU. ``onnx_dir`` is where the graph lives (default ``<model_dir>/onnx``; the ONNX
    cache for a directory exported on the fly, :mod:`hybrid_ray.export.backend`).
    """

    def __init__(self, model_dir: str | Path, *, int8: bool = False, threads: int | None = None,
                 onnx_dir: str | Path | None = None) -> None:
        from transformers import AutoTokenizer

        from hybrid_ray.export.backend import check_model_dir

        self.model_dir = check_model_dir(model_dir)
        self.config: EncoderConfig
        self.config, hf_config = read_encoder_dir(self.model_dir)
        graph_dir = Path(onnx_dir) if onnx_dir is not None else self.model_dir / ONNX_DIR
        self.path = graph_dir / (INT8_FILE if int8 else ONNX_FILE)
        self.backend = "onnx-int8" if int8 else "onnx"
        if not self.path.is_file():
            raise HybridRayError(
                f"{str(self.path)!r} does not exist: export it first with "
                f"'hybrid-ray export {self.model_dir} --format onnx{' --int8' if int8 else ''}'"
            )
        self._dim = hidden_size(hf_config, self.model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.session = _session(self.path, threads)
        self._inputs = [i.name for i in self.session.get_inputs()]

    @property
    def dim(self) -> int:
        return self._dim

    def to(self, device: Any) -> OnnxEncoder:
        """Accept only CPU: this backend exists for CPU serving (GPU serving uses the torch backend)."""
        if str(device) != "cpu":
            raise HybridRayError(f"the ONNX backend runs on CPU only, not {device!r}; use backend='torch'")
        return self

    def eval(self) -> OnnxEncoder:
        """Inference only already; here so callers treat both backends alike (``encoder.eval()``)."""
        return self

    def tokenize(self, texts: list[str], kind: Kind) -> dict[str, np.ndarray]:
        """Prefix by ``kind``, tokenize, pad, truncate: the same call as ``DualEncoder.tokenize``."""
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
        prefix = self.config.query_prefix if kind == "query" else self.config.passage_prefix
        return dict(self.tokenizer([prefix + t for t in texts], padding=True, truncation=True,
                                   max_length=self.config.max_length, return_tensors="np"))

    def pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean (over real tokens) or cls pooling, then L2 normalisation when configured."""
        if self.config.pooling == "cls":
            emb = hidden[:, 0].astype(np.float32)
        else:
            m = mask[..., None].astype(np.float32)
            emb = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        if self.config.normalize:
            emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
        return emb.astype(np.float32)

    def encode(self, texts: list[str], kind: Kind, batch_size: int = 64, device: Any = None) -> np.ndarray:
        """Embed ``texts`` in batches sorted by length; float32 ``[n, dim]`` in input order."""
        if device is not None:
            self.to(device)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenize([texts[i] for i in idx], kind)
            feeds = {k: batch[k].astype(np.int64) for k in self._inputs}
            hidden = self.session.run(None, feeds)[0]
            out[idx] = self.pool(hidden, batch["attention_mask"])
        return out


def load_encoder(model_dir: str | Path, backend: Backend = "auto", *, int8: bool = False,
                 threads: int | None = None, cache_dir: str | Path | None = None):
    """A ``DualEncoder`` (``torch``) or an :class:`OnnxEncoder` (``onnx``, ``onnx-int8``) for ``model_dir``.

    See :mod:`hybrid_ray.export.backend`: ``auto`` picks ONNX when the directory holds an ONNX
    graph, onnxruntime is installed and no CUDA device is visible; ``onnx`` on a directory
    without a graph exports one once into the ONNX cache.
    """
    from hybrid_ray.export.backend import load_encoder as _load

    return _load(model_dir, backend, int8=int8, threads=threads, cache_dir=cache_dir)
