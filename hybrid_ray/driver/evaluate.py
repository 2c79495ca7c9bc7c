"""``hybrid-ray eval``: mono / cross / multilingual mAP, language bias and MIRACL metrics.

    hybrid-ray eval --model runs/hybrid/model --data data/bible --split test --out runs/eval
    hybrid-ray eval --model DIR --data xquad-r/ --format lareqa --max-queries 200
    hybrid-ray eval --model DIR --data miracl/ --format miracl --split dev

Writes ``results.json`` (every number, JSON), ``table.md`` (the printed report) and, for
LAReQA-style sets, ``heatmap.png`` (query-language x passage-language mAP) into ``--out``, each
atomically, and prints the table.

Embeddings are streamed to float32 memmaps under ``--cache-dir`` (default ``OUT/cache``:
``queries.npy``, ``candidates.npy``, each with a ``.json`` key) and searched block by block, so
memory stays bounded for 1M-candidate pools; a rerun with the same model files, data and batch
size reuses them. ``--no-cache`` keeps everything in memory (small sets).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hybrid_ray.cli import auto_or_number, run_main
from hybrid_ray.data.retrieval import RETRIEVAL_FILES, RetrievalSet
from hybrid_ray.errors import DataError

FORMATS = ("auto", "pairs", "lareqa", "miracl", "retrieval")


def detect_format(path: Path) -> str:
    """Guess the data format from file names (cheap: nothing is parsed)."""
    if path.is_file():
        name = path.name
        if name.endswith((".parquet", ".jsonl", ".jsonl.gz")):
            return "pairs"
        if name.endswith(".json"):
            return "lareqa"
        raise DataError("cannot tell the data format from the file name; pass --format", path=path)
    if not path.is_dir():
        raise DataError("no such file or directory", path=path)
    # A saved RetrievalSet (``hybrid-ray data convert`` output) is Parquet too: check it before pairs.
    if (path / "retrieval.json").exists() or all((path / f).exists() for f in RETRIEVAL_FILES):
        return "retrieval"
    # Pairs next: a pairs data set may carry its dev split in MIRACL format in a subfolder.
    if any(p for p in path.glob("*.parquet") if not p.name.startswith(".")):
        return "pairs"
    if next(path.rglob("topics.miracl-v1.0-*"), None) is not None:
        return "miracl"
    if any(p for p in path.glob("*.json") if p.name != "meta.json" and not p.name.startswith(".")):
        return "lareqa"
    raise DataError("no pairs Parquet, LAReQA JSON or MIRACL topics found; pass --format", path=path)


def load_retrieval_set(path: str | Path, fmt: str = "auto", split: str | None = None,
                       langs: list[str] | None = None) -> RetrievalSet:
    """Load any supported evaluation format into a :class:`RetrievalSet`."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "pairs":
        import pyarrow as pa
        import pyarrow.compute as pc

        from hybrid_ray.data.pairs import list_splits, read_pairs

        if path.is_dir() and split is None and "test" in list_splits(path):
            split = "test"  # evaluation defaults to the held-out split, not train
        table = read_pairs(path, split if path.is_dir() else None)
        if langs:
            table = table.filter(pc.is_in(table.column("lang"), value_set=pa.array(langs)))
        name = f"{path.name}{'/' + split if split else ''}"
        return RetrievalSet.from_pairs(table, name=name)
    if fmt == "lareqa":
        from hybrid_ray.data.lareqa import load_lareqa

        return load_lareqa(path, langs=langs)
    if fmt == "miracl":
        from hybrid_ray.data.miracl import load_miracl

        return load_miracl(path, langs=langs, split=split or "dev")
    if fmt == "retrieval":
        rs = RetrievalSet.load(path)
        return rs.filter_langs(langs) if langs else rs
    raise DataError(f"unknown format (expected one of {', '.join(FORMATS)})", value=fmt)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model directory (DualEncoder.save_pretrained)")
    p.add_argument("--data", required=True, help="pairs dir/file, LAReQA dir or MIRACL dir")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--split", default=None, help="pairs: default test (if present); MIRACL: default dev")
    p.add_argument("--langs", default=None, help="comma-separated languages to keep (default: all)")
    p.add_argument("--out", default="eval-results", help="output directory")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-queries", type=int, default=None, help="first N queries per language")
    p.add_argument("--max-k", type=auto_or_number(int), default="auto",
                   help="search depth cap (pools up to this size are ranked fully; 0 = always full; "
                        "default auto: full up to 10,000 candidates, else 1000)")
    p.add_argument("--cache-dir", default=None,
                   help="where query/candidate embeddings are streamed as .npy memmaps (default OUT/cache)")
    p.add_argument("--no-cache", action="store_true", help="encode into memory instead (small sets)")
    p.add_argument("--block-size", type=int, default=None,
                   help="candidate rows per search block (default: 64 MiB of vectors)")
    p.add_argument("--progress", action="store_true", help="show encoding progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hybrid_ray.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError("must be >= 1", key="--batch-size", value=args.batch_size)
    if args.block_size is not None and args.block_size < 1:
        raise ConfigError("must be >= 1", key="--block-size", value=args.block_size)
    from hybrid_ray.encode import model_fingerprint
    from hybrid_ray.evaluate import evaluate_retrieval, format_table, map_matrix, subsample_queries
    from hybrid_ray.io import write_json_atomic, write_text_atomic
    from hybrid_ray.modeling.encoder import DualEncoder
    from hybrid_ray.plots import heatmap

    langs = [x.strip() for x in args.langs.split(",") if x.strip()] if args.langs else None
    rs = load_retrieval_set(args.data, args.format, args.split, langs)
    rs = subsample_queries(rs, args.max_queries)
    encoder = DualEncoder.from_pretrained(args.model)
    out = Path(args.out)
    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else out / "cache"
    max_k = None if args.max_k == 0 else args.max_k
    results = evaluate_retrieval(
        encoder, rs, batch_size=args.batch_size, max_k=max_k, progress=args.progress,
        cache_dir=cache_dir, cache_key=model_fingerprint(args.model), block_size=args.block_size,
    )
    results["model"] = str(args.model)
    results["data"] = str(args.data)
    if cache_dir is not None:
        results["search"]["cache_dir"] = str(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(results)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "table.md", table)
    if results["setting"] == "lareqa":
        mat, qls, cls_ = map_matrix(results)
        title = f"mAP {rs.name}: query x passage language"
        heatmap(mat, qls, out / "heatmap.png", col_langs=cls_, title=title)
    print(table)
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
