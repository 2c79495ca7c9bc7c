"""``hybrid-ray compare``: is one model better than another beyond noise, per setting and language group?

    hybrid-ray compare runs/eval-e5 runs/eval-hybrid --out runs/compare
    hybrid-ray compare A B C --names e5,hybrid,tuned --train-langs en,de,es --resamples 20000

Takes ``hybrid-ray eval`` output directories (their ``per_query.parquet``); the first is the
baseline. Paired randomisation tests and paired bootstrap CIs over the same queries, Holm-adjusted
(:mod:`hybrid_ray.compare`), overall and by query language, resource class and seen vs zero-shot
languages. Writes ``compare.json``, ``compare.md`` (also printed) and ``compare.png`` into ``--out``.
Seen languages: ``--train-langs``, else what the evals recorded (``eval --train-langs`` or the
data set's ``meta.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hybrid_ray.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    from hybrid_ray.compare import CI_METHODS, CORRECTIONS

    p = argparse.ArgumentParser(prog="hybrid-ray compare", description=__doc__.split("\n")[0])
    p.add_argument("evals", nargs="+", help="eval output directories; the first is the baseline")
    p.add_argument("--names", default=None, help="comma-separated labels (default: the directory names)")
    p.add_argument("--out", default="compare-results", help="output directory")
    p.add_argument("--train-langs", default=None, help="comma-separated seen (training) languages")
    p.add_argument("--resamples", type=int, default=10_000, help="permutation and bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confidence", type=float, default=0.95, help="CI level; significance at 1 - this")
    p.add_argument("--correction", default="holm", choices=CORRECTIONS,
                   help="multiple-comparison correction within each table (bh = Benjamini-Hochberg)")
    p.add_argument("--ci-method", default="percentile", choices=CI_METHODS, help="bootstrap CI method")
    return p


def _labels(evals: list[str], names: str | None) -> list[str]:
    from hybrid_ray.errors import ConfigError

    if names:
        labels = [x.strip() for x in names.split(",")]
        if len(labels) != len(evals):
            raise ConfigError(f"gives {len(labels)} names for {len(evals)} evals", key="--names", value=names)
    else:
        labels = [Path(e).resolve().name for e in evals]
        if len(set(labels)) < len(labels):
            labels = [str(e) for e in evals]
    if len(set(labels)) < len(labels):
        raise ConfigError("labels must differ", key="--names", value=labels)
    return labels


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hybrid_ray.compare import EvalRun, compare_evals, format_markdown, plot_differences
    from hybrid_ray.errors import ConfigError
    from hybrid_ray.io import write_json_atomic, write_text_atomic

    if len(args.evals) < 2:
        raise ConfigError("needs at least two eval directories (a baseline and one to compare)", key="evals")
    if not 0.5 <= args.confidence < 1:
        raise ConfigError("must be in [0.5, 1)", key="--confidence", value=args.confidence)
    if args.resamples < 100:
        raise ConfigError("must be >= 100", key="--resamples", value=args.resamples)
    runs = [EvalRun.load(d, label) for d, label in zip(args.evals, _labels(args.evals, args.names), strict=True)]
    train = [x.strip() for x in args.train_langs.split(",") if x.strip()] if args.train_langs else None
    result = compare_evals(runs, train_langs=train, n_resamples=args.resamples, seed=args.seed,
                           confidence=args.confidence, correction=args.correction, ci_method=args.ci_method)
    out = Path(args.out)
    table = format_markdown(result)
    write_json_atomic(out / "compare.json", result)
    write_text_atomic(out / "compare.md", table)
    plot_differences(result, out / "compare.png")
    print(table)
    print(f"wrote {out / 'compare.md'}, compare.json, compare.png")
    return 0


if __name__ == "__main__":
    run_main(main)
