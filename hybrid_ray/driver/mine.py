"""``hybrid-ray mine``: mine hard negatives for a pairs split with an encoder, write a new data set.

    hybrid-ray mine --model ~/.cache/hybrid_ray/multilingual-e5-small --data data/bible --out data/bible-hn
    hybrid-ray mine --model DIR --data pairs.jsonl --out mined.parquet --num-negatives 8 --margin 0.95

Each query is searched (exact FAISS, blockwise) against the split's positives in its own language
(``--langs-mode all``: every language). The positive, its parallel versions and duplicates of the
query or positive never become negatives; ``--range-min/--range-max`` pick the rank window and
``--margin`` keeps scores <= margin x the positive's score. Other splits are copied unchanged.
Rerunning with the same ``--work-dir`` (default ``<out>.mine-work``) resumes: embeddings and
finished languages are reused.
"""

from __future__ import annotations

import argparse
import json
import sys

from hybrid_ray.cli import run_main
from hybrid_ray.errors import ConfigError

#: The library's parameter names (ConfigError keys) -> this command's flags.
FLAGS = {
    "model_dir": "--model", "num_negatives": "--num-negatives", "range_min": "--range-min",
    "range_max": "--range-max", "margin": "--margin", "max_sim": "--max-sim", "langs_mode": "--langs-mode",
    "langs": "--langs", "batch_size": "--batch-size", "encode": "--encode", "out": "--out",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray mine", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="encoder directory (DualEncoder.save_pretrained)")
    p.add_argument("--data", required=True, help="pairs data-set directory or .parquet/.jsonl(.gz) file")
    p.add_argument("--split", default="train", help="split of a data-set directory to mine (default: train)")
    p.add_argument("--out", required=True, help="output data-set directory (or file, for a file input)")
    p.add_argument("--work-dir", default=None, help="embeddings and per-language results (default <out>.mine-work)")
    p.add_argument("--num-negatives", type=int, default=4, help="negatives per row (fewer when not found)")
    p.add_argument("--range-min", type=int, default=0, help="skip this many closest eligible candidates")
    p.add_argument("--range-max", type=int, default=50, help="consider eligible candidates up to this rank")
    p.add_argument("--margin", type=float, default=None,
                   help="keep negatives scoring <= MARGIN x the positive's score (e.g. 0.95); default off")
    p.add_argument("--max-sim", type=float, default=0.95,
                   help="cosine to the positive (or score to the query) at/above which a passage is a duplicate")
    p.add_argument("--langs-mode", choices=("own", "all"), default="own",
                   help="search each query's own language (default) or every language")
    p.add_argument("--langs", default=None, help="comma-separated query languages to mine (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--encode", choices=("auto", "ray", "local"), default="auto",
                   help="Ray Data actor pool, in-process, or auto (in-process up to --local-max-rows rows)")
    p.add_argument("--local-max-rows", type=int, default=4096)
    p.add_argument("--concurrency", type=int, default=None, help="encoder actors (default: per GPU, else per CPU)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hybrid_ray.mining import MiningConfig, mine_dataset

    langs = tuple(x.strip() for x in args.langs.split(",") if x.strip()) if args.langs else None
    try:
        cfg = MiningConfig(
            num_negatives=args.num_negatives, range_min=args.range_min, range_max=args.range_max,
            margin=args.margin, max_sim=args.max_sim, langs_mode=args.langs_mode, langs=langs,
            batch_size=args.batch_size, encode=args.encode, local_max_rows=args.local_max_rows,
            concurrency=args.concurrency,
        ).check()
        stats = mine_dataset(args.data, args.out, args.model, cfg, split=args.split, work_dir=args.work_dir,
                             report=lambda line: print(line, file=sys.stderr, flush=True))
    except ConfigError as exc:
        if exc.key not in FLAGS:
            raise
        raise ConfigError(exc.message, key=FLAGS[exc.key], value=exc.value) from exc
    per_row = stats["negatives_per_row"]
    print(f"mine {args.out}: {stats['rows_mined']} of {stats['rows']} rows mined, "
          f"{per_row['mean']:.2f} negatives/row (min {per_row['min']}, max {per_row['max']}); "
          f"{stats['rows_short']} rows with fewer than {stats['requested']}; {stats['seconds']:.1f} s")
    print(json.dumps(stats["langs"], sort_keys=True))
    return 0


if __name__ == "__main__":
    run_main(main)
