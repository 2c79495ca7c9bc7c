"""Ray Tune over alpha, end to end on the tiny model (1 worker per trial, 2 trials at once).

Proves: the validation metrics reach Tune; the best trial is picked by the reported metric and
its encoder is exported (loadable); the result files, plot and TensorBoard events are written;
rerunning the same command restores the finished experiment instead of training again; bad
tune configs fail with a clear error before Ray starts.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pytest

from hybrid_ray.data.miracl import write_miracl
from hybrid_ray.data.pairs import write_pairs
from hybrid_ray.errors import ConfigError
from hybrid_ray.testing import _vocab, signature_pairs

LANGS = ["de", "en", "es"]


def _pairs(n: int, seed: int) -> pa.Table:
    return signature_pairs(n, seed, tuple(LANGS), id_prefix=f"s{seed}p")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A pairs data set (train + dev) and the dev split written in MIRACL format."""
    root = tmp_path_factory.mktemp("tune-data")
    pairs = root / "pairs"
    train = _pairs(48, seed=0)
    write_pairs(train, pairs / "train.parquet")
    dev = _pairs(12, seed=1)
    write_pairs(dev, pairs / "dev.parquet")
    miracl = root / "miracl"
    for lang in LANGS:
        rows = [r for r in dev.to_pylist() if r["lang"] == lang]
        # Near-miss distractors (2 of the 3 signature words) keep the task from saturating at 1.0.
        rng = random.Random(2)
        words = [w for w in _vocab()[5:] if w.isalpha()]
        noise = [{"docid": f"n{k}-{r['pair_id']}",
                  "text": " ".join(r["query"].split()[:3] + rng.sample(words, 2))} for r in rows for k in range(3)]
        write_miracl(miracl, lang, "dev",
                     queries={r["pair_id"]: r["query"] for r in rows},
                     qrels={r["pair_id"]: {f"d-{r['pair_id']}": 1} for r in rows},
                     corpus=[{"docid": f"d-{r['pair_id']}", "text": r["positive"]} for r in rows] + noise)
    return {"pairs": pairs, "miracl": miracl}


def _overrides(data: dict[str, Path], tmp: Path, *extra: str) -> list[str]:
    return [
        f"train_overrides+=[data.path={data['pairs']},eval.pairs_path={data['pairs']},"
        f"eval.miracl_path={data['miracl']}]",
        f"run.storage_path={tmp}",
        *extra,
    ]


def test_config_errors_before_ray(data: dict[str, Path], tmp_path: Path) -> None:
    import ray

    from hybrid_ray.tuning.config import load_tune_config

    def bad(match: str, *extra: str) -> None:
        with pytest.raises(ConfigError, match=match):
            load_tune_config("tiny.yaml", _overrides(data, tmp_path, *extra), preflight=False)

    bad(r"search_space\.alpha.*alpha must be in \[0, 1\]", "search_space.alpha=[0.0,1.5]")
    bad(r"search_space\.beta.*unknown hyper-parameter", "search_space.beta=[1,2]")
    bad(r"search_space\.lr\.loguniform.*low < high", "search_space.lr={loguniform: [1e-3, 1e-5]}")
    bad(r"search_space\.alpha\.grid.*non-empty", "search_space.alpha={grid: []}")
    bad(r"search_space\.alpha.*must be a number, a list", "search_space.alpha={normal: [0, 1]}")
    bad(r"search_space.*is empty", "search_space={}")
    bad(r"bogus", "bogus=1")
    bad(r"scheduler\.bogus", "scheduler.bogus=1")
    bad(r"searcher.*grid, optuna", "searcher=hyperopt")
    bad(r"scheduler\.type", "scheduler.type=pbt")
    bad(r"metric.*unknown metric", "metric=val_nope")
    bad(r"val_lang_bias is lower-is-better", "metric=val_lang_bias")
    bad(r"train_overrides.*optim\.bogus", "train_overrides+=[optim.bogus=1]")
    bad(r"train_overrides.*data\.path", f"train_overrides+=[data.path={tmp_path / 'missing'}]")
    with pytest.raises(ConfigError, match=r"needs eval\.miracl_path"):
        load_tune_config("tiny.yaml", [f"train_overrides+=[data.path={data['pairs']}]"], preflight=False)
    with pytest.raises(ConfigError, match=r"train_config.*not found"):
        load_tune_config("tiny.yaml", [*_overrides(data, tmp_path), "train_config=nope.yaml"], preflight=False)
    with pytest.raises(ConfigError, match=r"--config.*not found"):
        load_tune_config(tmp_path / "missing.yaml")
    # The CLI turns these into one clean line and exit code 2, still before Ray starts.
    from hybrid_ray.driver.tune import main

    with pytest.raises(ConfigError):
        main(["--config", "tiny.yaml", *_overrides(data, tmp_path, "search_space.alpha=[2.0]")])
    assert not ray.is_initialized()
    # A good config resolves every piece before Ray starts.
    spec = load_tune_config("tiny.yaml", _overrides(data, tmp_path, "search_space.lr={loguniform: [1e-4, 1e-2]}"))
    assert [p.kind for p in spec.params] == ["grid", "loguniform"]
    assert spec.export_dir == tmp_path.resolve() / "tune-tiny" / "best-encoder"
    assert spec.validations_per_trial == 3  # steps 4 and 8, plus the final report
    assert not ray.is_initialized()


