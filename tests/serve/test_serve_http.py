"""The HTTP layer without Ray: FastAPI TestClient over ``hybrid_ray.serving.http.make_api``.

Readiness and search with a bad shard (503, never partial results), request-size limits, GPU
'auto' planning, the ``hybrid-ray serve`` preflight on a corrupt index, and an approximate (IVF)
index served through the same shard code.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

LANGS = ("en", "de", "fr")
WORDS = ["god", "light", "day", "night", "water", "earth", "heaven", "man", "cat", "dog", "house", "red"]


def _corpus(n: int = 30) -> pa.Table:
    rows = []
    for i in range(n):
        lang = LANGS[i % 3]
        text = " ".join(WORDS[(i * 5 + j * 7) % len(WORDS)] for j in range(2 + i % 5)) + f" {i}"
        rows.append({"docid": f"d{i}/{lang}", "lang": lang, "text": text})
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # the session-wide tiny encoder (tests/conftest.py)


@pytest.fixture(scope="module")
def index_dir(model_dir, tmp_path_factory):
    """A real 2-shard Flat index, encoded in-process (no Ray)."""
    from hybrid_ray.index import build_sharded_index

    out = tmp_path_factory.mktemp("http-index") / "index"
    build_sharded_index(model_dir, _corpus(), out, shards=2, local=True)
    return out


@pytest.fixture()
def broken_index(index_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(index_dir, broken)
    target = broken / "shard-0001.parquet"
    target.write_bytes(target.read_bytes()[:-7] + b"garbage")
    return broken


class ShardsOnlyService:
    """A RetrievalService whose shards are real ShardSearcher objects (constructed without Ray).

    ``search_one`` records calls: a search must never reach it while a shard is down.
    """

    def __init__(self, index_dir, **args: Any) -> None:
        from hybrid_ray.serving.app import ShardSearcher
        from hybrid_ray.serving.args import AppArgs
        from hybrid_ray.serving.metrics import ServeMetrics

        self.args = AppArgs.parse({"index_dir": str(index_dir), **args})
        self.metrics = ServeMetrics()
        self.dim = 32
        cls = ShardSearcher.func_or_class
        self.shards = [cls(str(index_dir), i) for i in range(2)]
        self.searched: list[str] = []

    async def search_one(self, query: str, k: int, langs) -> list[dict[str, Any]]:
        self.searched.append(query)
        return []

    async def embed(self, texts: list[str], kind: str) -> np.ndarray:
        return np.zeros((len(texts), self.dim), np.float32)

    async def shard_status(self) -> list[dict[str, Any]]:
        return [s.info() for s in self.shards]


def _client(service) -> TestClient:
    from hybrid_ray.serving.http import RetrievalService, make_api

    # languages() (the readiness gate of /search) comes from the real base class
    service.languages = RetrievalService.languages.__get__(service)
    return TestClient(make_api(service))


# --------------------------------------------------------------------------- a bad shard
def test_bad_shard_fails_readiness_and_search_over_http(broken_index):
    service = ShardsOnlyService(broken_index)
    client = _client(service)
    assert client.get("/health").json() == {"status": "ok"}  # liveness is not readiness

    r = client.get("/ready")
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False
    by_name = {s["name"]: s for s in body["shards"]}
    assert by_name["shard-0000"]["ok"] is True and by_name["shard-0000"]["count"] == 15
    bad = by_name["shard-0001"]
    assert bad["ok"] is False and "shard-0001.parquet" in bad["error"] and "corrupt" in bad["error"]
    assert body["languages"] == sorted(LANGS)  # what the healthy shard holds

    for req in ({"query": "light", "k": 3}, {"query": "light", "k": 3, "lang": "en"}):
        r = client.post("/search", json=req)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert "index not ready" in err and "shard-0001" in err and "shard-0001.parquet" in err
        assert [d["name"] for d in r.json()["detail"]] == ["shard-0001"]
    assert service.searched == []  # never a search over the healthy shard alone
    metrics = client.get("/metrics").text
    assert 'hybrid_ray_requests_total{endpoint="/search",status="503"} 2.0' in metrics
    assert 'hybrid_ray_requests_total{endpoint="/ready",status="503"} 1.0' in metrics


def test_missing_shard_file_is_named(index_dir, tmp_path):
    broken = tmp_path / "missing"
    shutil.copytree(index_dir, broken)
    (broken / "shard-0000.faiss").unlink()
    client = _client(ShardsOnlyService(broken))
    r = client.get("/ready")
    assert r.status_code == 503
    (bad,) = [s for s in r.json()["shards"] if not s["ok"]]
    assert bad["name"] == "shard-0000" and "shard-0000.faiss" in bad["error"] and "missing" in bad["error"]
    assert client.post("/search", json={"query": "light"}).status_code == 503


def test_healthy_index_is_ready_and_searchable(index_dir):
    from bench.serve_baseline import LocalRetriever
    from hybrid_ray.serving.http import make_api

    client = _client(ShardsOnlyService(index_dir))
    r = client.get("/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert all(s["index"] == "IndexFlatIP" for s in r.json()["shards"])
    # The bare in-process service: real search through the same routes.
    local = TestClient(make_api(LocalRetriever({"index_dir": str(index_dir)})))
    r = local.post("/search", json={"query": "light water", "k": 5, "lang": ["de", "fr"]})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 5 and {h["lang"] for h in hits} <= {"de", "fr"}


# --------------------------------------------------------------------------- request size
def test_request_body_size_limit(index_dir):
    service = ShardsOnlyService(index_dir, max_body_bytes=2048, max_query_chars=100_000)
    client = _client(service)
    big = {"query": "light " * 1000, "k": 3}  # ~6 kB of JSON
    r = client.post("/search", json=big)
    assert r.status_code == 413, r.text
    assert "request body too large" in r.json()["error"] and "2048" in r.json()["error"]
    r = client.post("/embed", json={"texts": ["x" * 3000]})
    assert r.status_code == 413
    assert service.searched == []

    def chunks():
        yield b'{"query": "light",'
        yield b' "k": 3}'

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 411 and "Content-Length" in r.json()["error"]
    ok = client.post("/search", json={"query": "light", "k": 3})  # under the limit
    assert ok.status_code == 200 and service.searched == ["light"]
    assert 'hybrid_ray_requests_total{endpoint="/search",status="413"} 1.0' in client.get("/metrics").text


# --------------------------------------------------------------------------- GPU auto
def test_plan_gpus():
    from hybrid_ray.serving.args import plan_gpus

    # no GPU in the cluster: CPU everywhere
    assert plan_gpus("auto", "auto", 2, 0.0, True) == (0.0, 0.0)
    # enough GPUs: one each (2 shards + retriever)
    assert plan_gpus("auto", "auto", 2, 4.0, True) == (1.0, 1.0)
    # fewer GPUs than deployments: equal shares that pack onto whole GPUs
    assert plan_gpus("auto", "auto", 2, 1.0, True) == (0.3333, 0.3333)
    assert plan_gpus("auto", "auto", 3, 2.0, True) == (0.5, 0.5)
    # CPU-only FAISS: shards stay on CPU, the encoder still gets the GPU
    assert plan_gpus("auto", "auto", 4, 1.0, False) == (0.0, 1.0)
    # explicit values are kept and taken out of the pool
    assert plan_gpus(0.0, "auto", 4, 1.0, True) == (0.0, 1.0)
    assert plan_gpus(0.25, 0, 2, 0.0, True) == (0.25, 0.0)
    assert plan_gpus("auto", 1.0, 2, 1.0, True) == (0.0, 1.0)  # nothing left for the shards


def test_build_app_resolves_auto_from_cluster_resources(index_dir, monkeypatch):
    import hybrid_ray.serving.app as app_mod

    def deployments(app):
        retr = app._bound_deployment
        shards = retr.init_args[0]
        return retr.ray_actor_options, [s._bound_deployment.ray_actor_options for s in shards], retr.init_args[1]

    fan_out = {"index_dir": str(index_dir), "ingress_shard_budget_mb": 0}  # one deployment per shard
    monkeypatch.setattr(app_mod, "cluster_gpus", lambda: 2.0)
    monkeypatch.setattr(app_mod, "faiss_has_gpu", lambda: True)
    retr_opts, shard_opts, args = deployments(app_mod.build_app(fan_out))
    assert retr_opts["num_gpus"] == 0.5 and [o["num_gpus"] for o in shard_opts] == [0.5, 0.5]
    assert args["num_gpus_per_shard"] == 0.5 and args["retriever_num_gpus"] == 0.5

    monkeypatch.setattr(app_mod, "cluster_gpus", lambda: 0.0)
    retr_opts, shard_opts, args = deployments(app_mod.build_app(fan_out))
    assert "num_gpus" not in retr_opts and all("num_gpus" not in o for o in shard_opts)
    assert args["num_gpus_per_shard"] == 0.0 and args["retriever_num_gpus"] == 0.0

    monkeypatch.setattr(app_mod, "cluster_gpus", lambda: None)  # not connected to Ray
    _, shard_opts, _ = deployments(app_mod.build_app(fan_out))
    assert all("num_gpus" not in o for o in shard_opts)


# --------------------------------------------------------------------------- hybrid-ray serve
def test_serve_driver_fails_cleanly_on_corrupt_index(broken_index, capsys, monkeypatch):
    import ray

    from hybrid_ray.cli import main as cli_main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    assert cli_main(["serve", "--index", str(broken_index), "--no-blocking"]) == 2
    err = capsys.readouterr().err
    assert "shard-0001.parquet" in err and "corrupt" in err and len(err.strip().splitlines()) == 1
    assert not ray.is_initialized()  # refused before starting Ray


def test_deploy_error_keeps_the_shard_message():
    from hybrid_ray.driver.serve import deploy_error

    exc = RuntimeError(
        "Deploying application hybrid-ray failed: Deploying app 'hybrid-ray' failed with exception:\n"
        "Traceback (most recent call last):\n  File \"serve/app.py\", line 1, in check_health\n"
        "ray.exceptions.RayTaskError(DataError): ray::ServeReplica:hybrid-ray:shard-1.check_health()\n"
        "hybrid_ray.errors.DataError: shard-1 is not serving: DataError: /idx/shard-0001.faiss: shard file "
        "corrupt: sha256 does not match manifest.json\n")
    msg = deploy_error(exc)
    assert msg.startswith("deploying the app failed: ") and "shard-0001.faiss" in msg
    assert "Traceback" not in msg
    assert deploy_error(RuntimeError("first\nValueError: boom\n")) == "deploying the app failed: ValueError: boom"


# --------------------------------------------------------------------------- approximate index
def test_ivf_index_serves_with_nprobe(model_dir, tmp_path):
    import faiss

    from bench.serve_baseline import LocalRetriever
    from hybrid_ray.index import build_sharded_index
    from hybrid_ray.modeling.encoder import DualEncoder
    from hybrid_ray.serving.shard import ShardCore, merge_hits

    flat, ivf = tmp_path / "flat", tmp_path / "ivf"
    build_sharded_index(model_dir, _corpus(), flat, shards=2, local=True)
    m = build_sharded_index(model_dir, _corpus(), ivf, shards=2, factory="IVF4,Flat", local=True,
                            search_params={"nprobe": 2})
    assert m["factory"] == "IVF4,Flat" and m["search_params"] == {"nprobe": 2}
    core = ShardCore.load(ivf, 0)
    assert faiss.extract_index_ivf(core.index).nprobe == 2 and core.info()["index"] == "IndexIVFFlat nprobe=2"
    q = DualEncoder.from_pretrained(model_dir).encode(["light water", "cat dog house"], "query")
    # nprobe = nlist visits every list: the IVF answer must equal the exact one.
    full = [ShardCore.load(ivf, i, search_params={"nprobe": 4}) for i in range(2)]
    exact = [ShardCore.load(flat, i) for i in range(2)]
    got = merge_hits([c.search(q, 7) for c in full], 7)
    want = merge_hits([c.search(q, 7) for c in exact], 7)
    assert [[h["docid"] for h in r] for r in got] == [[h["docid"] for h in r] for r in want]
    # app-level override of the manifest's nprobe, validated against the index type
    svc = LocalRetriever({"index_dir": str(ivf), "nprobe": 3})
    assert all(faiss.extract_index_ivf(c.index).nprobe == 3 for c in svc.cores)
    from hybrid_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="no efSearch"):
        LocalRetriever({"index_dir": str(ivf), "ef_search": 8})


def test_local_ray_declares_enough_cpus_for_the_app(index_dir, monkeypatch):
    import os

    from hybrid_ray.driver.serve import app_args, local_num_cpus, parse_args, preflight
    from hybrid_ray.errors import ConfigError

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    need = preflight(app_args(parse_args(["--index", str(index_dir)])), local=True)
    assert need == 3.0  # 2 shards x 1 CPU + the retriever
    assert local_num_cpus(None, need) == 3  # else the retriever would never be scheduled on 2 cores
    assert local_num_cpus(None, 1.5) == 2
    assert local_num_cpus(8, need) == 8
    with pytest.raises(ConfigError, match="reserves 3 CPUs"):
        local_num_cpus(2, need)
