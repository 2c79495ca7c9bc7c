"""FAISS search throughput: exact Flat vs IVF vs HNSW (and Flat over 4 shards) on synthetic vectors.

    python -m bench.search                  # 1M x 384-d, ~3 min on 2 idle cores
    python -m bench.search --n 200000 --quick

Vectors are synthetic but clustered (a mixture of 1,024 Gaussian blobs on the unit sphere,
like real embedding spaces): on uniform random vectors IVF/HNSW recall is meaninglessly low.
Queries are fresh draws from the same mixture. Reported per index: build seconds, QPS
(queries/s, batch search, k=10) and recall@10 against the exact Flat result. HNSW is built on a
subset (``--hnsw-n``) because building a 1M-node graph takes many minutes on 2 cores; its recall is
measured against Flat on that same subset. Writes ``bench/results/search.json`` and ``search.md``
(figures, settings, machine, package versions and the command that reproduces the run).
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss
import numpy as np

from bench.common import RESULTS, command, loadavg, versions, write_results
from bench.common import machine as base_machine
from hybrid_ray.search import ShardedSearcher, build_index, search

PACKAGES = ("faiss-cpu", "faiss-gpu-cu12", "numpy")


def clustered(n: int, d: int, n_clusters: int, rng: np.random.Generator, centers: np.ndarray | None = None,
              chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``n_clusters`` random centres, generated in chunks (bounded temp memory)."""
    if centers is None:
        centers = rng.standard_normal((n_clusters, d)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centers[rng.integers(0, n_clusters, m)] + rng.standard_normal((m, d), dtype=np.float32) * (
            0.6 / np.sqrt(d)
        )
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centers


def recall_at(ids: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(ids, truth, strict=True)]))


def timed_search(index_or_searcher, q: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    search_fn = index_or_searcher.search if isinstance(index_or_searcher, ShardedSearcher) else (
        lambda qq, kk: search(index_or_searcher, qq, kk))
    search_fn(q[:10], k)  # warm-up
    t = time.perf_counter()
    _, ids = search_fn(q, k)
    return time.perf_counter() - t, ids


def machine() -> dict[str, object]:
    """bench.common.machine() (CPU, cores, RAM, platform, Python, load) plus FAISS's view of it."""
    return base_machine(faiss_threads=faiss.omp_get_max_threads(),
                        gpus=faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
                        numpy=np.__version__, faiss=faiss.__version__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--nq", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--ivf", default="IVF1024,Flat")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    p.add_argument("--train-sample", type=int, default=50_000)
    p.add_argument("--hnsw", default="HNSW32")
    p.add_argument("--hnsw-n", type=int, default=50_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    info = machine()  # load averages before the run; "loadavg_end" after it
    t = time.perf_counter()
    x, centers = clustered(args.n, args.d, 1024, rng)
    q, _ = clustered(args.nq, args.d, 1024, rng, centers)
    rows: list[dict[str, object]] = []
    print(f"data: {args.n} x {args.d} in {time.perf_counter() - t:.1f}s", flush=True)

    def record(name: str, n: int, build_s: float, search_s: float, ids: np.ndarray, truth: np.ndarray,
               **extra: object) -> None:
        row = {"index": name, "n": n, "build_s": round(build_s, 2), "qps": round(args.nq / search_s, 1),
               "ms_per_query": round(1000 * search_s / args.nq, 3),
               f"recall@{args.k}": round(recall_at(ids, truth), 4), **extra}
        rows.append(row)
        print(row, flush=True)

    t = time.perf_counter()
    flat = build_index(x, "Flat")
    b = time.perf_counter() - t
    s, truth = timed_search(flat, q, args.k)
    record("Flat (exact)", args.n, b, s, truth, truth)

    if args.shards > 1:
        t = time.perf_counter()
        sharded = ShardedSearcher([build_index(part) for part in np.array_split(x, args.shards)])
        b = time.perf_counter() - t
        del flat
        s, ids = timed_search(sharded, q, args.k)
        record(f"Flat x{args.shards} shards (ShardedSearcher)", args.n, b, s, ids, truth,
               identical_to_flat=bool(np.array_equal(ids, truth)))
        del sharded
    else:
        del flat

    t = time.perf_counter()
    ivf = build_index(x, args.ivf, train_sample=args.train_sample, seed=args.seed)
    b = time.perf_counter() - t
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        s, ids = timed_search(ivf, q, args.k)
        record(f"{args.ivf} nprobe={nprobe}", args.n, b, s, ids, truth)
    del ivf

    if args.hnsw and args.hnsw_n > 0:
        sub = x[: args.hnsw_n]
        _, sub_truth = search(build_index(sub, "Flat"), q, args.k)
        t = time.perf_counter()
        hnsw = build_index(sub, args.hnsw)
        b = time.perf_counter() - t
        for ef in (32, 128):
            hnsw.hnsw.efSearch = ef
            s, ids = timed_search(hnsw, q, args.k)
            record(f"{args.hnsw} efSearch={ef}", len(sub), b, s, ids, sub_truth)

    settings = {k: v for k, v in vars(args).items() if k != "out"}
    result = {"command": command("bench.search", argv), "settings": settings, "machine": info,
              "loadavg_end": loadavg(), "versions": versions(PACKAGES), "results": rows}
    kcol = f"recall@{args.k}"
    md = [f"# FAISS search benchmark ({args.n:,} x {args.d}-d clustered synthetic vectors, "
          f"{args.nq} queries, k={args.k})", "",
          f"Command: `{result['command']}`  ",
          f"Machine: {info['cpu']}, {info['cores']} cores (FAISS threads {info['faiss_threads']}), "
          f"{info['ram_gib']} GiB RAM, GPUs {info['gpus']}, load {info['loadavg']} -> {result['loadavg_end']}; "
          f"Python {info['python']}, numpy {info['numpy']}, faiss {info['faiss']}.", "",
          f"| index | n | build s | QPS | ms/query | {kcol} |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['index']} | {r['n']:,} | {r['build_s']} | {r['qps']} | {r['ms_per_query']} | {r[kcol]} |"
           for r in rows]
    md += ["", "QPS = batch throughput (all queries in one search call). Recall is against exact Flat "
           "on the same vectors."]
    write_results(args.out, "search", result, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
