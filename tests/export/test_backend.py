"""The ``backend`` switch (torch | onnx | onnx-int8 | auto) of eval, index and Serve.

ONNX Runtime must give the same answers as eager PyTorch wherever it is plugged in: the same
eval metrics (1e-4), the same index search results, the same /embed vectors (cosine > 0.999);
a directory without a graph is exported once into the cache (atomically, reused); and every
misuse is one clear error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray.errors import ConfigError, HybridRayError
from hybrid_ray.export.backend import (
    EncoderBackend,
    cache_key,
    ensure_onnx,
    load_encoder,
    parse_backend,
    resolve_backend,
)
from hybrid_ray.export.onnx import INT8_FILE, ONNX_FILE, OnnxEncoder
from hybrid_ray.modeling.encoder import ENCODER_FILE, DualEncoder
from tests.export.conftest import TEXTS

WORDS = ["god", "light", "day", "night", "water", "earth", "heaven", "man", "cat", "dog", "house", "red",
         "blue", "green", "one", "two", "three", "world", "hello"]
LANGS = ("en", "de", "fr")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _text(i: int, n: int = 4) -> str:
    return " ".join(WORDS[(i * 5 + j * 7) % len(WORDS)] for j in range(2 + (i + n) % n))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def cached(mean_dir, onnx_cache) -> EncoderBackend:
    """``mean_dir`` has no onnx/: resolving ``onnx`` exports it into the cache (the slow step, once)."""
    return resolve_backend(mean_dir, "onnx", cache_dir=onnx_cache)


# --------------------------------------------------------------------------- resolution and the cache
def test_parse_backend():
    assert parse_backend("torch") == ("torch", False)
    assert parse_backend("onnx-int8") == ("onnx", True)
    assert parse_backend("onnx", int8=True) == ("onnx", True)
    with pytest.raises(HybridRayError, match="backend must be one of 'torch', 'onnx', 'onnx-int8', 'auto'"):
        parse_backend("tensorrt")
    assert ENCODER_FILE == "hybrid_ray_encoder.json"  # backend.py's copy (it does not import torch)


def test_export_on_the_fly_into_the_cache_and_reuse(cached, mean_dir, onnx_cache):
    entry = onnx_cache / cache_key(mean_dir)
    assert cached.label == "onnx" and cached.onnx_dir == str(entry)
    assert (entry / ONNX_FILE).is_file() and not (mean_dir / "onnx").exists()  # the source is untouched
    assert json.loads((entry / "source.json").read_text())["model_dir"] == str(mean_dir.resolve())
    assert [p.name for p in onnx_cache.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    umask = os.umask(0)
    os.umask(umask)
    assert entry.stat().st_mode & 0o777 == 0o777 & ~umask  # a plain mkdir's mode, not mkdtemp's 0700
    mtime = (entry / ONNX_FILE).stat().st_mtime_ns
    assert resolve_backend(mean_dir, "onnx", cache_dir=onnx_cache) == cached
    assert (entry / ONNX_FILE).stat().st_mtime_ns == mtime  # reused, not exported again
    ref = DualEncoder.from_pretrained(mean_dir)
    enc = load_encoder(mean_dir, "onnx", cache_dir=onnx_cache)
    assert isinstance(enc, OnnxEncoder) and enc.backend == "onnx"
    for kind in ("query", "passage"):
        assert _cos(enc.encode(TEXTS, kind, batch_size=2), ref.encode(TEXTS, kind)).min() > 0.999


def test_int8_quantised_from_the_cached_graph(cached, mean_dir, onnx_cache):
    mtime = (onnx_cache / cache_key(mean_dir) / ONNX_FILE).stat().st_mtime_ns
    b = resolve_backend(mean_dir, "onnx-int8", cache_dir=onnx_cache)
    assert b.label == "onnx-int8" and b.onnx_dir == cached.onnx_dir
    assert (onnx_cache / cache_key(mean_dir) / INT8_FILE).is_file()
    assert (onnx_cache / cache_key(mean_dir) / ONNX_FILE).stat().st_mtime_ns == mtime  # not re-exported
    got = load_encoder(mean_dir, "onnx-int8", cache_dir=onnx_cache).encode(TEXTS, "query")
    assert _cos(got, DualEncoder.from_pretrained(mean_dir).encode(TEXTS, "query")).min() > 0.99


def test_a_changed_model_gets_a_new_cache_entry(mean_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(mean_dir, copy)
    key = cache_key(copy)
    assert key != cache_key(mean_dir)  # another path
    (copy / ENCODER_FILE).write_text((copy / ENCODER_FILE).read_text() + "\n")
    assert cache_key(copy) != key  # same path, other contents


def test_losing_the_publish_race_uses_the_winners_graph(cached, mean_dir, tmp_path, monkeypatch):
    """Two replicas exporting at once: the second rename fails, its copy is dropped, the first is used."""
    import hybrid_ray.export.onnx as onnx_mod

    cache = tmp_path / "cache"
    entry = cache / cache_key(mean_dir)

    def racing_export(model_dir, out_dir, int8=False):
        shutil.copytree(cached.onnx_dir, entry)  # the other process publishes while we export
        shutil.copy2(entry / ONNX_FILE, out_dir / ONNX_FILE)

    monkeypatch.setattr(onnx_mod, "export_onnx", racing_export)
    assert ensure_onnx(mean_dir, cache_dir=cache) == entry
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]  # our temporary copy is gone


def test_model_dir_graph_is_used_and_auto_picks_it(full_export, mean_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cache = tmp_path / "never"
    assert resolve_backend(full_export, "onnx", cache_dir=cache).onnx_dir == str(full_export / "onnx")
    assert resolve_backend(full_export, "auto", cache_dir=cache).label == "onnx"
    assert resolve_backend(mean_dir, "auto", cache_dir=cache).label == "torch"  # no graph: no export either
    assert not cache.exists()
    assert isinstance(load_encoder(mean_dir, "torch"), DualEncoder)
    with pytest.raises(HybridRayError, match="int8 applies to the ONNX backend"):
        resolve_backend(mean_dir, "torch", int8=True)


def test_clear_errors(full_export, mean_dir, tmp_path, monkeypatch):
    onnx_only = tmp_path / "onnx-only"
    shutil.copytree(full_export / "onnx", onnx_only)
    for spec in ("onnx", "torch"):
        with pytest.raises(HybridRayError, match="holds an ONNX graph but no hybrid_ray_encoder.json"):
            resolve_backend(onnx_only, spec)
    with pytest.raises(HybridRayError, match="pass the model directory"):
        resolve_backend(full_export / "onnx", "onnx")
    with pytest.raises(HybridRayError, match="not a hybrid-ray encoder directory"):
        resolve_backend(tmp_path, "onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(HybridRayError, match=r"needs onnxruntime.*pip install 'hybrid-ray\[onnx\]'"):
        resolve_backend(mean_dir, "onnx", cache_dir=tmp_path / "c")
    with pytest.raises(HybridRayError, match="needs onnxruntime"):
        OnnxEncoder(full_export)
    assert resolve_backend(full_export, "auto").label == "torch"  # auto falls back without onnxruntime


# --------------------------------------------------------------------------- eval
def _pairs(tmp_path):
    from hybrid_ray.data.pairs import write_pairs

    rows = [{"pair_id": f"p{i}", "lang": lang, "query": f"{_text(i)} {WORDS[i % 7]}",
             "positive": f"{_text(i + 3, 5)} {WORDS[(i + LANGS.index(lang)) % len(WORDS)]}"}
            for i in range(10) for lang in LANGS]
    data = tmp_path / "data"
    write_pairs(pa.Table.from_pylist(rows), data / "test.parquet")
    return data


def _numbers(obj, prefix=""):
    """Every number in a results dict, by its path."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _numbers(val, f"{prefix}{key}.").items()}
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix[:-1]: float(obj)}
    return {}


