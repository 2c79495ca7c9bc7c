"""Copy a pairs data-set directory, keeping a seeded random subset of one split's pair ids.

    python scripts/subset_pairs.py runs/demo-data runs/demo-sub1500 --pairs 1500 [--split train] [--seed 0]

Why: mining hard negatives for the demo's whole train split (142k rows) takes hours on 2 CPU cores.
A controlled comparison of shipped vs mined negatives only needs both arms to train on the *same*
pairs, so we cut the split to N pair ids (every language version of a kept pair is kept, so the
data stay parallel), copy every other split and ``meta.json`` unchanged, then mine the copy.
The output is written to a temporary directory and renamed into place (atomic).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

# Runnable as `python scripts/subset_pairs.py` from a checkout or an uploaded working dir.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def subset(data: Path, out: Path, n_pairs: int, split: str = "train", seed: int = 0) -> int:
    """Write the subset data set to ``out``; returns the rows kept."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from hybrid_ray.data.pairs import read_pairs, write_pairs
    from hybrid_ray.errors import DataError

    if not data.is_dir():
        raise DataError("must be a data-set directory (with <split>.parquet and meta.json)", path=data)
    if out.exists():
        raise DataError("already exists (choose a new output directory)", path=out)
    table = read_pairs(data, split)
    ids = pc.unique(table.column("pair_id")).to_pylist()
    if not 0 < n_pairs <= len(ids):
        raise DataError(f"--pairs must be in [1, {len(ids)}] (pair ids in split {split!r})",
                        path=data, field="pair_id", value=n_pairs)
    keep = np.random.default_rng(seed).choice(len(ids), size=n_pairs, replace=False)
    wanted = pa.array(sorted(ids[i] for i in keep), type=table.schema.field("pair_id").type)
    kept = table.filter(pc.is_in(table.column("pair_id"), value_set=wanted))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for item in data.iterdir():
            if item.name == f"{split}.parquet":
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        write_pairs(kept, tmp / f"{split}.parquet")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return kept.num_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="pairs data-set directory")
    p.add_argument("out", type=Path, help="new data-set directory (must not exist)")
    p.add_argument("--pairs", type=int, required=True, help="pair ids to keep")
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = subset(args.data, args.out, args.pairs, args.split, args.seed)
    print(f"wrote {args.out}: {rows} rows of {args.pairs} pair ids in {args.split}")
    return 0


if __name__ == "__main__":
    from hybrid_ray.cli import run_main

    run_main(main)
