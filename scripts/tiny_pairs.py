"""Write a small parallel pairs data set (3 languages, tiny-tokenizer vocabulary) for smoke runs.

    python scripts/tiny_pairs.py OUT.parquet [--pairs 64] [--seed 0]

``hybrid_ray/configs/tiny.yaml`` leaves ``data.path`` unset (``???``): this gives it something to
train on without downloads or the demo assets. The rows come from
:func:`hybrid_ray.testing.signature_pairs` (query and positive share a 3-word signature, so the
tiny encoder's loss falls within a few dozen steps). scripts/job_submit_local.sh runs it for its
default job; on a cluster, write to shared storage inside the job:

    ray job submit --working-dir . -- bash -ec 'python scripts/tiny_pairs.py /mnt/shared/data/tiny.parquet &&
        python -m hybrid_ray.train --config hybrid_ray/configs/tiny.yaml data.path=/mnt/shared/data/tiny.parquet'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Runnable as `python scripts/tiny_pairs.py` from a checkout or an uploaded working dir.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="output .parquet file (written atomically)")
    p.add_argument("--pairs", type=int, default=64, help="pair ids (x 3 languages rows)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.pairs < 2:
        p.error("--pairs must be >= 2")
    if not args.out.name.endswith(".parquet"):
        p.error("OUT must be a .parquet file")

    from hybrid_ray.data.pairs import write_pairs
    from hybrid_ray.testing import signature_pairs

    table = signature_pairs(args.pairs, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_pairs(table, args.out)
    langs = sorted(set(table.column("lang").to_pylist()))
    print(f"wrote {args.out}: {table.num_rows} rows ({args.pairs} pairs x {', '.join(langs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
