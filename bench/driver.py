"""``hybrid-ray bench {train,sampler,search,encode,eval-encode,convert,cached,serve,all} ...``: run the benchmarks.

Each benchmark is its own ``python -m bench.<module>`` program with a ``main(argv) -> int``; this
dispatcher only maps short names to modules, imported lazily so that ``hybrid-ray bench --help``
does not pay for torch, Ray or FAISS. ``all`` runs every benchmark with its default settings (the
ones that produced ``bench/results/``), one after another, and stops at the first failure.
"""

from __future__ import annotations

import importlib
import sys

from hybrid_ray.cli import run_main

BENCHMARKS: dict[str, tuple[str, str]] = {
    "train": ("bench.train_throughput",
              "training samples/s + peak RSS: hybrid-ray (Ray Train + ZeRO-2) vs sentence-transformers vs bare "
              "PyTorch"),
    "sampler": ("bench.sampler", "hybrid batch sampler cost at 10M pairs x 10 languages"),
    "data": ("bench.data_scale", "per-worker memory + start-up: read_pairs vs memory-mapped open_pairs"),
    "search": ("bench.search", "FAISS Flat / sharded / IVF / HNSW: build time, QPS, recall@10"),
    "encode": ("bench.encode", "passage encoding: Ray Data actor pool vs one process"),
    "eval-encode": ("bench.eval_encode", "eval encoding of a 200k-passage corpus: Ray Data actor pool vs in-process"),
    "convert": ("bench.convert_stream", "streaming mMARCO conversion of a >= 2 GB synthetic input: peak RSS, time"),
    "backends": ("bench.encode_backends", "CPU encoding: eager PyTorch vs ONNX Runtime vs ONNX int8 (+ cosine)"),
    "cached": ("bench.cached_loss", "peak memory + s/pair vs batch size: plain vs cached (GradCache) InfoNCE"),
    "serve": ("bench.serve_load", "Ray Serve retrieval app under closed-loop HTTP load vs a bare server"),
}


def usage() -> str:
    """The ``--help`` text: every benchmark, its module and what it measures."""
    lines = ["usage: hybrid-ray bench <benchmark> [options]", "       hybrid-ray bench all", "", "benchmarks:"]
    lines += [f"  {name:<8} {help_}  [python -m {module}]" for name, (module, help_) in BENCHMARKS.items()]
    lines += ["  all      every benchmark above with default settings, in this order",
              "", "Run 'hybrid-ray bench <benchmark> --help' for its options. Results: bench/results/*.{json,md}."]
    return "\n".join(lines)


def run_one(name: str, argv: list[str]) -> int:
    """Import the benchmark's module and call its ``main(argv)``."""
    module = importlib.import_module(BENCHMARKS[name][0])
    try:
        return int(module.main(argv) or 0)
    except SystemExit as exc:  # argparse --help / usage errors inside a benchmark
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        if rest:
            print("hybrid-ray bench all: takes no options (run benchmarks one by one to pass options)",
                  file=sys.stderr)
            return 2
        for each in BENCHMARKS:
            print(f"[bench] === {each} ===", flush=True)
            code = run_one(each, [])
            if code:
                print(f"[bench] {each} failed with exit code {code}", file=sys.stderr)
                return code
        return 0
    if name not in BENCHMARKS:
        print(f"hybrid-ray bench: unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return run_one(name, rest)


if __name__ == "__main__":
    run_main(main)
