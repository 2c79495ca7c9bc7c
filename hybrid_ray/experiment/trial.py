"""One experiment trial (a Tune driver function): train the trial's config, then evaluate it on
every test set with per-query results.

Like :func:`hybrid_ray.tuning.search.run_trial` the function asks Tune for almost no CPU and
builds a ``TorchTrainer`` (:func:`hybrid_ray.train.run_training`) whose workers hold the real
resources; evaluation then runs in the trial process itself, after the workers are gone, with
``eval_threads`` torch threads. Everything a trial writes is keyed by its label
(``<exp>/train/<label>``, ``<exp>/evals/<label>/<set>``): a retried or restored trial finds its
finished export and its finished evaluations and does not repeat them (Ray Train V2 resumes an
unfinished training run from its latest checkpoint under the same name).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_ray.config import TrainConfig
from hybrid_ray.experiment.config import EvalSetSchema, TrialSpec, trial_train_config

RESULTS_FILE = "results.json"
PER_QUERY_FILE = "per_query.parquet"


@dataclass
class ExperimentSetup:
    """What every trial needs from the driver (shipped once through the object store)."""

    train_base: TrainConfig
    eval_sets: list[EvalSetSchema]
    exp_dir: str
    eval_batch_size: int = 64
    eval_threads: int | None = None
    train_langs: list[str] | None = None
    prefix_dir: str | None = None  # a FrozenPrefix of the test texts (hybrid_ray.experiment.prefix)


def eval_dir(exp_dir: str | Path, label: str, set_name: str) -> Path:
    return Path(exp_dir) / "evals" / label / set_name


def load_eval_set(e: EvalSetSchema):
    """The test set as a RetrievalSet (first ``max_queries_per_lang`` queries per language)."""
    from hybrid_ray.data.formats import load_retrieval_set
    from hybrid_ray.evaluate import subsample_queries

    rs = load_retrieval_set(e.path, e.format, e.split, list(e.langs) if e.langs else None)
    return subsample_queries(rs, e.max_queries_per_lang)


def evaluate_into(encoder, e: EvalSetSchema, out: Path, batch_size: int, train_langs: list[str] | None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``encoder`` on test set ``e``; write ``results.json`` + ``per_query.parquet`` to ``out``.

    No TREC run files: a grid of trials x sets would write hundreds of MB of them, and the report
    needs the per-query table only (``hybrid-ray eval`` writes them for any single model).
    """
    import pyarrow.parquet as pq

    from hybrid_ray.evaluate import evaluate_retrieval
    from hybrid_ray.io import atomic_path, write_json_atomic
    from hybrid_ray.runfiles import PerQueryLog

    rs = load_eval_set(e)
    log = PerQueryLog()
    results = evaluate_retrieval(encoder, rs, batch_size=batch_size, use_gpu=False, per_query=log)
    results |= {"eval_set": e.name, "data": e.path, "split": e.split, "train_langs": train_langs, **(extra or {})}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / PER_QUERY_FILE) as tmp:
        pq.write_table(log.table(), tmp, compression="zstd")
    write_json_atomic(out / RESULTS_FILE, results)  # last: its presence marks a finished evaluation
    return results


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The numbers a trial reports to Tune (and TensorBoard) for one test set."""
    if results["setting"] == "miracl":
        return {f"miracl_{k}": float(v) for k, v in results["mean"].items()}
    s = results["settings"]
    out = {"mono_map": s["mono"]["map"], "cross_map": s["cross"]["map"], "multi_map": s["multilingual"]["map"]}
    if "language_bias" in results:
        out["language_bias"] = float(results["language_bias"]["macro"])
    return out


def _train(setup: ExperimentSetup, trial: TrialSpec) -> tuple[Path, dict[str, Any]]:
    """Train (or find the finished export of) the trial; the encoder dir and train metrics."""
    from hybrid_ray.train import export_dir, run_training

    cfg = trial_train_config(setup.train_base, trial, str(Path(setup.exp_dir) / "train"))
    out = export_dir(cfg)
    done = out / "train_metrics.json"
    if done.is_file():  # a restored / retried trial: training finished before
        return out, json.loads(done.read_text())
    t0 = time.perf_counter()
    result, exported = run_training(cfg)
    m = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
    m["train_time_s"] = time.perf_counter() - t0
    from hybrid_ray.io import write_json_atomic

    write_json_atomic(Path(exported) / "train_metrics.json", m)
    return Path(exported), m


def _eval_encoder(setup: ExperimentSetup, enc_dir: Path | None):
    """The trial's encoder for evaluation: over the frozen prefix when its bottom layers match."""
    from hybrid_ray.errors import ConfigError
    from hybrid_ray.experiment.prefix import FrozenPrefix, TopLayersEncoder
    from hybrid_ray.modeling.encoder import DualEncoder
    from hybrid_ray.train_loop import build_encoder

    encoder = DualEncoder.from_pretrained(enc_dir) if enc_dir is not None else build_encoder(setup.train_base.model)
    encoder.eval()
    ready = wait_for_prefix(setup.prefix_dir) if setup.prefix_dir else None
    if ready is not None:
        try:
            return TopLayersEncoder(encoder, FrozenPrefix(ready)), "frozen-prefix + top layers"
        except ConfigError:
            pass
    return encoder, "full"


def wait_for_prefix(root: str | Path, timeout_s: float = 4 * 3600, poll_s: float = 5.0) -> Path | None:
    """The checked prefix under ``root`` once the driver's build finished (None if it failed)."""
    root = Path(root)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if (root / "ready" / "prefix.json").is_file():
            return root / "ready"
        if (root / "failed").exists():
            return None
        time.sleep(poll_s)
    return None


def run_experiment_trial(config: dict[str, Any], setup: ExperimentSetup) -> None:
    """Tune driver function: ``config["trial"]`` is a :meth:`TrialSpec.to_dict`."""
    import torch
    from ray import tune

    trial = TrialSpec.from_dict(config["trial"])
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"label": trial.label}
    if trial.train:
        enc_dir, train_metrics = _train(setup, trial)
        metrics |= {f"train_{k}": v for k, v in train_metrics.items() if k in ("loss", "step", "train_time_s")}
        encoder = None
    else:
        enc_dir, encoder = None, None
    threads = setup.eval_threads or max(1, int(round(setup.train_base.scaling.num_workers
                                                     * setup.train_base.scaling.cpus_per_worker)))
    torch.set_num_threads(threads)
    t_eval = time.perf_counter()
    for e in setup.eval_sets:
        out = eval_dir(setup.exp_dir, trial.label, e.name)
        if (out / RESULTS_FILE).is_file():
            results = json.loads((out / RESULTS_FILE).read_text())
        else:
            if encoder is None:
                encoder, how = _eval_encoder(setup, enc_dir)
            results = evaluate_into(encoder, e, out, setup.eval_batch_size, setup.train_langs,
                                    extra={"trial": trial.to_dict(), "model": str(enc_dir or "off-the-shelf"),
                                           "encoding": how})
        metrics |= {f"{e.name}/{k}": v for k, v in headline(results).items()}
    metrics |= {"eval_time_s": time.perf_counter() - t_eval, "trial_time_s": time.perf_counter() - t0,
                "finished": 1}
    tune.report(metrics)
