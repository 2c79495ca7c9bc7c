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
from hybrid_ray.data.formats import format_names, load_retrieval_set


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model directory (DualEncoder.save_pretrained)")
    p.add_argument("--data", required=True,
                   help="data set in any registered format (pairs dir/file, LAReQA, MIRACL, retrieval dir)")
    p.add_argument("--format", default="auto", choices=["auto", *format_names("retrieval")],
                   help="data format (default auto: detected from the file names)")
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
    rs = load_retrieval_set(args.data, args.format, args.split, langs, hint="; pass --format")
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