def test_eval_metrics_onnx_equal_torch(full_export, tmp_path, capsys):
    from hybrid_ray.driver.evaluate import main

    data = _pairs(tmp_path)
    res = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"eval-{backend}"
        assert main(["--model", str(full_export), "--data", str(data), "--out", str(out),
                     "--backend", backend, "--batch-size", "4"]) == 0
        res[backend] = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert res["torch"]["encoder"] == {"backend": "torch"}
    assert res["onnx"]["encoder"]["backend"] == "onnx"
    assert res["onnx"]["encoder"]["onnx_dir"] == str(full_export / "onnx")
    torch_m, onnx_m = (_numbers(res[b]["settings"]) | _numbers(res[b]["language_bias"]) for b in ("torch", "onnx"))
    assert torch_m.keys() == onnx_m.keys() and len(torch_m) > 20
    assert 0.05 < torch_m["mono.map"] < 0.999  # neither trivial nor hopeless: rankings can differ
    for key, value in torch_m.items():
        assert onnx_m[key] == pytest.approx(value, abs=1e-4), key


def test_eval_cache_is_per_backend(full_export, tmp_path, capsys):
    """A torch run's cached embeddings are not what an onnx run reads (that would hide the backend)."""
    from hybrid_ray.driver.evaluate import main

    data, cache = _pairs(tmp_path), tmp_path / "cache"
    keys = []
    for backend in ("torch", "onnx"):
        assert main(["--model", str(full_export), "--data", str(data), "--out", str(tmp_path / backend),
                     "--cache-dir", str(cache), "--backend", backend]) == 0
        keys.append(json.loads((cache / "queries.npy.json").read_text())["key"])
    capsys.readouterr()
    assert keys[0] != keys[1]


