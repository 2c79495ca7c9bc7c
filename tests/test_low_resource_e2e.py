"""A pairs data set in Chichewa, Amharic and Quechua trains and evaluates end to end.

Issue #16 asked that any valid language be usable, not only a fixed list: this runs the real
path a user runs (pairs files on disk -> Ray Train + DeepSpeed on 2 CPU workers -> exported
encoder -> ``hybrid-ray eval``) on ``ny``/``am``/``qu`` and checks that the evaluation reports each language by
name, with its resource class from the shipped table (all three are Joshi class 0-1: "low").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_ray.config import load_config
from hybrid_ray.data.pairs import write_pairs
from hybrid_ray.testing import signature_pairs

LANGS = ("ny", "am", "qu")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from hybrid_ray.local import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_ny_am_qu_pairs_train_and_evaluate(tmp_path: Path, ray_local, capsys) -> None:
    from hybrid_ray.driver.evaluate import main as eval_main
    from hybrid_ray.languages import language_info
    from hybrid_ray.train import run_training

    data = tmp_path / "data"
    data.mkdir()
    write_pairs(signature_pairs(40, seed=1, langs=LANGS), data / "train.parquet")
    write_pairs(signature_pairs(12, seed=2, langs=LANGS, id_prefix="t"), data / "test.parquet")

    cfg = load_config("tiny.yaml", [f"data.path={data}", f"run.storage_path={tmp_path}", "run.name=lowres",
                                    "optim.max_steps=6", "run.checkpoint_every=0", "run.log_every=2"])
    _, exported = run_training(cfg)
    assert (Path(exported) / "config.json").is_file()

    out = tmp_path / "eval"
    assert eval_main(["--model", str(exported), "--data", str(data), "--split", "test", "--out", str(out),
                      "--no-cache"]) == 0
    results = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    assert results["query_langs"] == sorted(LANGS)
    assert sorted(results["pairs"]) == sorted(LANGS)  # the per-language (query x passage) cells
    assert sorted(results["language_bias"]["per_lang"]) == sorted(LANGS)
    for lang in LANGS:
        assert f"| {lang} |" in table, lang  # a row of the language matrix
        assert language_info(lang).resource_group == "low"
    assert results["settings"]["mono"]["n_settings"] == 3 and results["settings"]["cross"]["n_settings"] == 6
    for setting in ("mono", "cross", "multilingual"):
        value = results["settings"][setting]["map"]
        assert 0.0 < value <= 1.0, (setting, value)
    # per-query files exist for an outside tool, with the languages in them
    import pyarrow.parquet as pq

    per_query = pq.read_table(out / "per_query.parquet")
    assert set(per_query.column("q_lang").to_pylist()) == set(LANGS)
    capsys.readouterr()