def test_optuna_and_asha_are_built(data: dict[str, Path], tmp_path: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from hybrid_ray.tuning.config import load_tune_config
    from hybrid_ray.tuning.search import build_scheduler, build_searcher, param_space

    spec = load_tune_config("tiny.yaml", _overrides(
        data, tmp_path, "searcher=optuna", "num_samples=4", "scheduler.type=asha", "scheduler.grace_period=1",
        "search_space.temperature={uniform: [0.02, 0.1]}"))
    space = param_space(spec.params, "optuna")
    assert set(space) == {"alpha", "temperature"}  # the alpha grid became a choice for Optuna
    assert sorted(space["alpha"].categories) == [0.0, 0.5, 1.0]
    searcher = build_searcher(spec, 2)
    assert isinstance(searcher, ConcurrencyLimiter) and searcher.max_concurrent == 2
    sched = build_scheduler(spec)
    assert isinstance(sched, ASHAScheduler) and sched._max_t == spec.validations_per_trial == 3


def test_max_concurrent_trials_from_cluster() -> None:
    from hybrid_ray.config import ScalingConfigSchema
    from hybrid_ray.tuning.search import derive_max_concurrent

    one = ScalingConfigSchema(num_workers=1, cpus_per_worker=0.9, use_gpu=False, gpus_per_worker=1)
    assert derive_max_concurrent({"CPU": 2.0}, one) == 2
    assert derive_max_concurrent({"CPU": 2.0}, ScalingConfigSchema(num_workers=2, cpus_per_worker=0.9)) == 1
    assert derive_max_concurrent({"CPU": 0.5}, one) == 1  # at least one
    gpu = ScalingConfigSchema(num_workers=1, cpus_per_worker=4, use_gpu=True, gpus_per_worker=1)
    assert derive_max_concurrent({"CPU": 16.0, "GPU": 2.0}, gpu) == 2


def test_tiny_search_picks_best_and_exports(data: dict[str, Path], tmp_path: Path) -> None:
    import ray

    from hybrid_ray.local import init_ray
    from hybrid_ray.modeling.encoder import DualEncoder
    from hybrid_ray.tuning.config import load_tune_config
    from hybrid_ray.tuning.search import run_search

    spec = load_tune_config("tiny.yaml", _overrides(data, tmp_path, "run.verbose=0"))
    init_ray(num_cpus=2)
    try:
        best = run_search(spec)
        exp = tmp_path / "tune-tiny"
        results = json.loads((exp / "results.json").read_text())
        trials = results["trials"]
        assert sorted(t["alpha"] for t in trials) == [0.0, 0.5, 1.0]
        assert all(t["status"] == "TERMINATED" for t in trials), trials
        for t in trials:
            for key in ("val_miracl_map", "val_miracl_ndcg10", "val_miracl_recall100", "val_mono_map",
                        "val_cross_map", "val_multi_map", "val_lang_bias"):
                assert isinstance(t[key], float) and math.isfinite(t[key]), (key, t)
            # Two validations streamed from the training run (steps 4, 8) + the final report.
            assert t["training_iteration"] == 3 and t["step"] == 8
        top = max(t["val_miracl_map"] for t in trials)
        chosen = next(t for t in trials if t["trial_id"] == best["trial_id"])
        assert chosen["val_miracl_map"] == top == best["value"]
        assert best["alpha"] == chosen["alpha"]
        on_disk = json.loads((exp / "best.json").read_text())
        assert on_disk["trial_id"] == best["trial_id"]
        export = Path(best["encoder"])
        assert export == exp / "best-encoder"
        enc = DualEncoder.from_pretrained(export)
        assert enc.encode(["hello world"], "query").shape == (1, 32)
        # The export is a copy of the chosen trial's own encoder.
        src = Path(chosen["encoder"])
        assert (export / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
        with open(exp / "results.csv", newline="") as f:
            assert len(list(csv.DictReader(f))) == 3
        assert (exp / "alpha_vs_map.png").stat().st_size > 1000
        assert "| trial | alpha |" in (exp / "table.md").read_text()
        assert list(exp.glob("trial_*/events.out.tfevents*")), "Tune's TensorBoard logger wrote nothing"
        assert list((exp / "train").glob("*/tensorboard/events.out.tfevents*"))

        # Rerunning the same command restores the finished experiment: no training again. Every
        # trial reports once per validation (result.json gets one line per report) and every
        # training run gets its own directory under train/: neither may change.
        def snapshot() -> tuple[dict[str, int], list[str]]:
            lines = {d.name: len((d / "result.json").read_text().splitlines()) for d in exp.glob("trial_*")}
            return lines, sorted(p.name for p in (exp / "train").iterdir() if p.is_dir())

        before = snapshot()
        assert len(before[0]) == 3 and all(n == 3 for n in before[0].values()), before
        assert len(before[1]) == 3, before
        again = run_search(load_tune_config("tiny.yaml", _overrides(data, tmp_path, "run.verbose=0")))
        assert again["trial_id"] == best["trial_id"] and again["value"] == best["value"]
        assert snapshot() == before
        rerun = json.loads((exp / "results.json").read_text())["trials"]
        assert [(t["trial_id"], t["training_iteration"]) for t in rerun] == \
            [(t["trial_id"], t["training_iteration"]) for t in trials]
        with pytest.raises(ConfigError, match="already holds a Tune experiment"):
            run_search(spec, resume=False)
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- result rows (no Ray)
def _fake_grid(tmp: Path) -> tuple[list, Path, Path]:
    """A ResultGrid stand-in: a finished trial, two ASHA-stopped ones and two errored ones."""
    from types import SimpleNamespace

    export = tmp / "t1-export"
    export.mkdir()
    ckpt = tmp / "ckpt-t2"
    (ckpt / "encoder").mkdir(parents=True)
    no_encoder_ckpt = tmp / "ckpt-t4"
    no_encoder_ckpt.mkdir()

    def res(tid: str, alpha: float, metrics: dict, error: Exception | None = None):
        return SimpleNamespace(metrics={"trial_id": tid, **metrics} if metrics is not None else None,
                               config={"alpha": alpha, "lr": 1e-4}, path=str(tmp / f"trial_{tid}"), error=error)

    grid = [
        # completion order, not creation order (as after a restore)
        res("exp_00003", 1.0, {}, RuntimeError("worker died\nTraceback ...")),  # errored before any report
        res("exp_00001", 0.0, {"val_miracl_map": 0.40, "val_lang_bias": 0.2, "training_iteration": 3,
                               "encoder_dir": str(export), "checkpoint_path": str(tmp / "gone"),
                               "finished": 1}),
        # stopped by ASHA after its 2nd validation: no export, its last checkpoint's encoder
        res("exp_00002", 0.5, {"val_miracl_map": 0.55, "training_iteration": 2,
                               "encoder_dir": "", "checkpoint_path": str(ckpt)}),
        res("exp_00004", 0.25, {"val_miracl_map": 0.90, "training_iteration": 1,
                                "checkpoint_path": str(no_encoder_ckpt)}),  # best value, nothing to export
        res("exp_00005", 0.75, {"val_miracl_map": float("nan"), "training_iteration": 1,
                                "checkpoint_path": str(ckpt)}, ValueError("loss is nan")),
    ]
    return grid, export, ckpt / "encoder"


def _spec_stub():
    from types import SimpleNamespace

    return SimpleNamespace(train_base=SimpleNamespace(
        sampler=SimpleNamespace(alpha=0.5, lang_temperature=1.0),
        optim=SimpleNamespace(lr=3e-5, weight_decay=0.01), model=SimpleNamespace(temperature=0.05)))


def test_collect_rows_statuses_and_encoder_fallback(tmp_path: Path) -> None:
    from hybrid_ray.tuning.search import collect_rows

    grid, export, ckpt_encoder = _fake_grid(tmp_path)
    rows = collect_rows(grid, _spec_stub())
    assert [r["trial_id"] for r in rows] == [f"exp_0000{i}" for i in range(1, 6)]  # creation order
    by = {r["trial_id"]: r for r in rows}
    assert [by[f"exp_0000{i}"]["status"] for i in range(1, 6)] == \
        ["TERMINATED", "STOPPED", "ERROR", "STOPPED", "ERROR"]
    assert by["exp_00001"]["encoder"] == str(export)  # the finished trial's export
    assert by["exp_00002"]["encoder"] == str(ckpt_encoder)  # ASHA-stopped: checkpoint fallback
    assert by["exp_00004"]["encoder"] == ""  # checkpoint without an encoder dir
    assert by["exp_00003"]["error"] == "worker died" and by["exp_00003"]["encoder"] == ""
    assert "val_miracl_map" not in by["exp_00003"]
    assert by["exp_00001"]["alpha"] == 0.0 and by["exp_00001"]["lr"] == 1e-4
    assert by["exp_00001"]["val_lang_bias"] == 0.2 and by["exp_00002"]["training_iteration"] == 2
    assert "finished" not in by["exp_00001"] and "checkpoint_path" not in by["exp_00001"]


def test_pick_best_among_finished_stopped_and_errored(tmp_path: Path) -> None:
    from hybrid_ray.errors import HybridRayError
    from hybrid_ray.tuning.results import pick_best
    from hybrid_ray.tuning.search import collect_rows

    grid, _, ckpt_encoder = _fake_grid(tmp_path)
    rows = collect_rows(grid, _spec_stub())
    # exp_00004 has the highest value but no encoder, exp_00005 is NaN: the ASHA-stopped trial wins
    best = pick_best(rows, "val_miracl_map", "max")
    assert best["trial_id"] == "exp_00002" and best["encoder"] == str(ckpt_encoder)
    assert pick_best(rows, "val_miracl_map", "min")["trial_id"] == "exp_00001"
    # ties go to the earlier trial (collect_rows returns creation order)
    tied = [dict(r, val_miracl_map=0.5) for r in rows]
    assert pick_best(tied, "val_miracl_map", "max")["trial_id"] == "exp_00001"
    # an errored trial whose last validated checkpoint has an encoder counts like an ASHA-stopped
    # one: the metric belongs to that checkpoint, which is what would be exported
    late = [dict(r, val_miracl_map=0.99) if r["trial_id"] == "exp_00005" else r for r in rows]
    chosen = pick_best(late, "val_miracl_map", "max")
    assert chosen["trial_id"] == "exp_00005" and chosen["encoder"] == str(ckpt_encoder)
    # no usable trial: one error naming every trial and why
    failed = [r for r in rows if r["status"] == "ERROR"]
    with pytest.raises(HybridRayError, match=r"no trial reported val_miracl_map.*exp_00003: worker died"):
        pick_best(failed, "val_miracl_map", "max")
