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
import time
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

    from tune.search import load_tune_config

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
    from tune.driver import main

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

    from tune.search import build_scheduler, build_searcher, load_tune_config, param_space

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
    from tune.search import derive_max_concurrent

    one = {"num_workers": 1, "cpus_per_worker": 0.9, "use_gpu": False, "gpus_per_worker": 1}
    assert derive_max_concurrent({"CPU": 2.0}, one) == 2
    assert derive_max_concurrent({"CPU": 2.0}, {**one, "num_workers": 2}) == 1
    assert derive_max_concurrent({"CPU": 0.5}, one) == 1  # at least one
    gpu = {"num_workers": 1, "cpus_per_worker": 4, "use_gpu": True, "gpus_per_worker": 1}
    assert derive_max_concurrent({"CPU": 16.0, "GPU": 2.0}, gpu) == 2


def test_tiny_search_picks_best_and_exports(data: dict[str, Path], tmp_path: Path) -> None:
    import ray

    from hybrid_ray.local import init_ray
    from hybrid_ray.modeling.encoder import DualEncoder
    from tune.search import load_tune_config, run_search

    spec = load_tune_config("tiny.yaml", _overrides(data, tmp_path, "run.verbose=0"))
    init_ray(num_cpus=2)
    try:
        t0 = time.perf_counter()
        best = run_search(spec)
        first_run_s = time.perf_counter() - t0
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

        # Rerunning the same command restores the finished experiment: no training again.
        t0 = time.perf_counter()
        again = run_search(load_tune_config("tiny.yaml", _overrides(data, tmp_path, "run.verbose=0")))
        assert again["trial_id"] == best["trial_id"] and again["value"] == best["value"]
        assert time.perf_counter() - t0 < first_run_s / 2
        with pytest.raises(ConfigError, match="already holds a Tune experiment"):
            run_search(spec, resume=False)
    finally:
        ray.shutdown()
