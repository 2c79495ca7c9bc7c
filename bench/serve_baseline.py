"""The load test's bare baseline: the retrieval HTTP API in one process, without Ray Serve.

Lives with the benchmark, not in the library: it exists only so :mod:`bench.serve_load` can
measure what the serving layer costs (or gains). Same encoder, same shard cores and exact merge,
same FastAPI routes (:func:`hybrid_ray.serving.http.make_api`); no batching, shards searched one
after another.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hybrid_ray.index import read_manifest
from hybrid_ray.serving.args import AppArgs, serving_search_params
from hybrid_ray.serving.encoder import check_encoder, load_encoder
from hybrid_ray.serving.http import RetrievalService
from hybrid_ray.serving.metrics import ServeMetrics
from hybrid_ray.serving.shard import ShardCore, merge_hits


class LocalRetriever(RetrievalService):
    """The same API in one process, without Ray Serve: the load test's baseline.

    Same encoder, same shard cores and merge; no batching, shards searched one after another.
    """

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = AppArgs.parse(args)
        self.metrics = ServeMetrics()
        manifest = read_manifest(self.args.index_dir)
        model_dir = self.args.model_dir or manifest["model_dir"]
        self.encoder = load_encoder(model_dir, False, self.args.retriever_num_cpus, self.args.encoder_backend,
                                    self.args.onnx_cache_dir)
        check_encoder(self.encoder, manifest, model_dir)
        self.dim = int(self.encoder.dim)
        params = serving_search_params(manifest, self.args)
        self.cores = [ShardCore.load(self.args.index_dir, i, verify=self.args.verify, search_params=params)
                      for i in range(len(manifest["shards"]))]

    async def search_one(self, query: str, k: int, langs: tuple[str, ...] | None) -> list[dict[str, Any]]:
        vec = self.encoder.encode([query], "query", self.args.encode_batch_size)
        return merge_hits([c.search(vec, k, langs) for c in self.cores], k)[0]

    async def embed(self, texts: list[str], kind: str) -> np.ndarray:
        return self.encoder.encode(texts, kind, self.args.encode_batch_size)

    async def shard_status(self) -> list[dict[str, Any]]:
        return [c.info() for c in self.cores]
