"""Whole exports of an encoder directory: ``hybrid-ray export`` and the end of ``hybrid-ray train``.

Every export is a *copy* of the model directory with the format's files added and a model card,
published atomically (``atomic_dir``): a reader sees the old export or the complete new one,
never a directory with weights but no ``modules.json``. The source directory is never modified
(unless ``out`` is the source itself, which is then replaced whole). A LoRA adapter directory (a
checkpoint's ``adapter/``) is merged into its base model first (``hybrid_ray.modeling.lora``), so
every export is a plain encoder.

- ``hf``: the Hugging Face directory + README.md;
- ``st``: + the sentence-transformers files (``SentenceTransformer(out)`` embeds like hybrid-ray);
- ``onnx``: + ``onnx/model.onnx`` (and ``onnx/model_int8.onnx`` with ``int8``);
- :func:`export_all`: all of the above in one directory, which every consumer can load.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from hybrid_ray.errors import HybridRayError
from hybrid_ray.export.model_dir import read_encoder_dir
from hybrid_ray.io import atomic_dir

Format = Literal["hf", "st", "onnx"]
FORMATS: tuple[str, ...] = ("hf", "st", "onnx")
EvalResults = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


def default_out(model_dir: str | Path, fmt: str) -> Path:
    """``<model_dir>-<fmt>`` next to the model (``runs/x/encoder`` -> ``runs/x/encoder-onnx``)."""
    path = Path(model_dir)
    return path.with_name(f"{path.name}-{fmt}")


def _copy_model(src: Path, dst: Path) -> None:
    """Copy the model directory's files (not hidden temporaries) into the export being built."""
    for entry in src.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, dst / entry.name)


def _build(model_dir: str | Path, out_dir: str | Path | None, formats: Sequence[str], *, int8: bool,
           train_cfg: Any, eval_results: EvalResults, label: str) -> Path:
    src = Path(model_dir)
    if (src / "adapter_config.json").is_file():  # a LoRA adapter (a checkpoint's adapter/): merge first
        import tempfile

        from hybrid_ray.modeling.lora import merge_adapter

        out = Path(out_dir) if out_dir is not None else default_out(src, label)
        with tempfile.TemporaryDirectory(prefix="hybrid-ray-merge-") as tmp:
            merged = merge_adapter(src, Path(tmp) / src.name)
            return _build(merged, out, formats, int8=int8, train_cfg=train_cfg, eval_results=eval_results,
                          label=label)
    read_encoder_dir(src)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise HybridRayError(f"unknown export format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    out = Path(out_dir) if out_dir is not None else default_out(src, label)
    src_r, out_r = src.resolve(), out.resolve()
    if out_r != src_r and src_r in out_r.parents:
        raise HybridRayError(f"output {str(out)!r} is inside the model directory {str(src)!r}; choose another --out")
    from hybrid_ray.export.model_card import write_model_card

    with atomic_dir(out) as tmp:
        _copy_model(src, tmp)
        if "st" in formats:
            from hybrid_ray.export.sentence_transformers import write_st_files

            write_st_files(tmp)
        if "onnx" in formats:
            from hybrid_ray.export.onnx import ONNX_DIR, export_onnx

            export_onnx(tmp, tmp / ONNX_DIR, int8=int8)
        write_model_card(tmp, train_cfg=train_cfg, eval_results=eval_results, name=out.name)
    return out


def export_model(model_dir: str | Path, fmt: Format, out_dir: str | Path | None = None, *, int8: bool = False,
                 train_cfg: Any = None, eval_results: EvalResults = None) -> Path:
    """One export format of ``model_dir`` into ``out_dir`` (default ``<model_dir>-<fmt>``); returns it."""
    if fmt not in FORMATS:
        raise HybridRayError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise HybridRayError("--int8 applies to --format onnx only")
    return _build(model_dir, out_dir, [fmt], int8=int8, train_cfg=train_cfg, eval_results=eval_results, label=fmt)


def export_all(model_dir: str | Path, out_dir: str | Path, train_cfg: Any = None, eval_results: EvalResults = None,
               *, onnx: bool = True, int8: bool = True) -> Path:
    """HF + sentence-transformers + ONNX (+ int8) + model card in one directory ``out_dir``.

    What ``hybrid-ray train`` calls at the end of a run; ``train_cfg`` is the resolved training
    config (dict, OmegaConf or dataclass), ``eval_results`` ``hybrid-ray eval`` results dict(s).
    """
    formats = ["hf", "st"] + (["onnx"] if onnx else [])
    return _build(model_dir, out_dir, formats, int8=int8 and onnx, train_cfg=train_cfg,
                  eval_results=eval_results, label="export")
