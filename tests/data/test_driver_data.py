"""The ``hybrid-ray data`` driver, called through the real CLI dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_ray.cli import main as cli
from hybrid_ray.data.pairs import read_pairs
from hybrid_ray.data.retrieval import RetrievalSet

from .conftest import pair_rows, write_jsonl


def test_build_demo_and_stats(tmp_path: Path, fake_bible: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    args = ["data", "build-demo", "--out", str(out), "--langs", "en", "de", "--zero-shot-langs", "fa"]
    assert cli([*args, "--db", str(fake_bible)]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "fa" in printed and "pairs" in printed
    assert read_pairs(out, "dev").num_rows > 0

    assert cli(["data", "stats", str(out)]) == 0
    assert "rows by language" in capsys.readouterr().out
    assert cli(["data", "stats", str(out / "miracl"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["format"] == "miracl" and set(stats["splits"]["dev"]["langs"]) == {"de", "en", "fa"}


def test_convert_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", pair_rows())
    out = tmp_path / "out.parquet"
    assert cli(["data", "convert", "--format", "jsonl", "--input", str(src), "--out", str(out)]) == 0
    assert read_pairs(out).num_rows == 5
    args = ["data", "convert", "--format", "jsonl", "--input", str(src), "--out", str(out), "--langs", "de"]
    assert cli(args) == 0
    assert set(read_pairs(out).column("lang").to_pylist()) == {"de"}
    assert "wrote" in capsys.readouterr().out


def test_convert_mmarco(mmarco_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mm.parquet"
    args = ["data", "convert", "--format", "mmarco", "--input", str(mmarco_dir), "--out", str(out)]
    assert cli([*args, "--max-triples", "3", "--langs", "en"]) == 0
    assert read_pairs(out).column("pair_id").to_pylist() == ["1-100", "2-101"]


def test_convert_eval_sets_to_retrieval_dirs(miracl_dir: Path, lareqa_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "miracl-dev"
    args = ["data", "convert", "--format", "miracl", "--input", str(miracl_dir), "--out", str(out)]
    assert cli([*args, "--langs", "sw"]) == 0
    rs = RetrievalSet.load(out)
    assert rs.name == "miracl-dev" and rs.langs == ["sw"] and rs.qrels["0/sw"] == {"10#0/sw": 1, "11#0/sw": 0}
    out2 = tmp_path / "xq"
    assert cli(["data", "convert", "--format", "lareqa", "--input", str(lareqa_dir), "--out", str(out2)]) == 0
    assert RetrievalSet.load(out2).queries.num_rows == 9


def test_errors_are_one_clean_line(tmp_path: Path, lareqa_dir: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["data", "convert", "--format", "lareqa", "--input", str(lareqa_dir)]
    assert cli([*args, "--out", str(tmp_path / "x.parquet")]) == 2
    assert "evaluation set" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", pair_rows(), raw_lines={2: "{oops"})
    assert cli(["data", "stats", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hybrid-ray data: error:") and f"{bad}:2" in err and len(err.splitlines()) == 1
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    assert cli([*args, "--out", str(tmp_path / "foreign")]) == 2
    assert (tmp_path / "foreign" / "keep.txt").exists()
