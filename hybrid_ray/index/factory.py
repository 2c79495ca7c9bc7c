"""What an index type (a ``faiss.index_factory`` string) needs to train and accepts at search time.

Known before anything is encoded, so a shard too small to train its index type, or a search
parameter the type does not have (``nprobe`` on ``Flat``), is refused up front.
"""

from __future__ import annotations

from typing import Any

import faiss

from hybrid_ray.errors import ConfigError

#: Search-time parameters an index directory may record (``faiss.ParameterSpace`` names).
SEARCH_PARAMS = ("nprobe", "efSearch")


def _ksub_of(obj: Any) -> int:
    pq = getattr(obj, "pq", None)
    return int(pq.ksub) if pq is not None else 0


def min_train_points(factory: str, dim: int) -> tuple[int, str]:
    """The fewest vectors a shard needs to train ``factory`` at ``dim``, and what needs them.

    FAISS's k-means refuses fewer training points than centroids: an IVF index needs ``nlist``
    vectors, a PQ codebook ``2**nbits`` (256 for ``PQ8``), OPQ the same. Flat / HNSW / SQ need
    none (0). Known before encoding, so a too-small shard fails before any GPU/CPU time is spent.
    """
    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"FAISS cannot build this index: {exc}".splitlines()[0], key="factory",
                          value=factory) from exc
    need, why = 0, ""

    def visit(idx: Any) -> None:
        nonlocal need, why
        idx = faiss.downcast_index(idx)
        if isinstance(idx, faiss.IndexPreTransform):
            for i in range(idx.chain.size()):
                vt = faiss.downcast_VectorTransform(idx.chain.at(i))
                if isinstance(vt, faiss.OPQMatrix) and 256 > need:
                    need, why = 256, "OPQ rotation (256 PQ centroids)"
            visit(idx.index)
            return
        ivf = faiss.try_extract_index_ivf(idx)
        if ivf is not None and int(ivf.nlist) > need:
            need, why = int(ivf.nlist), f"nlist={int(ivf.nlist)} IVF centroids"
        storage = getattr(idx, "storage", None)  # HNSW over PQ / SQ codes
        for obj in (idx, faiss.downcast_index(storage) if storage is not None else None):
            ksub = _ksub_of(obj)
            if ksub > need:
                need, why = ksub, f"{ksub} PQ centroids per sub-quantizer"

    visit(index)
    return need, why


def check_shard_sizes(factory: str, dim: int, counts: dict[str, int]) -> None:
    """ConfigError naming the first shard too small to train ``factory`` (see :func:`min_train_points`)."""
    need, why = min_train_points(factory, dim)
    for name, n in counts.items():
        if n < need:
            raise ConfigError(
                f"{name} holds {n} passages but index {factory!r} needs at least {need} to train "
                f"({why}): use fewer shards, a smaller nlist / PQ, or --factory Flat",
                key="factory", value=factory)


def search_params_of(factory: str, params: dict[str, Any] | None) -> dict[str, int]:
    """Validated search-time parameters for an index type: nprobe (IVF), efSearch (HNSW).

    Unknown names, values < 1 and a parameter the index type does not have are ConfigErrors
    (``nprobe`` on ``Flat`` would otherwise be silently meaningless).
    """
    out: dict[str, int] = {}
    for name, value in (params or {}).items():
        if value is None:
            continue
        if name not in SEARCH_PARAMS:
            raise ConfigError(f"unknown search parameter (known: {', '.join(SEARCH_PARAMS)})", key=name,
                              value=value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("must be an integer >= 1", key=name, value=value)
        if not _has_param(factory, name):
            raise ConfigError(f"index {factory!r} has no {name} "
                              f"({'IVF' if name == 'nprobe' else 'HNSW'} indexes only)", key=name, value=value)
        out[name] = int(value)
    return out



def _has_param(factory: str, name: str) -> bool:
    tokens = factory.replace("_", ",").split(",")
    if name == "nprobe":
        return any(t.startswith("IVF") for t in tokens)
    return any(t.startswith("HNSW") for t in tokens)


def apply_search_params(index: Any, params: dict[str, int] | None) -> Any:
    """Set nprobe / efSearch on a (CPU or GPU) FAISS index; returns the index."""
    if not params:
        return index
    gpu_space = getattr(faiss, "GpuParameterSpace", None)
    is_gpu = "Gpu" in type(index).__name__
    space = gpu_space() if (is_gpu and gpu_space is not None) else faiss.ParameterSpace()
    for name, value in params.items():
        try:
            space.set_index_parameter(index, name, float(value) if name != "nprobe" else int(value))
        except RuntimeError as exc:
            raise ConfigError(f"cannot set {name} on {type(index).__name__}: {str(exc).splitlines()[0]}",
                              key=name, value=value) from exc
    return index
