"""``scripts/subset_pairs.py``: a seeded subset of one split's pair ids, every language version kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow.compute as pc
import pytest

from hybrid_ray.data.pairs import read_pairs, write_pairs
from hybrid_ray.errors import DataError
from hybrid_ray.testing import signature_pairs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "subset_pairs.py"


def _module():
    spec = importlib.util.spec_from_file_location("subset_pairs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    write_pairs(signature_pairs(30, 0), d / "train.parquet")
    write_pairs(signature_pairs(6, 1, id_prefix="t"), d / "test.parquet")
    (d / "meta.json").write_text('{"name": "x"}')
    return d


def test_subset_keeps_whole_pairs_and_copies_the_other_splits(tmp_path: Path) -> None:
    mod, data = _module(), _data(tmp_path)
    rows = mod.subset(data, tmp_path / "sub", 10, seed=3)
    train = read_pairs(tmp_path / "sub", "train")
    full = read_pairs(data, "train")
    ids = set(pc.unique(train.column("pair_id")).to_pylist())
    assert len(ids) == 10 and rows == train.num_rows
    # every language version of a kept pair is kept (the data stay parallel)
    assert train.num_rows == sum(1 for p in full.column("pair_id").to_pylist() if p in ids)
    assert read_pairs(tmp_path / "sub", "test").equals(read_pairs(data, "test"))
    assert (tmp_path / "sub" / "meta.json").read_text() == '{"name": "x"}'
    # the same seed gives the same subset
    mod.subset(data, tmp_path / "sub2", 10, seed=3)
    assert set(pc.unique(read_pairs(tmp_path / "sub2", "train").column("pair_id")).to_pylist()) == ids


def test_subset_refuses_bad_input_naming_it(tmp_path: Path) -> None:
    mod, data = _module(), _data(tmp_path)
    with pytest.raises(DataError, match="pair_id"):
        mod.subset(data, tmp_path / "sub", 31)
    (tmp_path / "exists").mkdir()
    with pytest.raises(DataError, match="already exists"):
        mod.subset(data, tmp_path / "exists", 5)
    assert not list(tmp_path.glob(".sub.*"))  # nothing half-written left behind
