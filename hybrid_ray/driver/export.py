"""``hybrid-ray export MODEL --format st|onnx|hf|all``: an encoder directory for other tools.

``st`` makes ``SentenceTransformer(out)`` (and MTEB, vector-database integrations) embed exactly
like hybrid-ray: pooling, normalisation and the query/passage prefixes as prompts. ``onnx`` adds
``onnx/model.onnx`` (``--int8``: also ``onnx/model_int8.onnx``) for CPU serving with ONNX Runtime.
``all`` writes every format into one directory. Every export is a copy with a model card
(README.md), written atomically; the source directory is left as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hybrid_ray.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray export", description=__doc__.splitlines()[0])
    p.add_argument("model", help="a hybrid-ray encoder directory (has hybrid_ray_encoder.json), or a LoRA "
                   "adapter directory (a checkpoint's adapter/: merged into its base model first)")
    p.add_argument("--format", required=True, choices=["st", "onnx", "hf", "all"])
    p.add_argument("--int8", action="store_true", help="with --format onnx|all: also a dynamic int8 ONNX model")
    p.add_argument("--out", default=None, help="output directory (default: MODEL-<format>)")
    p.add_argument("--eval-json", action="append", default=[], metavar="PATH",
                   help="'hybrid-ray eval' results.json (or its directory) for the card's table; repeatable")
    p.add_argument("--train-config", default=None,
                   help="training config YAML for the card (default: MODEL/../config.yaml when present, "
                        "which is where 'hybrid-ray train' writes it)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import yaml

    from hybrid_ray.errors import HybridRayError
    from hybrid_ray.export.bundle import default_out, export_all, export_model
    from hybrid_ray.export.model_card import load_eval_results

    evals = [load_eval_results(p) for p in args.eval_json]
    cfg_path = Path(args.train_config) if args.train_config else Path(args.model).resolve().parent / "config.yaml"
    train_cfg = None
    if args.train_config or cfg_path.is_file():
        try:
            train_cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise HybridRayError(f"cannot read training config {str(cfg_path)!r}: {exc}") from exc
    if args.format == "all":
        out = export_all(args.model, args.out or default_out(args.model, "export"), train_cfg, evals,
                         int8=args.int8)
    else:
        out = export_model(args.model, args.format, args.out, int8=args.int8, train_cfg=train_cfg,
                           eval_results=evals)
    print(f"exported {args.model} ({args.format}) to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
