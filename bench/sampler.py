"""Benchmark the hybrid batch sampler at scale: ``python -m bench.sampler``.

Plans an epoch of 10M parallel pairs x 10 languages (partially parallel: each cell present with
probability 0.9) and measures, on one rank as every rank would do it independently: sampler
construction, the epoch plan, the first batch of each stream (which pays its permutation),
steady-state per-batch cost, a full epoch of one rank's slices, and peak memory (tracemalloc:
the sampler's own allocations beyond the availability matrix; ru_maxrss: the whole process).
Writes bench/results/sampler.json and bench/results/sampler.md.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import timeit
import tracemalloc
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, loadavg, machine, versions, write_results
from hybrid_ray.sampler import HybridBatchSampler, rank_slice


def availability(n_pairs: int, n_langs: int, coverage: float, seed: int = 0) -> np.ndarray:
    """Random partially-parallel matrix, built in chunks to keep the float temporaries small."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_pairs, n_langs), dtype=bool)
    chunk = 1 << 20
    for a in range(0, n_pairs, chunk):
        b = min(a + chunk, n_pairs)
        out[a:b] = rng.random((b - a, n_langs), dtype=np.float32) < coverage
    return out


def run(n_pairs: int, n_langs: int, batch: int, alpha: float, world: int, steady: int) -> dict:
    langs = [f"l{i}" for i in range(n_langs)]
    t = time.perf_counter()
    avail = availability(n_pairs, n_langs, 0.9)
    build_matrix_s = time.perf_counter() - t

    tracemalloc.start()
    t = time.perf_counter()
    s = HybridBatchSampler(avail, langs, batch, alpha=alpha, seed=0, lang_sampling="temperature",
                           lang_temperature=2.0)
    construct_s = time.perf_counter() - t
    t = time.perf_counter()
    is_mono, stream, _ = s.epoch_plan(0)
    plan_s = time.perf_counter() - t

    first_touch: dict[str, float] = {}
    for st in range(n_langs + 1):  # first batch of every stream pays its permutation
        step = int(np.flatnonzero(stream == st)[0])
        t = time.perf_counter()
        s.batch(0, step)
        first_touch["cross" if st == n_langs else langs[st]] = time.perf_counter() - t

    steps = np.arange(s.steps_per_epoch)[: max(steady, 1)]
    lat = {"mono": [], "cross": []}
    for step in steps:  # all permutations cached now: pure per-batch cost
        t = time.perf_counter()
        b = rank_slice(s.batch(0, int(step)), 0, world)
        lat[b.kind].append(time.perf_counter() - t)

    del s  # free the cached permutations: the full-epoch run starts from a fresh sampler
    t = time.perf_counter()
    fresh = HybridBatchSampler(avail, langs, batch, alpha=alpha, seed=0, lang_sampling="temperature",
                               lang_temperature=2.0)
    n = sum(1 for _ in fresh.iter_epoch(1, rank=world - 1, world_size=world))
    full_epoch_s = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    def stats(xs: list[float]) -> dict[str, float]:
        a = np.asarray(xs) * 1e6
        return {"n": int(a.size), "mean_us": float(a.mean()), "p50_us": float(np.median(a)),
                "p99_us": float(np.percentile(a, 99))} if a.size else {"n": 0}

    return {
        "config": {"n_pairs": n_pairs, "n_langs": n_langs, "global_batch_size": batch, "alpha": alpha,
                   "world_size": world, "coverage": 0.9, "lang_sampling": "temperature T=2",
                   "steps_per_epoch": fresh.steps_per_epoch},
        "availability_matrix_mb": avail.nbytes / 2**20,
        "build_matrix_s": build_matrix_s,
        "construct_s": construct_s,
        "epoch_plan_s": plan_s,
        "mono_fraction": float(is_mono.mean()),
        "first_batch_per_stream_s": first_touch,
        "first_batch_all_streams_s": float(sum(first_touch.values())),
        "steady_batch": {"mono": stats(lat["mono"]), "cross": stats(lat["cross"])},
        "full_epoch_one_rank_s": full_epoch_s,
        "full_epoch_batches": n,
        "full_epoch_per_batch_us": full_epoch_s / max(n, 1) * 1e6,
        "sampler_peak_traced_mb": peak / 2**20,
        "process_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sampler", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=10_000_000)
    p.add_argument("--langs", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--world", type=int, default=8)
    p.add_argument("--steady", type=int, default=3000, help="batches timed after all streams are warm")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    start_machine = machine(numpy=np.__version__)
    res = run(args.pairs, args.langs, args.batch, args.alpha, args.world, args.steady)
    res["contention_probe_us"] = timeit.timeit(lambda: np.ones(1000).sum(), number=2000) / 2000 * 1e6
    res["machine"] = start_machine
    res["loadavg_end"] = loadavg()
    res["versions"] = versions(("numpy",))
    res["command"] = command("bench.sampler", argv)
    c, sb = res["config"], res["steady_batch"]
    md = [
        "# Hybrid batch sampler benchmark",
        "",
        f"Command: `{res['command'].strip()}`  ",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} CPUs (shared), "
        f"{res['machine']['ram_gib']} GiB RAM, load {res['machine']['loadavg']} -> {res['loadavg_end']}; "
        f"{res['machine']['platform']}, Python {res['machine']['python']}, numpy {res['machine']['numpy']}",
        "",
        f"Data: {c['n_pairs']:,} pairs x {c['n_langs']} languages, each cell present with "
        f"p={c['coverage']} ({res['availability_matrix_mb']:.0f} MiB bool matrix); "
        f"B={c['global_batch_size']}, alpha={c['alpha']}, {c['lang_sampling']}, "
        f"{c['steps_per_epoch']:,} steps/epoch, slices for world size {c['world_size']}.",
        "",
        f"CPU contention at run time: `np.ones(1000).sum()` took {res['contention_probe_us']:.1f} µs "
        "(about 3 µs on an idle core); absolute per-batch times scale with it.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| construct sampler (counts, cross mask) | {res['construct_s']:.2f} s |",
        f"| epoch plan ({c['steps_per_epoch']:,} steps) | {res['epoch_plan_s'] * 1e3:.1f} ms |",
        f"| first batch of all {c['n_langs'] + 1} streams (pays the permutations) | "
        f"{res['first_batch_all_streams_s']:.2f} s |",
        f"| steady mono batch + rank slice (mean / p99) | {sb['mono'].get('mean_us', 0):.0f} / "
        f"{sb['mono'].get('p99_us', 0):.0f} µs |",
        f"| steady cross batch + rank slice (mean / p99) | {sb['cross'].get('mean_us', 0):.0f} / "
        f"{sb['cross'].get('p99_us', 0):.0f} µs |",
        f"| full epoch, one rank, fresh sampler ({res['full_epoch_batches']:,} batches) | "
        f"{res['full_epoch_one_rank_s']:.1f} s ({res['full_epoch_per_batch_us']:.0f} µs/batch amortised) |",
        f"| peak traced allocations (sampler, both instances) | {res['sampler_peak_traced_mb']:.0f} MiB |",
        f"| process max RSS | {res['process_max_rss_mb']:.0f} MiB |",
        "",
    ]
    write_results(args.out, "sampler", res, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
