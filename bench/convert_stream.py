"""Streaming mMARCO conversion with bounded memory: ``python -m bench.convert_stream`` (``hybrid-ray bench convert``).

The benchmark writes a synthetic mMARCO-format directory (``--langs`` collections of
``--passages`` passages of ~``--passage-bytes`` bytes each, their queries, and ``--triples`` id
triples; >= 2 GB by default) under ``--workdir`` (default /tmp), then converts it in a fresh
process per path and records each process's peak RSS (``ru_maxrss`` from ``wait4``) and wall time:

* streamed: ``hybrid-ray data convert --format mmarco`` (one language at a time through
  ``ParquetWriter``, :mod:`hybrid_ray.data.streaming`), the path ``data convert`` takes now;
* in memory (``--no-old`` skips it): ``write_pairs(load_mmarco(...))``, the whole
  multi-language table built first, as ``data convert`` did before.

Both outputs are compared (equal tables). The input and the outputs are deleted at the end.
Writes bench/results/convert_stream.{json,md} with ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, command, loadavg, machine, versions

LANG_NAMES = ("english", "german", "french", "spanish", "italian", "portuguese", "dutch", "russian")
REPO = Path(__file__).resolve().parents[1]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def _words(rng: np.random.Generator, n: int = 5000) -> np.ndarray:
    syl = np.array(["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fi", "go", "ha", "je"])
    return np.array(["".join(rng.choice(syl, size=int(rng.integers(1, 4)))) for _ in range(n)])


def write_input(root: Path, langs: int, passages: int, passage_bytes: int, queries: int, triples: int,
                seed: int = 0) -> dict[str, Any]:
    """The synthetic mMARCO layout under ``root``; returns sizes. Lines are built in chunks of 50k."""
    rng = np.random.default_rng(seed)
    words = _words(rng)
    words_per = max(4, passage_bytes // 5)
    (root / "collections").mkdir(parents=True)
    (root / "queries" / "train").mkdir(parents=True)
    chunk = 50_000
    # One pool of passage bodies reused by every language (each line is prefixed by its language),
    # so generating 2 GB costs seconds, not minutes.
    bodies = [" ".join(words[rng.integers(0, len(words), size=words_per)]) for _ in range(chunk)]
    for name in LANG_NAMES[:langs]:
        with open(root / "collections" / f"{name}_collection.tsv", "w", encoding="utf-8") as f:
            for start in range(0, passages, chunk):
                stop = min(passages, start + chunk)
                f.write("".join(f"{i}\t{name} {i} {bodies[(i * 7919) % chunk]}\n" for i in range(start, stop)))
        with open(root / "queries" / "train" / f"{name}_queries.train.tsv", "w", encoding="utf-8") as f:
            f.write("".join(f"{q}\t{name} question {q} {bodies[q % chunk][:60]}\n" for q in range(queries)))
    q = rng.integers(0, queries, size=triples)
    pos = rng.integers(0, passages, size=triples)
    neg = rng.integers(0, passages, size=triples)
    with open(root / "triples.train.ids.small.tsv", "w", encoding="utf-8") as f:
        f.write("".join(f"{a}\t{b}\t{c}\n" for a, b, c in zip(q.tolist(), pos.tolist(), neg.tolist(), strict=True)))
    files = [p for p in root.rglob("*") if p.is_file()]
    selected = len(np.unique(np.concatenate([pos, neg])))
    return {"bytes": sum(p.stat().st_size for p in files), "files": len(files),
            "collection_bytes_per_lang": (root / "collections" / f"{LANG_NAMES[0]}_collection.tsv").stat().st_size,
            "passages_per_lang": passages, "passages_selected_per_lang": selected, "triples": triples,
            "queries_per_lang": queries, "langs": list(LANG_NAMES[:langs])}


def run_measured(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` in a child process; its wall time, exit code and peak RSS (MiB, from wait4)."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "exit_code": proc.returncode, "output_tail": out.strip().splitlines()[-3:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.convert_stream", description=__doc__.split("\n")[0])
    p.add_argument("--langs", type=int, default=4)
    p.add_argument("--passages", type=int, default=1_400_000, help="passages per language")
    p.add_argument("--passage-bytes", type=int, default=400)
    p.add_argument("--queries", type=int, default=100_000, help="queries per language")
    p.add_argument("--triples", type=int, default=200_000)
    p.add_argument("--no-old", action="store_true", help="skip the in-memory (old) path")
    p.add_argument("--workdir", default="/tmp")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if not 1 <= args.langs <= len(LANG_NAMES):
        raise SystemExit(f"--langs must be in 1..{len(LANG_NAMES)}")

    import pyarrow.parquet as pq

    from bench.common import write_results

    start_machine, up0 = machine(), uptime()
    tmp = Path(tempfile.mkdtemp(prefix="hybrid-ray-convert-bench-", dir=args.workdir))
    try:
        t = time.perf_counter()
        info = write_input(tmp / "mmarco", args.langs, args.passages, args.passage_bytes, args.queries,
                           args.triples)
        gen_s = time.perf_counter() - t
        print(f"[bench] input: {info['bytes'] / 2**30:.2f} GiB in {gen_s:.0f} s", flush=True)
        py = sys.executable
        runs: dict[str, dict[str, Any]] = {}
        runs["streamed"] = run_measured([py, "-m", "hybrid_ray.cli", "data", "convert", "--format", "mmarco",
                                         "--input", str(tmp / "mmarco"), "--out", str(tmp / "streamed.parquet")])
        runs["streamed"]["uptime_after"] = uptime()
        print(f"[bench] streamed: {runs['streamed']}", flush=True)
        if not args.no_old:
            code = ("import sys; from hybrid_ray.data.mmarco import load_mmarco; "
                    "from hybrid_ray.data.pairs import write_pairs; "
                    "write_pairs(load_mmarco(sys.argv[1]), sys.argv[2])")
            runs["in_memory"] = run_measured([py, "-c", code, str(tmp / "mmarco"), str(tmp / "old.parquet")])
            runs["in_memory"]["uptime_after"] = uptime()
            print(f"[bench] in memory: {runs['in_memory']}", flush=True)
        out_rows = pq.ParquetFile(tmp / "streamed.parquet").metadata.num_rows
        out_bytes = (tmp / "streamed.parquet").stat().st_size
        same = None
        if "in_memory" in runs and runs["in_memory"]["exit_code"] == 0:
            same = bool(pq.read_table(tmp / "streamed.parquet").equals(pq.read_table(tmp / "old.parquet")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    up1 = uptime()
    gib = info["bytes"] / 2**30
    result = {
        "command": command("bench.convert_stream", argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
        "input": info | {"gib": round(gib, 3), "generate_s": round(gen_s, 1)},
        "output": {"rows": out_rows, "bytes": out_bytes, "identical_to_in_memory_path": same},
        "runs": runs, "machine": start_machine, "uptime": {"start": up0, "end": up1}, "loadavg_end": loadavg(),
        "versions": versions(("pyarrow",)),
    }
    s = runs["streamed"]
    md = [
        f"# Streaming mMARCO conversion ({gib:.2f} GiB synthetic input)", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {start_machine['cpu']}, {start_machine['cores']} cores, {start_machine['ram_gib']} GiB RAM; "
        f"pyarrow {result['versions']['pyarrow']}.  ",
        f"`uptime` at start: `{up0}`; at the end: `{up1}`.  ",
        f"Input (generated into /tmp, deleted afterwards): {len(info['langs'])} languages x "
        f"{info['passages_per_lang']:,} passages ({info['collection_bytes_per_lang'] / 2**20:.0f} MiB of "
        f"collection per language), {info['queries_per_lang']:,} queries per language, {info['triples']:,} "
        f"triples selecting {info['passages_selected_per_lang']:,} passages per language; {info['bytes']:,} bytes "
        f"in all. Output: {out_rows:,} pair rows, {out_bytes / 2**20:.0f} MiB of Parquet (zstd).", "",
        "| path | seconds | peak RSS (MiB) | peak RSS / input |", "|---|---:|---:|---:|",
        f"| streamed (`data convert`, one language at a time) | {s['seconds']} | {s['peak_rss_mib']} | "
        f"{s['peak_rss_mib'] / (info['bytes'] / 2**20):.3f} |",
    ]
    if "in_memory" in runs:
        o = runs["in_memory"]
        md.append(f"| in memory (`write_pairs(load_mmarco(...))`, the old `data convert`) | {o['seconds']} | "
                  f"{o['peak_rss_mib']} | {o['peak_rss_mib'] / (info['bytes'] / 2**20):.3f} |")
    md += ["", f"Outputs identical: {same}.", "",
           "Peak RSS is bounded by the triples' ids plus one language's selected passages (each collection "
           "is streamed in 16 MiB CSV blocks and only the passages the triples use are kept), not by the "
           "collection sizes or the number of languages."]
    write_results(args.out, "convert_stream", result, "\n".join(md))
    print("\n".join(md))
    return 0 if s["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
