"""The index manifest: reading it, checking shard files against it, and the search parameters it
records. ``manifest.json`` is written last by the builder, so its presence means a finished index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybrid_ray.errors import DataError
from hybrid_ray.index.factory import search_params_of
from hybrid_ray.io import sha256_file

INDEX_FORMAT = "hybrid-ray-index/1"
MANIFEST = "manifest.json"


def shard_name(i: int) -> str:
    """The name (and file stem) of shard ``i``: ``shard-0000``, ``shard-0001``, ..."""
    return f"shard-{i:04d}"


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """The index manifest, or a DataError saying why the directory is not a finished index."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST}: not an index directory, or its build did not finish "
                        "(rerun 'hybrid-ray index' to resume)", path=index_dir)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    if manifest.get("format") != INDEX_FORMAT:
        raise DataError(f"unsupported index format (expected {INDEX_FORMAT})", path=path,
                        field="format", value=manifest.get("format"))
    if not manifest.get("shards"):
        raise DataError("manifest lists no shards", path=path, field="shards")
    return manifest


def check_shard_files(index_dir: str | Path, shard: dict[str, Any], verify: bool = True) -> None:
    """DataError naming the shard's first missing file, or (``verify``) one whose size/sha256 differ."""
    for info in shard["files"].values():
        f = Path(index_dir) / info["path"]
        if not f.is_file():
            raise DataError(f"shard file missing (shard {shard['name']})", path=f)
        if verify and (f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]):
            raise DataError(f"shard file corrupt: sha256 does not match {MANIFEST} "
                            f"(shard {shard['name']}; rerun 'hybrid-ray index' to rebuild it)", path=f)


def verify_index(index_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """The manifest, after checking every shard's files (see :func:`check_shard_files`)."""
    manifest = read_manifest(index_dir)
    for shard in manifest["shards"]:
        check_shard_files(index_dir, shard, verify)
    return manifest



def resolve_search_params(manifest: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, int]:
    """The search parameters to serve an index with: the manifest's recorded ones, replaced by
    every ``overrides`` entry that is not None, validated for the manifest's index type."""
    params = dict(manifest.get("search_params") or {})
    params.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return search_params_of(str(manifest.get("factory", "Flat")), params)
