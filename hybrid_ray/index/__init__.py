"""Sharded FAISS index directories: build (:mod:`.build`), manifest (:mod:`.manifest`), read (:mod:`.shards`).

Layout of an index directory (see :mod:`hybrid_ray.index.build` for why this shape)::

    shard-0000.npy / .parquet / .faiss / .json   one shard: vectors, passages, index, record
    ...
    manifest.json                                written last: model, dims, factory, shards, checksums

Modules: :mod:`.corpus` (the ``docid, lang, text`` input), :mod:`.factory` (what an index type
needs to train and accepts at search time), :mod:`.build` (Ray Data encoding + resumable shard
writing), :mod:`.manifest` (read / verify, search parameters), :mod:`.shards` (reading one shard,
and a whole directory as one exact searcher). The names below are re-exported for callers.
"""

from hybrid_ray.index.build import (
    build_sharded_index,
    encode_rows_local,
    encode_rows_ray,
    model_config,
    model_fingerprint,
    shard_bounds,
)
from hybrid_ray.index.corpus import check_corpus, read_corpus, table_fingerprint
from hybrid_ray.index.factory import (
    SEARCH_PARAMS,
    apply_search_params,
    check_shard_sizes,
    min_train_points,
    search_params_of,
)
from hybrid_ray.index.manifest import (
    INDEX_FORMAT,
    MANIFEST,
    check_shard_files,
    read_manifest,
    resolve_search_params,
    shard_name,
    verify_index,
)
from hybrid_ray.index.shards import Shard, ShardedIndex, load_sharded_index, prepare_index, read_shard

__all__ = [
    "INDEX_FORMAT",
    "MANIFEST",
    "SEARCH_PARAMS",
    "Shard",
    "ShardedIndex",
    "apply_search_params",
    "build_sharded_index",
    "check_corpus",
    "check_shard_files",
    "check_shard_sizes",
    "encode_rows_local",
    "encode_rows_ray",
    "load_sharded_index",
    "min_train_points",
    "model_config",
    "model_fingerprint",
    "prepare_index",
    "read_corpus",
    "read_manifest",
    "read_shard",
    "resolve_search_params",
    "search_params_of",
    "shard_bounds",
    "shard_name",
    "table_fingerprint",
    "verify_index",
]
