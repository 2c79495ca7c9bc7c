from __future__ import annotations

import builtins
import json
from pathlib import Path

import pyarrow as pa
import pytest

from hybrid_ray.data.lareqa import load_lareqa
from hybrid_ray.data.pairs import write_pairs
from hybrid_ray.data.schema import PAIRS_SCHEMA
from hybrid_ray.data.stats import describe, detect_format, format_stats
from hybrid_ray.errors import DataError

from .conftest import pair_rows, write_jsonl


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    table = pa.Table.from_pylist(pair_rows(), schema=PAIRS_SCHEMA)
    write_pairs(table, tmp_path / "ds" / "train.parquet")
    write_pairs(table.slice(0, 2), tmp_path / "ds" / "dev.parquet")
    (tmp_path / "ds" / "meta.json").write_text(json.dumps({"name": "toy"}))
    return tmp_path / "ds"


def test_pairs_dir(pairs_dir: Path) -> None:
    stats = describe(pairs_dir)
    assert stats["format"] == "pairs" and stats["meta"] == {"name": "toy"}
    train = stats["splits"]["train"]
    assert train["rows"] == 5 and train["pairs"] == 3
    assert train["langs"] == {"de": 2, "en": 3}
    assert train["fully_parallel"] == pytest.approx(0.6667)
    assert train["mean_negatives"] == 1.0
    assert train["mean_query_chars"] == pytest.approx(13.0)
    assert stats["splits"]["dev"]["fully_parallel"] == 1.0
    json.dumps(stats)  # serialisable
    text = format_stats(stats)
    assert "train" in text and "dev" in text and "66.7%" in text


def test_jsonl_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl.gz", pair_rows())
    stats = describe(path)
    assert list(stats["splits"]) == ["p.jsonl.gz"] and stats["splits"]["p.jsonl.gz"]["rows"] == 5


def test_retrieval_formats(miracl_dir: Path, lareqa_dir: Path, tmp_path: Path) -> None:
    m = describe(miracl_dir)
    assert m["format"] == "miracl" and m["kind"] == "retrieval"
    dev = m["splits"]["dev"]
    assert dev["queries"] == 4 and dev["docs"] == 6 and dev["judgements"] == 6
    assert dev["langs"]["sw"] == {"queries": 2, "docs": 3} and dev["mean_relevant"] == 1.0
    lq = describe(lareqa_dir)
    assert lq["format"] == "lareqa" and lq["splits"]["xquad-r"]["mean_relevant"] == 3.0
    saved = load_lareqa(lareqa_dir).save(tmp_path / "saved")
    assert describe(saved)["splits"]["saved"]["queries"] == 9
    assert "2 / 3" in format_stats(m)


def test_plain_text_without_rich(pairs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_rich(name: str, *args, **kwargs):
        if name.startswith("rich"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    text = format_stats(describe(pairs_dir))
    assert "┃" not in text and "train" in text and "rows by language" in text


def test_unrecognised(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="not a recognised data set"):
        detect_format(tmp_path)
    (tmp_path / "collections").mkdir()
    with pytest.raises(DataError, match="convert it first"):
        detect_format(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        describe(tmp_path / "nope")
