"""Pure (no Ray) checks of the serving merge: sharded top-k == one unsharded exact index."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray.search import build_index, search
from hybrid_ray.serving.shard import ShardCore, merge_hits

LANGS = ("en", "de", "fr")


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _corpus(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = _unit(rng, n, d)
    # exact duplicates (ties) inside and across shards, and at the top-k boundary
    x[7] = x[3]
    x[n - 2] = x[3]
    x[n // 2] = x[5]
    langs = [LANGS[i % 3] for i in range(n)]
    return x, langs


def _cores(x: np.ndarray, langs: list[str], bounds: list[int]) -> list[ShardCore]:
    cores = []
    edges = [0, *bounds, len(x)]
    for s, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        table = pa.table({"docid": [f"d{i}" for i in range(a, b)], "lang": langs[a:b],
                          "text": [f"text {i}" for i in range(a, b)]})
        cores.append(ShardCore(f"shard-{s:04d}", a, build_index(x[a:b]), x[a:b], table))
    return cores


def _brute(x: np.ndarray, q: np.ndarray, k: int, keep: np.ndarray | None = None) -> list[list[int]]:
    s = q @ x.T
    out = []
    for row in s:
        order = np.lexsort((np.arange(len(x)), -row))
        if keep is not None:
            order = order[keep[order]]
        out.append(order[:k].tolist())
    return out


@pytest.mark.parametrize("bounds", [[20], [5, 30], [1, 2, 50], []])
@pytest.mark.parametrize("k", [1, 4, 10, 64])
def test_merge_equals_unsharded_exact(bounds, k):
    x, langs = _corpus(60, 16)
    rng = np.random.default_rng(1)
    q = np.concatenate([_unit(rng, 5, 16), x[[3, 5]]])  # the last two hit the duplicated vectors
    cores = _cores(x, langs, bounds)
    merged = merge_hits([c.search(q, k) for c in cores], k)
    ref_s, ref_i = search(build_index(x), q, k)
    for row, hits in enumerate(merged):
        assert [h["docid"] for h in hits] == [f"d{i}" for i in ref_i[row]]
        np.testing.assert_allclose([h["score"] for h in hits], ref_s[row], rtol=0, atol=1e-6)
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
        assert all(h["lang"] == langs[int(h["docid"][1:])] for h in hits)
    assert len(merged[0]) == min(k, 60)


@pytest.mark.parametrize("filt", [("en",), ("de", "fr"), ("en", "de", "fr")])
def test_language_filter_returns_k_exact_filtered_results(filt):
    x, langs = _corpus(60, 16, seed=2)
    rng = np.random.default_rng(3)
    q = np.concatenate([_unit(rng, 4, 16), x[[3]]])
    keep = np.isin(np.asarray(langs), filt)
    for k in (1, 7, 20):
        merged = merge_hits([c.search(q, k, filt) for c in _cores(x, langs, [17, 40])], k)
        ref = _brute(x, q, k, keep)
        for row, hits in enumerate(merged):
            assert len(hits) == min(k, int(keep.sum()))  # k filtered results, not "k then filter"
            assert [h["docid"] for h in hits] == [f"d{i}" for i in ref[row]]
            assert {h["lang"] for h in hits} <= set(filt)


def test_filter_language_missing_from_one_shard_and_empty_parts():
    x, _ = _corpus(12, 8)
    langs = ["en"] * 6 + ["de"] * 6  # shard 0 has no "de", shard 1 no "en"
    cores = _cores(x, langs, [6])
    q = x[[0, 9]]
    hits = merge_hits([c.search(q, 3, ("de",)) for c in cores], 3)
    assert all(h["lang"] == "de" for row in hits for h in row) and [len(r) for r in hits] == [3, 3]
    assert hits[1][0]["docid"] == "d9" and hits[1][0]["score"] == pytest.approx(1.0, abs=1e-6)
    assert merge_hits([], 3) == []


def test_serve_config_yaml_is_a_valid_serve_config():
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from hybrid_ray.serving.args import AppArgs

    cfg = yaml.safe_load((Path(__file__).parents[2] / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(cfg)  # what `serve run` / `serve deploy` do with it
    assert schema.http_options.host == "127.0.0.1"
    (app,) = schema.applications
    assert app.import_path == "hybrid_ray.serving.app:build_app" and app.route_prefix == "/"
    args = AppArgs.parse(app.args)  # every key is a known build_app argument
    assert args.num_gpus_per_shard == "auto" and args.retriever_num_gpus == "auto"
    assert args.max_ongoing_requests >= args.max_batch_size  # else Serve caps the batches


def test_app_args_reject_unknown_and_bad_values():
    from hybrid_ray.errors import ConfigError
    from hybrid_ray.serving.args import AppArgs

    with pytest.raises(ConfigError, match="k_limt"):
        AppArgs.parse({"index_dir": "x", "k_limt": 5})
    with pytest.raises(ConfigError, match="max_batch_size"):
        AppArgs.parse({"index_dir": "x", "max_batch_size": 0})
    with pytest.raises(ConfigError, match="index_dir"):
        AppArgs.parse({})


def test_build_app_on_missing_index_is_a_clear_error(tmp_path):
    from hybrid_ray.errors import DataError
    from hybrid_ray.serving.app import build_app

    with pytest.raises(DataError, match="no manifest.json"):
        build_app({"index_dir": str(tmp_path)})


def test_driver_args_examples_and_clean_error(tmp_path, capsys):
    from hybrid_ray.cli import main as cli_main
    from hybrid_ray.driver.serve import app_args, examples, parse_args

    ns = parse_args(["--index", str(tmp_path), "--port", "8123", "--no-blocking", "--k-limit", "50"])
    assert ns.host == "127.0.0.1" and ns.blocking is False
    args = app_args(ns)
    assert args["index_dir"] == str(tmp_path.resolve()) and args["k_limit"] == 50 and "model_dir" not in args
    text = examples("http://127.0.0.1:8123")
    assert "curl -s -X POST http://127.0.0.1:8123/search" in text and "/ready" in text
    # not an index: one clean line, exit 2, before any Ray start
    assert cli_main(["serve", "--index", str(tmp_path), "--no-blocking"]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_direct_ingress_env_gives_the_first_replica_the_requested_port(monkeypatch, tmp_path, capsys):
    from hybrid_ray.cli import main as cli_main
    from hybrid_ray.driver.serve import direct_ingress_env, parse_args

    env = direct_ingress_env(8123, replicas=2)
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]) == 8123
    assert int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) >= 8125  # room for both replicas
    assert parse_args(["--index", str(tmp_path), "--direct-ingress"]).direct_ingress is True
    # On a cluster the flag cannot change how Ray was started: a clear error, not a silent no-op.
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setattr("hybrid_ray.driver.serve.preflight", lambda args, local: 1.0)
    assert cli_main(["serve", "--index", str(tmp_path), "--no-blocking", "--direct-ingress"]) == 2
    assert "--direct-ingress" in capsys.readouterr().err