# --------------------------------------------------------------------------- index
def _corpus(n: int = 40) -> pa.Table:
    return pa.Table.from_pylist([{"docid": f"d{i}/{LANGS[i % 3]}", "lang": LANGS[i % 3], "text": _text(i, 6)}
                                 for i in range(n)])


def test_index_onnx_backend_same_search_results(mean_dir, cached, onnx_cache, tmp_path):
    from hybrid_ray.index import build_sharded_index, load_sharded_index

    queries = [_text(i, 3) for i in range(8)]
    found = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        m = build_sharded_index(mean_dir, _corpus(), out, shards=2, local=True, backend=backend,
                                onnx_cache_dir=onnx_cache)
        assert m["encoder_backend"] == backend and m["built"] == ["shard-0000", "shard-0001"]
        q = DualEncoder.from_pretrained(mean_dir).encode(queries, "query")
        found[backend] = load_sharded_index(out).search(q, 5)
    ids = {b: [[h["docid"] for h in row] for row in found[b]] for b in found}
    assert ids["onnx"] == ids["torch"]
    np.testing.assert_allclose([[h["score"] for h in r] for r in found["onnx"]],
                               [[h["score"] for h in r] for r in found["torch"]], atol=1e-4)
    assert len({tuple(r) for r in ids["torch"]}) > 1  # the queries do not all find the same passages
    # The backend is part of a shard's identity: another backend rebuilds, the same one resumes.
    again = build_sharded_index(mean_dir, _corpus(), tmp_path / "onnx", shards=2, local=True, backend="torch")
    assert again["built"] == ["shard-0000", "shard-0001"] and again["encoder_backend"] == "torch"
    same = build_sharded_index(mean_dir, _corpus(), tmp_path / "onnx", shards=2, local=True, backend="torch")
    assert same["skipped"] == ["shard-0000", "shard-0001"]
    # Nothing to build: deciding the backend exports nothing (a fresh cache stays empty).
    done = build_sharded_index(mean_dir, _corpus(), tmp_path / "onnx2", shards=2, local=True, backend="onnx",
                               onnx_cache_dir=onnx_cache)
    fresh = tmp_path / "fresh-cache"
    again = build_sharded_index(mean_dir, _corpus(), tmp_path / "onnx2", shards=2, local=True, backend="onnx",
                                onnx_cache_dir=fresh)
    assert done["built"] and again["skipped"] == ["shard-0000", "shard-0001"] and not fresh.exists()


