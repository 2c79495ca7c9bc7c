"""The experiment grid: trials, labels, seeds, variants and the checks before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_ray.data.pairs import write_pairs
from hybrid_ray.errors import ConfigError
from hybrid_ray.experiment.config import (
    ExperimentSchema,
    TrialSpec,
    VariantSchema,
    estimate_seconds,
    expand_grid,
    load_experiment_config,
)
from hybrid_ray.testing import signature_pairs


def test_grid_is_seed_major_alphas_and_variants_with_the_baseline_after_seed_one() -> None:
    cfg = ExperimentSchema(train_config="x", alphas=[0.0, 0.5, 1.0], seeds=[3, 4],
                           variants=[VariantSchema(name="w", alphas=[0.5],
                                                   overrides={"sampler.domain_sampling": "uniform"})])
    trials = expand_grid(cfg)
    assert [t.label for t in trials] == [
        "default_a0_s3", "default_a0.5_s3", "default_a1_s3", "w_a0.5_s3", "off-the-shelf",
        "default_a0_s4", "default_a0.5_s4", "default_a1_s4", "w_a0.5_s4"]
    assert trials[4].train is False and trials[4].alpha is None
    assert trials[3].train_overrides() == {"sampler.domain_sampling": "uniform", "sampler.alpha": 0.5,
                                           "sampler.seed": 3}
    assert len({t.label for t in trials}) == len(trials)
    assert all(TrialSpec.from_dict(t.to_dict()) == t for t in trials)


@pytest.mark.parametrize("bad,match", [
    ({"seeds": []}, "seed"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"variants": [VariantSchema(name="default")]}, "unique"),
    ({"variants": [VariantSchema(name="v", overrides={"sampler.seed": 3})]}, "set by the grid"),
    ({"variants": [VariantSchema(name="v", overrides={"run.name": "x"})]}, "set by the grid"),
])
def test_bad_grids_are_refused(bad: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        expand_grid(ExperimentSchema(train_config="x", **bad))


def test_load_validates_every_trial_before_ray(tmp_path: Path) -> None:
    write_pairs(signature_pairs(40, 0), tmp_path / "pairs" / "train.parquet")
    write_pairs(signature_pairs(8, 1, id_prefix="t"), tmp_path / "pairs" / "test.parquet")
    base = [f"train_overrides+=[data.path={tmp_path / 'pairs'}]",
            f"eval_sets=[{{name: t, path: {tmp_path / 'pairs'}, split: test}}]", f"run.storage_path={tmp_path}"]
    spec = load_experiment_config("experiments/tiny.yaml", base)
    assert [t.label for t in spec.trials] == ["default_a0_s1", "default_a1_s1", "off-the-shelf"]
    assert spec.exp_dir == tmp_path / "experiment-tiny"
    assert estimate_seconds(spec, 1, 100) > estimate_seconds(spec, 2, 100) > 0
    # a variant whose override the training config rejects fails here, naming the trial
    with pytest.raises(ConfigError, match="default_a0_s1|v_a0_s1"):
        load_experiment_config("experiments/tiny.yaml",
                               [*base, "variants=[{name: v, overrides: {sampler.lang_sampling: bogus}}]"])
    with pytest.raises(ConfigError, match="domain"):  # signature pairs have no domain column
        spec = load_experiment_config("experiments/tiny.yaml",
                                      [*base, "variants=[{name: v, overrides: {sampler.domain_sampling: uniform}}]"])
        from hybrid_ray.experiment.config import trial_train_config
        from hybrid_ray.train import preflight

        preflight(trial_train_config(spec.train_base, next(t for t in spec.trials if t.variant == "v"), str(tmp_path)))
    with pytest.raises(ConfigError, match="eval_sets"):
        load_experiment_config("experiments/tiny.yaml", [*base, "eval_sets=[{name: t, path: /nonexistent}]"])


def test_progress_counts_trials_finished_before_a_resume(capsys) -> None:
    """After ``Tuner.restore`` the callback may start from zero: it counts Tune's finished trials."""
    from types import SimpleNamespace

    from hybrid_ray.experiment.run import progress_callback

    cb = progress_callback(total=13, estimate_s=600.0, concurrency=2)
    trials = [SimpleNamespace(status="TERMINATED")] * 8 + [SimpleNamespace(status="RUNNING")] * 5
    trial = SimpleNamespace(last_result={"label": "default_a1_s2", "trial_time_s": 330.0,
                                         "letters/mono_map": 0.165}, trial_id="t8")
    cb.on_trial_complete(0, trials, trial)
    out = capsys.readouterr().out
    assert "8/13 done: default_a1_s2 letters/mono_map 0.1650 (330 s)" in out


def test_a_variants_relative_data_path_is_made_absolute(tmp_path: Path, monkeypatch) -> None:
    """Trials run in their own Tune directories: ``data.path: runs/other`` in a variant must reach
    them as an absolute path (resolved from where the experiment was started)."""
    write_pairs(signature_pairs(40, 0), tmp_path / "pairs" / "train.parquet")
    write_pairs(signature_pairs(8, 1, id_prefix="t"), tmp_path / "pairs" / "test.parquet")
    write_pairs(signature_pairs(40, 2), tmp_path / "other" / "train.parquet")
    monkeypatch.chdir(tmp_path)
    spec = load_experiment_config("experiments/tiny.yaml", [
        f"train_overrides+=[data.path={tmp_path / 'pairs'}]",
        f"eval_sets=[{{name: t, path: {tmp_path / 'pairs'}, split: test}}]", f"run.storage_path={tmp_path}",
        "variants=[{name: v, alphas: [0.5], overrides: {data.path: other}}]"])
    v = next(t for t in spec.trials if t.variant == "v")
    assert dict(v.overrides)["data.path"] == str((tmp_path / "other").resolve())
    monkeypatch.chdir("/")  # where a trial runs: the path still names the data
    from hybrid_ray.experiment.config import trial_train_config

    assert trial_train_config(spec.train_base, v, str(tmp_path)).data.path == str((tmp_path / "other").resolve())
