"""Run (or resume) an experiment as one Ray Tune experiment, then write its report.

The grid is Tune's ``param_space = {"trial": grid_search([...trial dicts...])}``, so the Tune
experiment directory (``<run.storage_path>/<run.name>``) is an ordinary one: Tune's TensorBoard
output (every trial's reported metrics) and ``Tuner.restore`` work as for any Tune run; rerunning
the same command after an interruption resumes it (``run.resume=auto``). Before starting, the
command prints the expected duration (:func:`hybrid_ray.experiment.config.estimate_seconds`);
while it runs, one line per finished trial with trials done / total and an ETA.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hybrid_ray.experiment.config import ExperimentSpec, estimate_seconds
from hybrid_ray.experiment.trial import ExperimentSetup, load_eval_set, run_experiment_trial


def _fmt_s(secs: float) -> str:
    secs = int(round(max(0.0, secs)))
    return f"{secs // 3600}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


def progress_callback(total: int, estimate_s: float, concurrency: int = 1):
    """One quiet line per trial: label, its headline numbers, done / total and the ETA.

    ETA: the trials left (those running count half) x the mean trial time so far / concurrency;
    before the first trial ends, what is left of the printed estimate.
    """
    from ray import tune

    class ExperimentProgress(tune.Callback):
        def __init__(self) -> None:
            self.done = 0
            # Wall clock, not perf_counter: Tuner.restore unpickles this callback in a new process,
            # where a perf_counter origin means nothing; elapsed then counts from the first start.
            self.t0 = time.time()
            self.times: list[float] = []

        def _count(self, trials) -> None:
            # From Tune's own trial states, so a resumed run counts the trials finished before it.
            self.done = max(self.done, sum(t.status in ("TERMINATED", "ERROR") for t in trials))

        def _eta(self) -> str:
            elapsed = time.time() - self.t0
            if not self.times:
                return _fmt_s(estimate_s - elapsed)
            left = total - self.done
            running = min(left, concurrency)
            mean = sum(self.times) / len(self.times)
            return _fmt_s((left - running / 2) * mean / max(1, concurrency))

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.done += 1
            self._count(trials)
            res = trial.last_result or {}
            if res.get("trial_time_s"):
                self.times.append(float(res["trial_time_s"]))
            keys = [k for k in res if k.endswith(("/cross_map", "/mono_map"))]
            vals = " ".join(f"{k} {res[k]:.4f}" for k in sorted(keys))
            print(f"[hybrid-ray experiment] {self.done}/{total} done: {res.get('label', trial.trial_id)} "
                  f"{vals} ({res.get('trial_time_s', 0):.0f} s); elapsed "
                  f"{_fmt_s(time.time() - self.t0)}, ETA {self._eta()}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self.done += 1
            self._count(trials)
            print(f"[hybrid-ray experiment] {self.done}/{total} FAILED: {trial.trial_id} (see {trial.local_path}); "
                  f"ETA {self._eta()}", flush=True)

    return ExperimentProgress()


def _train_langs(spec: ExperimentSpec) -> list[str] | None:
    from hybrid_ray.data.pairs import read_meta

    data = Path(spec.train_base.data.path)
    langs = (read_meta(data).get("languages") or {}).get("train") if data.is_dir() else None
    if not langs and spec.train_base.data.langs:
        langs = list(spec.train_base.data.langs)
    return sorted(langs) if langs else None


def _n_layers(spec: ExperimentSpec) -> int | None:
    """Transformer layers of the base model (for the estimate), None when unknown."""
    from hybrid_ray.modeling.builders import is_registered

    name = spec.train_base.model.name_or_path
    if is_registered(name):
        from hybrid_ray.modeling.freeze import encoder_layers
        from hybrid_ray.train_loop import build_encoder

        return len(encoder_layers(build_encoder(spec.train_base.model).model))
    try:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(name).num_hidden_layers)
    except Exception:  # noqa: BLE001 - only the estimate depends on it
        return None


def eval_texts(spec: ExperimentSpec) -> int:
    """Queries + candidates of every test set (each trial encodes them all once)."""
    total = 0
    for e in spec.cfg.eval_sets:
        rs = load_eval_set(e)
        total += rs.queries.num_rows + rs.corpus.num_rows
    return total


PREFIX_READY, PREFIX_FAILED = "ready", "failed"


def prefix_root(spec: ExperimentSpec) -> Path:
    return spec.exp_dir / "prefix"


def build_prefix(spec: ExperimentSpec) -> None:
    """Build and check the frozen-prefix cache of every test text under ``<exp>/prefix``.

    Written to ``prefix/build`` and renamed to ``prefix/ready`` only after the check against the
    full encoder passed (``prefix/failed`` otherwise): trials wait for one of the two (see
    :func:`hybrid_ray.experiment.trial.wait_for_prefix`), so the prefix builds while they train.
    """
    import shutil

    import numpy as np
    import torch

    from hybrid_ray.experiment.prefix import FrozenPrefix, TopLayersEncoder, bottom_fingerprint
    from hybrid_ray.modeling.freeze import encoder_layers
    from hybrid_ray.train_loop import build_encoder

    root = prefix_root(spec)
    try:
        base = build_encoder(spec.train_base.model)
        base.eval()
        n_top = int(spec.train_base.model.train_top_layers or 0)
        n_bottom = len(encoder_layers(base.model)) - n_top
        ready = root / PREFIX_READY
        if FrozenPrefix.is_built(ready, bottom_fingerprint(base.model, n_bottom), n_bottom):
            return
        texts: dict[str, list[str]] = {"query": [], "passage": []}
        for e in spec.cfg.eval_sets:
            rs = load_eval_set(e)
            texts["query"] += rs.queries.column("text").to_pylist()
            texts["passage"] += rs.corpus.column("text").to_pylist()
        t0 = time.perf_counter()
        print(f"[hybrid-ray experiment] encoding {sum(map(len, texts.values())):,} test texts through the "
              f"{n_bottom} frozen bottom layers once, while the first trials train (each trial then runs its "
              f"top {n_top})", flush=True)
        torch.set_num_threads(1)
        build = root / "build"
        shutil.rmtree(build, ignore_errors=True)
        FrozenPrefix.build(base, texts, n_bottom, build, batch_size=spec.cfg.eval_batch_size)
        sample = texts["query"][:16]
        fast = TopLayersEncoder(base, FrozenPrefix(build)).encode(sample, "query")
        diff = float(np.abs(fast - base.encode(sample, "query")).max())
        if diff > 1e-4:  # never silently evaluate something else than the model
            raise RuntimeError(f"frozen-prefix check failed (max diff {diff:.2e})")
        shutil.rmtree(ready, ignore_errors=True)
        build.rename(ready)
        print(f"[hybrid-ray experiment] frozen prefix built and checked (max diff {diff:.1e}) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    except Exception as exc:  # noqa: BLE001 - trials then encode in full
        root.mkdir(parents=True, exist_ok=True)
        (root / PREFIX_FAILED).write_text(str(exc))
        print(f"[hybrid-ray experiment] frozen prefix not used ({exc}): trials encode in full", flush=True)


def _start_prefix(spec: ExperimentSpec) -> str | None:
    """Start :func:`build_prefix` in a background thread; the directory trials wait for, or None."""
    import shutil
    import threading

    if not spec.cfg.eval_prefix or not spec.train_base.model.train_top_layers:
        return None
    root = prefix_root(spec)
    shutil.rmtree(root / PREFIX_FAILED, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    threading.Thread(target=build_prefix, args=(spec,), name="frozen-prefix", daemon=True).start()
    return str(root)


def run_experiment(spec: ExperimentSpec, *, resume: bool | None = None) -> dict[str, Any]:
    """Run / resume the Tune experiment, then build the report; returns the report's JSON dict."""
    import ray
    from ray import tune

    from hybrid_ray.console import tune_verbose
    from hybrid_ray.experiment.report import build_report, write_report
    from hybrid_ray.io import write_json_atomic, write_text_atomic
    from hybrid_ray.local import init_ray
    from hybrid_ray.tuning.search import derive_max_concurrent, resume_decision

    restoring = resume_decision(spec.exp_dir, spec.cfg.run.resume, resume)
    init_ray(num_cpus=spec.cfg.run.ray_num_cpus or spec.train_base.run.ray_num_cpus)
    resources = ray.cluster_resources()
    conc = spec.cfg.run.max_concurrent_trials or derive_max_concurrent(resources, spec.train_base.scaling)
    n_texts = eval_texts(spec)
    n_layers, n_top = _n_layers(spec), spec.train_base.model.train_top_layers
    frac = n_top / n_layers if spec.cfg.eval_prefix and n_top and n_layers and n_top < n_layers else 1.0
    est = estimate_seconds(spec, conc, n_texts, eval_fraction=frac, prefix_fraction=1.0 - frac)
    print(f"[hybrid-ray experiment] {spec.exp_dir} ({'resuming' if restoring else 'new'}): {len(spec.trials)} "
          f"trials ({spec.n_trained} trained: alphas {list(spec.cfg.alphas)} x seeds {list(spec.cfg.seeds)}"
          f"{' + variants ' + ', '.join(v.name for v in spec.cfg.variants) if spec.cfg.variants else ''}"
          f"{' + off-the-shelf baseline' if spec.cfg.baseline else ''}), {conc} at a time on "
          f"{resources.get('CPU', 0):g} CPU; each evaluates {n_texts:,} texts on "
          f"{len(spec.cfg.eval_sets)} test set(s). Expected duration ~{_fmt_s(est)} (cost model: "
          f"experiment cost.*)", flush=True)
    spec.exp_dir.mkdir(parents=True, exist_ok=True)
    prefix = _start_prefix(spec)
    setup = ExperimentSetup(train_base=spec.train_base, eval_sets=list(spec.cfg.eval_sets),
                            exp_dir=str(spec.exp_dir), eval_batch_size=spec.cfg.eval_batch_size,
                            eval_threads=spec.cfg.run.eval_threads, train_langs=_train_langs(spec),
                            prefix_dir=prefix)
    trainable = tune.with_resources(tune.with_parameters(run_experiment_trial, setup=setup), {"CPU": 0.01})
    t0 = time.perf_counter()
    if restoring:
        tuner = tune.Tuner.restore(str(spec.exp_dir), trainable=trainable, resume_errored=True)
    else:
        spec.exp_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(spec.exp_dir / "experiment_config.yaml", OmegaConf.to_yaml(spec.cfg))
        write_json_atomic(spec.exp_dir / "grid.json", [t.to_dict() for t in spec.trials])
        from ray.tune.search.basic_variant import BasicVariantGenerator

        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.to_dict() for t in spec.trials])},
            tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(max_concurrent=conc),
                                        trial_dirname_creator=lambda tr: f"trial_{tr.config['trial']['label']}"),
            run_config=tune.RunConfig(
                name=spec.cfg.run.name, storage_path=str(spec.exp_dir.parent),
                failure_config=tune.FailureConfig(max_failures=int(spec.cfg.run.max_failures)),
                verbose=tune_verbose(1), callbacks=[progress_callback(len(spec.trials), est, conc)],
            ),
        )
    grid = tuner.fit()
    elapsed = time.perf_counter() - t0
    errors = [str(grid[i].error).splitlines()[0][:300] for i in range(len(grid)) if grid[i].error]
    report = build_report(spec, elapsed_s=elapsed, estimate_s=est, errors=errors)
    paths = write_report(report, spec.report_base)
    print(f"[hybrid-ray experiment] done in {_fmt_s(elapsed)} (estimated {_fmt_s(est)}); report: "
          + ", ".join(str(p) for p in paths), flush=True)
    return report
