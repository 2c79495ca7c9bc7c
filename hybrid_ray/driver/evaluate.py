"""``hybrid-ray eval``: mono / cross / multilingual mAP, language bias and MIRACL metrics.

    hybrid-ray eval --model runs/hybrid/model --data data/bible --split test --out runs/eval
    hybrid-ray eval --model DIR --data xquad-r/ --format lareqa --max-queries 200
    hybrid-ray eval --model DIR --data miracl/ --format miracl --split dev

Writes ``results.json`` (every number, JSON), ``table.md`` (the printed report) and, for
LAReQA-style sets, ``heatmap.png`` (query-language x passage-language mAP) into ``--out``, each
atomically, and prints the table. Per query (:mod:`hybrid_ray.runfiles`): ``per_query.parquet``
(AP, RR, nDCG@10, the setting's metrics, language bias, relevant ranks per setting), TREC runs
``runs/{mono,cross,multi,miracl}.trec`` (``--run-depth``, ``--run-tag``) and their qrels
``qrels/{setting}.txt``, from which trec_eval reproduces the table; ``hybrid-ray compare`` reads them.

``results.json`` also records the training ("seen") languages, for ``compare``'s seen vs zero-shot
breakdown: ``--train-langs``, else the data set's ``meta.json`` (``languages.train``, as the demo
data writes it), else none.

Embeddings are streamed to float32 memmaps under ``--cache-dir`` (default ``OUT/cache``:
``queries.npy``, ``candidates.npy``, each with a ``.json`` key) and searched block by block, so
memory stays bounded for 1M-candidate pools; a rerun with the same model files, data and batch
size reuses them. ``--no-cache`` keeps everything in memory (small sets).

``--backend onnx`` (or ``onnx-int8``) encodes with ONNX Runtime on CPU instead of eager PyTorch
(:mod:`hybrid_ray.export.backend`); ``results.json`` records it under ``encoder``, and the cached
embeddings of one backend are never reused by another.

Encoding (``--encode``): ``local`` runs the model in this process; ``ray`` encodes through the
Ray Data actor pool that ``hybrid-ray index`` and ``mine`` use (:mod:`hybrid_ray.encode_ray`;
``--concurrency`` actors, ``--num-gpus`` per actor); ``auto`` (default) encodes each text set
(queries, candidates) in-process up to ``--local-max-rows`` rows and on Ray above. Search is the
same exact blockwise search either way; ``results.json`` records the backend of each set.
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
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8", "auto"],
                   help="encoder engine: torch (default), onnx / onnx-int8 (ONNX Runtime on CPU; the model's "
                        "onnx/ graph, else exported once into $HYBRID_RAY_CACHE/onnx), auto (onnx when the "
                        "model dir has a graph and no GPU is visible)")
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
    p.add_argument("--encode", choices=("auto", "ray", "local"), default="auto",
                   help="Ray Data actor pool (the one of 'index' and 'mine'), in-process, or auto: in-process "
                        "for text sets up to --local-max-rows, Ray above (default auto)")
    p.add_argument("--local-max-rows", type=int, default=None,
                   help="auto: largest text set encoded in-process (default 50,000)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="Ray encoder actors (default: one per GPU, else one per CPU)")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per Ray encoder actor (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--run-depth", type=int, default=None,
                   help="candidates per query in the TREC run files (default: the largest metric cut-off, "
                        "extended to the last relevant candidate; 0 = the whole searched list)")
    p.add_argument("--run-max-depth", type=int, default=1000,
                   help="cap on run-file lists extended to the last relevant candidate (0 = no cap; "
                        "queries cut are counted in results.json per_query_files.cut)")
    p.add_argument("--run-tag", default=None, help="tag column of the run files (default: the model dir name)")
    p.add_argument("--train-langs", default=None,
                   help="comma-separated languages the model was trained on (default: the data's meta.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hybrid_ray.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError("must be >= 1", key="--batch-size", value=args.batch_size)
    if args.block_size is not None and args.block_size < 1:
        raise ConfigError("must be >= 1", key="--block-size", value=args.block_size)
    if args.run_max_depth < 0:
        raise ConfigError("must be >= 0 (0 = no cap)", key="--run-max-depth", value=args.run_max_depth)
    if args.run_depth is not None and args.run_depth < 0:
        raise ConfigError("must be >= 0 (0 = the whole searched list)", key="--run-depth", value=args.run_depth)
    if args.local_max_rows is not None and args.local_max_rows < 0:
        raise ConfigError("must be >= 0", key="--local-max-rows", value=args.local_max_rows)
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError("must be >= 1", key="--concurrency", value=args.concurrency)
    if args.num_gpus is not None and args.num_gpus < 0:
        raise ConfigError("must be >= 0", key="--num-gpus", value=args.num_gpus)
    from hybrid_ray.encode_ray import EVAL_LOCAL_MAX_ROWS, EncodeOptions
    from hybrid_ray.eval_table import format_table, map_matrix
    from hybrid_ray.evaluate import evaluate_retrieval, subsample_queries
    from hybrid_ray.export.backend import describe, open_encoder, resolve_backend
    from hybrid_ray.io import write_json_atomic, write_text_atomic
    from hybrid_ray.plots import heatmap
    from hybrid_ray.runfiles import PerQueryLog

    langs = [x.strip() for x in args.langs.split(",") if x.strip()] if args.langs else None
    rs = load_retrieval_set(args.data, args.format, args.split, langs, hint="; pass --format")
    rs = subsample_queries(rs, args.max_queries)
    backend = resolve_backend(args.model, args.backend)
    encoder = open_encoder(args.model, backend)
    out = Path(args.out)
    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else out / "cache"
    max_k = None if args.max_k == 0 else args.max_k
    log = PerQueryLog(run_depth=args.run_depth, max_depth=args.run_max_depth or None)
    results = evaluate_retrieval(
        encoder, rs, batch_size=args.batch_size, max_k=max_k, progress=args.progress,
        cache_dir=cache_dir, cache_key=_cache_key(args.model, backend.label), block_size=args.block_size,
        per_query=log,
        encode=EncodeOptions(mode=args.encode, model_dir=args.model, concurrency=args.concurrency,
                             num_gpus=args.num_gpus, encoder_backend=backend,
                             local_max_rows=EVAL_LOCAL_MAX_ROWS if args.local_max_rows is None
                             else args.local_max_rows),
    )
    results["model"] = str(args.model)
    results["data"] = str(args.data)
    results["encoder"] = describe(backend)
    results["train_langs"], results["train_langs_source"] = _train_langs(args)
    if cache_dir is not None:
        results["search"]["cache_dir"] = str(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(results)
    tag = args.run_tag or Path(args.model).resolve().name or "hybrid-ray"
    results["per_query_files"] = log.write(out, tag="".join(tag.split()))
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "table.md", table)
    if results["setting"] == "lareqa":
        mat, qls, cls_ = map_matrix(results)
        title = f"mAP {rs.name}: query x passage language"
        heatmap(mat, qls, out / "heatmap.png", col_langs=cls_, title=title)
    print(table)
    print(f"wrote {out / 'results.json'}")
    return 0


def _cache_key(model: str, backend: str) -> str:
    """The embedding cache's encoder key: the model files, plus the backend unless it is torch."""
    from hybrid_ray.encode import model_fingerprint

    fp = model_fingerprint(model)
    return fp if backend == "torch" else f"{fp}:{backend}"


def _train_langs(args: argparse.Namespace) -> tuple[list[str] | None, str | None]:
    """The model's training languages and where they came from (``--train-langs`` / data meta.json)."""
    if args.train_langs:
        return sorted({x.strip() for x in args.train_langs.split(",") if x.strip()}), "--train-langs"
    from hybrid_ray.data.pairs import read_meta

    data = Path(args.data)
    langs = (read_meta(data).get("languages") or {}).get("train") if data.is_dir() else None
    return (sorted(langs), str(data / "meta.json")) if langs else (None, None)


if __name__ == "__main__":
    run_main(main)