def test_ray_data_actor_class_uses_the_backend(mean_dir, cached):
    """What each Ray Data actor runs (constructed here without Ray), with one ORT thread."""
    from hybrid_ray.index.build import EncodeBatch

    texts = np.asarray([_text(i) for i in range(6)], dtype=object)
    batch = {"row": np.arange(6), "text": texts}
    onnx = EncodeBatch(str(mean_dir), batch_size=4, backend=cached, threads=1)
    assert isinstance(onnx.encoder, OnnxEncoder)
    got = onnx(batch)["emb"]
    ref = EncodeBatch(str(mean_dir), batch_size=4)(batch)["emb"]
    assert _cos(got, ref).min() > 0.999


def test_ray_resources_cpu_only_for_onnx(monkeypatch):
    import ray

    from hybrid_ray.index.build import _ray_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 3.0, "GPU": 2.0})
    assert _ray_resources(None, None) == (2, 1.0)
    assert _ray_resources(None, None, cpu_only=True) == (3, 0.0)
    with pytest.raises(ConfigError, match="encodes on CPU"):
        _ray_resources(None, 1.0, cpu_only=True)


# --------------------------------------------------------------------------- serving
def test_serving_retriever_onnx_embed_matches_torch(mean_dir, cached, onnx_cache, tmp_path):
    """The app's HTTP routes over the replica's encoder, in-process (the live Serve test is in tests/serve)."""
    from fastapi.testclient import TestClient

    from bench.serve_baseline import LocalRetriever
    from hybrid_ray.index import build_sharded_index
    from hybrid_ray.serving.http import make_api

    build_sharded_index(mean_dir, _corpus(), tmp_path / "index", shards=2, local=True)
    texts = [_text(i) for i in range(5)]
    got = {}
    for backend in ("torch", "onnx"):
        svc = LocalRetriever({"index_dir": str(tmp_path / "index"), "encoder_backend": backend,
                              "onnx_cache_dir": str(onnx_cache)})
        assert type(svc.encoder).__name__ == {"torch": "DualEncoder", "onnx": "OnnxEncoder"}[backend]
        with TestClient(make_api(svc)) as c:
            r = c.post("/embed", json={"texts": texts, "kind": "query"})
            assert r.status_code == 200, r.text
            got[backend] = np.asarray(r.json()["embeddings"])
            hits = c.post("/search", json={"query": texts[0], "k": 3}).json()["hits"]
            got[backend + "-hits"] = [h["docid"] for h in hits]
    assert _cos(got["onnx"], got["torch"]).min() > 0.999
    assert got["onnx-hits"] == got["torch-hits"]


def test_app_args_onnx_runs_on_cpu(tmp_path, monkeypatch, mean_dir):
    import hybrid_ray.serving.app as app_mod
    from hybrid_ray.index import build_sharded_index
    from hybrid_ray.serving.args import AppArgs

    with pytest.raises(ConfigError, match="encoder_backend 'onnx' runs on CPU"):
        AppArgs.parse({"index_dir": "x", "encoder_backend": "onnx", "retriever_num_gpus": 1})
    with pytest.raises(ConfigError, match="encoder_backend"):
        AppArgs.parse({"index_dir": "x", "encoder_backend": "tensorrt"})
    build_sharded_index(mean_dir, _corpus(12), tmp_path / "index", local=True)
    monkeypatch.setattr(app_mod, "cluster_gpus", lambda: 2.0)
    monkeypatch.setattr(app_mod, "faiss_has_gpu", lambda: True)
    for backend, gpus in (("torch", 1.0), ("onnx", 0.0), ("onnx-int8", 0.0)):
        app = app_mod.build_app({"index_dir": str(tmp_path / "index"), "encoder_backend": backend})
        retr = app._bound_deployment
        assert retr.ray_actor_options.get("num_gpus", 0.0) == gpus, backend  # no idle GPU for ORT
        assert retr.init_args[1]["encoder_backend"] == backend


def test_serve_driver_backend_flag():
    from hybrid_ray.driver.serve import app_args, parse_args

    assert app_args(parse_args(["--index", "i"]))["encoder_backend"] == "torch"
    assert app_args(parse_args(["--index", "i", "--backend", "onnx-int8"]))["encoder_backend"] == "onnx-int8"
