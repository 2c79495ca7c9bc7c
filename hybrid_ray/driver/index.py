"""``hybrid-ray index``: encode a corpus with Ray Data and write sharded FAISS indexes.

    hybrid-ray index --model runs/hybrid/model --corpus data/bible --shards 4 --out runs/index
    hybrid-ray index --model DIR --corpus passages.jsonl --factory IVF1024,Flat --nprobe 32 --out idx

The corpus is a pairs data set (its positives become the passages, ``docid = pair_id/lang``) or
a Parquet / JSONL file with ``docid, lang, text``. Rerunning the same command resumes: complete
shards whose checksums still match are skipped. A non-Flat index must have enough passages per
shard to train (IVF: nlist, PQ: 2**nbits); that is checked before anything is encoded.
"""

from __future__ import annotations

import argparse

from hybrid_ray.cli import run_main
from hybrid_ray.console import add_verbose_flag, configure_console
from hybrid_ray.errors import ConfigError

#: The library's parameter names (ConfigError keys) -> this command's flags.
FLAGS = {"model_dir": "--model", "shards": "--shards", "factory": "--factory", "batch_size": "--batch-size"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray index", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model directory (DualEncoder.save_pretrained)")
    p.add_argument("--corpus", required=True, help="pairs dir/file or corpus .parquet/.jsonl")
    p.add_argument("--split", default=None, help="split of a pairs data-set directory")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--out", required=True, help="index directory")
    p.add_argument("--factory", default="Flat",
                   help="faiss.index_factory string: Flat (exact), IVF1024,Flat, HNSW32, IVF1024,PQ32...")
    p.add_argument("--nprobe", type=int, default=None,
                   help="IVF: inverted lists visited per query, recorded as the serving default (FAISS: 1)")
    p.add_argument("--ef-search", type=int, default=None,
                   help="HNSW: search-time candidate list size, recorded as the serving default (FAISS: 16)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8", "auto"],
                   help="encoder engine: torch (default; GPU actors when the cluster has GPUs), onnx / "
                        "onnx-int8 (ONNX Runtime, one CPU per actor; the model's onnx/ graph, else exported "
                        "once into $HYBRID_RAY_CACHE/onnx), auto (onnx when the model dir has a graph and no "
                        "GPU is visible)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="encoder actors (default: one per GPU, else one per CPU)")
    p.add_argument("--progress", action="store_true", help="show Ray Data progress bars")
    add_verbose_flag(p)
    p.add_argument("--local", action="store_true",
                   help="encode in this process instead of a Ray Data actor pool (small corpora)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console(args.verbose)
    from hybrid_ray.index import build_sharded_index, read_corpus

    if args.batch_size < 1:
        raise ConfigError("must be >= 1", key="--batch-size", value=args.batch_size)
    corpus = read_corpus(args.corpus, args.split)
    try:
        manifest = build_sharded_index(
            args.model, corpus, args.out, shards=args.shards, factory=args.factory,
            batch_size=args.batch_size, concurrency=args.concurrency, corpus_path=str(args.corpus),
            progress=args.progress, search_params={"nprobe": args.nprobe, "efSearch": args.ef_search},
            local=args.local, backend=args.backend,
        )
    except ConfigError as exc:
        if exc.key not in FLAGS:
            raise
        raise ConfigError(exc.message, key=FLAGS[exc.key], value=exc.value) from exc
    kind = ", ".join([manifest["factory"], *(f"{k}={v}" for k, v in manifest["search_params"].items())])
    print(f"index {args.out}: {manifest['count']} passages, dim {manifest['dim']}, "
          f"{len(manifest['shards'])} shard(s) [{kind}], encoder {manifest['encoder_backend']}; "
          f"built {len(manifest['built'])}, "
          f"skipped {len(manifest['skipped'])} (already complete)")
    return 0


if __name__ == "__main__":
    run_main(main)
