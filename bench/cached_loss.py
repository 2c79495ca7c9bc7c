"""Peak memory and time per sample vs batch size: plain InfoNCE vs the cached (GradCache) loss.

    python -m bench.cached_loss                          # e5-small, batches 8 and 32 (~15 min on 2 cores)
    python -m bench.cached_loss --model tiny --batches 8 16 --steps 1     # seconds-long smoke run
    hybrid-ray bench cached [same options]

What one point is: a fresh child process (so its peak RSS is its own) loads the embedded default's
encoder (the converted multilingual-e5-small, word embeddings frozen as in demo.yaml, max_length
64), takes B pairs of the demo data with 1 hard negative each (B queries, 2B passages), and runs
``--steps`` measured training steps (loss, backward, AdamW) with ``infonce`` (both sides encoded with graphs,
then one backward) or ``cached_infonce`` (``--chunk`` rows per forward). One process = one worker
holding the whole batch: with W workers each holds B/W pairs, so a worker's batch here is the
per-worker batch of a W-worker run with W x B global pairs. One torch thread (a Ray Train worker's
``OMP_NUM_THREADS=1``).

Reported per point: ``peak_rss_mib`` (the highest RSS sampled every 5 ms during the measured
steps, model and optimizer included), ``base_rss_mib`` (RSS after the model and a first tiny step,
before the measured steps: weights, optimizer state, allocator pools), their difference
``step_mib`` (what the step's activations add), ``ru_maxrss_mib`` (the process's whole-life
high-water mark, model loading included), and seconds per pair of the last step. On a GPU the same
figures come from torch's allocator (``max_memory_allocated``). Points run one after another; a
point whose step took longer than ``--max-step-s`` stops that loss's larger batches (recorded).
Writes bench/results/cached_loss.{json,md} with the load before and after (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, command, loadavg, machine, model_arg, versions, write_results

DEFAULT_DATA = Path("/work/data/demo-data")


def _texts(data: Path | None, n: int) -> tuple[list[str], list[str]]:
    """n queries and 2n passages (n positives, then one hard negative per query)."""
    if data is None:  # the tiny smoke model's vocabulary
        from hybrid_ray.testing import signature_pairs

        table = signature_pairs(max(n, 1), langs=("en",)).to_pylist()
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(data / "train.parquet", columns=["query", "positive", "negatives"]).slice(0, n)
        table = table.to_pylist()
    if len(table) < n:
        raise SystemExit(f"[bench] only {len(table)} pairs in {data}, {n} asked")
    rows = table[:n]
    return [r["query"] for r in rows], [r["positive"] for r in rows] + [r["negatives"][0] for r in rows]


def _point(args: argparse.Namespace) -> dict[str, Any]:
    """One (loss, batch) measurement, in this (child) process."""
    import psutil
    import torch

    from hybrid_ray.config import ModelConfig
    from hybrid_ray.losses import build_loss, needs_encoder
    from hybrid_ray.train_loop import build_encoder

    torch.set_num_threads(1)
    gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if gpu else "cpu")
    cfg = ModelConfig(name_or_path=args.model_dir, query_prefix="query: ", passage_prefix="passage: ",
                      max_length=args.max_length, temperature=0.05, freeze_embeddings=True)
    encoder = build_encoder(cfg).to(device)
    encoder.train()
    opt = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=3e-5)
    loss_fn = build_loss(args.loss, 0.05, {"chunk_size": args.chunk} if args.loss == "cached_infonce" else {})
    queries, passages = _texts(None if args.model_dir == "tiny" else Path(args.data), args.batch)

    def step(q_texts: list[str], p_texts: list[str]) -> float:
        q = {k: v.to(device) for k, v in encoder.tokenize(q_texts, "query").items()}
        p = {k: v.to(device) for k, v in encoder.tokenize(p_texts, "passage").items()}
        if needs_encoder(loss_fn):
            loss, _ = loss_fn.step(encoder, q, p)
        else:
            q_emb, scale = encoder(**q, return_scale=True)
            loss = loss_fn(q_emb, encoder(**p), logit_scale=scale)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step(queries[:2], passages[:2] + passages[args.batch:args.batch + 2])  # optimizer state, allocator warm-up
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = psutil.Process().memory_info().rss / 2**20
    times, losses, sampled = [], [], [base]
    done = threading.Event()

    def sample() -> None:  # RSS every 5 ms: ru_maxrss alone would also see the model load's peak
        proc = psutil.Process()
        while not done.wait(0.005):
            sampled.append(proc.memory_info().rss / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    if not gpu:
        sampler.start()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step(queries, passages))
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    done.set()
    if gpu:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        sampler.join()
        peak = max(sampled)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: whole life
    return {"loss_name": args.loss, "batch": args.batch, "device": device.type, "base_rss_mib": round(base, 1),
            "peak_rss_mib": round(peak, 1), "step_mib": round(peak - base, 1), "ru_maxrss_mib": round(max_rss, 1),
            "step_s": [round(t, 3) for t in times], "s_per_pair": round(times[-1] / args.batch, 5),
            "loss": losses[-1]}


def _run_point(args: argparse.Namespace, loss: str, batch: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.cached_loss", "--point", "--loss", loss, "--batch", str(batch),
           "--model", str(args.model_dir), "--data", str(args.data), "--steps", str(args.steps),
           "--chunk", str(args.chunk), "--max-length", str(args.max_length)] + (["--cpu"] if args.cpu else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        return {"loss_name": loss, "batch": batch, "error": out.stderr.strip().splitlines()[-1:] or ["?"]}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def _markdown(result: dict[str, Any]) -> str:
    rows = ["| loss | batch (pairs) | peak RSS MiB | step adds MiB | s / pair (last step) |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for p in result["points"]:
        if "error" in p:
            rows.append(f"| {p['loss_name']} | {p['batch']} | error: {p['error'][0]} | | |")
        else:
            rows.append(f"| {p['loss_name']} | {p['batch']} | {p['peak_rss_mib']:.0f} | {p['step_mib']:.0f} | "
                        f"{p['s_per_pair']:.4f} |")
    skipped = "".join(f"\n- skipped: {s}" for s in result["skipped"])
    return (f"# Cached (GradCache) vs plain InfoNCE: memory and time per pair vs batch size\n\n"
            f"Command: `{result['command']}`  \nModel: {result['model']} (max_length {result['max_length']}, "
            f"word embeddings frozen, 1 hard negative, AdamW, 1 torch thread, {result['steps']} measured step(s) "
            f"per point after a warm-up step); cached chunk {result['chunk']} rows. One process holds the "
            f"whole batch (= one worker's share).  \nMachine: {result['machine']['cpu']}, "
            f"{result['machine']['cores']} cores; `uptime` before: {result['uptime_before']}; after: "
            f"{result['uptime_after']}. Shared machine: times are noisy under load, memory is not.\n\n"
            + "\n".join(rows) + "\n" + skipped + "\n")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return str(loadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hybrid-ray bench cached", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="e5-small", help="e5-small (converted on first use), a model dir, or tiny")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="demo pairs directory (train.parquet)")
    # Defaults sized for the 2-core dev box, where one e5-small pair (3 sequences of 64 tokens)
    # costs ~30 MiB of activations and ~5 s per plain step on one loaded core: 2 points per loss
    # in < 15 min. With a GPU: --batches 32 64 128 256 --cached-extra 512 --chunk 32.
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--cached-extra", type=int, nargs="*", default=[], help="batches for the cached loss only")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--max-step-s", type=float, default=400.0, help="stop a loss's larger batches past this")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--point", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loss", default="infonce", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.point:
        args.model_dir = args.model
        print(json.dumps(_point(args)), flush=True)
        return 0
    args.model_dir = "tiny" if args.model == "tiny" else str(model_arg(args.model))
    before = _uptime()
    points, skipped = [], []
    for loss, batches in (("infonce", args.batches), ("cached_infonce", args.batches + list(args.cached_extra))):
        stop = False
        for batch in sorted(batches):
            if stop:
                skipped.append(f"{loss} batch {batch} (a smaller batch's step took > {args.max_step_s} s)")
                continue
            res = _run_point(args, loss, batch)
            points.append(res)
            print(f"[bench] {json.dumps(res)}", flush=True)
            stop = "error" in res or max(res.get("step_s", [0])) > args.max_step_s
    result = {"command": command("bench.cached_loss", argv), "model": args.model, "max_length": args.max_length,
              "steps": args.steps, "chunk": args.chunk, "points": points, "skipped": skipped,
              "uptime_before": before, "uptime_after": _uptime(), "machine": machine(),
              "versions": versions(["torch", "transformers", "deepspeed"])}
    json_path, md_path = write_results(args.out, "cached_loss", result, _markdown(result))
    print(f"[bench] wrote {json_path} and {md_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
