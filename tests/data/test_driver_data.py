"""The ``hybrid-ray data`` driver, called through the real CLI dispatcher."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hybrid_ray.cli import main as cli
from hybrid_ray.data.pairs import list_splits, read_pairs
from hybrid_ray.data.retrieval import RetrievalSet

from .conftest import pair_rows, write_jsonl


def _written_counts(out: Path) -> dict[str, dict]:
    """Per split: rows, distinct pairs and rows per language, read back from the Parquet files."""
    counts = {}
    for split in list_splits(out):
        t = pq.read_table(out / f"{split}.parquet", columns=["pair_id", "lang"])
        langs = Counter(t.column("lang").to_pylist())
        counts[split] = {"rows": t.num_rows, "pairs": len(set(t.column("pair_id").to_pylist())),
                         "per_lang": dict(langs)}
    return counts


def _parse_build_table(printed: str) -> tuple[list[str], dict[str, list[int]]]:
    """The build-demo table: a 'lang <split>...' header, one line per language, 'rows', 'pairs'."""
    lines = [ln.split() for ln in printed.splitlines() if ln.strip()]
    header = next(i for i, ln in enumerate(lines) if ln[0] == "lang")
    splits = lines[header][1:]
    table = {}
    for ln in lines[header + 1 :]:
        if len(ln) != len(splits) + 1 or not all(c.replace(",", "").isdigit() for c in ln[1:]):
            break
        table[ln[0]] = [int(c.replace(",", "")) for c in ln[1:]]
    return splits, table


def test_build_demo_and_stats(tmp_path: Path, fake_bible: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    args = ["data", "build-demo", "--out", str(out), "--langs", "en", "de", "--zero-shot-langs", "fa"]
    assert cli([*args, "--db", str(fake_bible)]) == 0
    printed = capsys.readouterr().out
    written = _written_counts(out)
    assert set(written) == {"train", "dev", "test"}
    assert "fa" not in written["train"]["per_lang"] and written["dev"]["per_lang"]["fa"] > 0  # zero-shot

    splits, table = _parse_build_table(printed)
    assert splits == ["train", "dev", "test"]
    langs = sorted({lang for c in written.values() for lang in c["per_lang"]})
    assert langs == ["de", "en", "fa"]
    assert sorted(k for k in table if k not in ("rows", "pairs")) == langs
    for j, split in enumerate(splits):
        for lang in langs:
            assert table[lang][j] == written[split]["per_lang"].get(lang, 0), (lang, split)
        assert table["rows"][j] == written[split]["rows"], split
        assert table["pairs"][j] == written[split]["pairs"], split
    assert "zero-shot (dev/test only): fa" in printed

    assert cli(["data", "stats", str(out)]) == 0
    assert "rows by language" in capsys.readouterr().out
    assert cli(["data", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    for split, c in written.items():
        got = stats["splits"][split]
        assert (got["rows"], got["pairs"], got["langs"]) == (c["rows"], c["pairs"], c["per_lang"]), split
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


def test_eval_loader_reads_converted_retrieval_dirs(miracl_dir: Path, lareqa_dir: Path, tmp_path: Path) -> None:
    """``data convert`` output is Parquet too: eval must load it as a RetrievalSet, not as pairs."""
    from hybrid_ray.data.formats import detect_format, load_retrieval_set

    out = tmp_path / "xq"
    assert cli(["data", "convert", "--format", "lareqa", "--input", str(lareqa_dir), "--out", str(out)]) == 0
    assert detect_format(out) == "retrieval"
    whole = RetrievalSet.load(out)
    assert load_retrieval_set(out).queries.num_rows == whole.queries.num_rows
    lang = whole.langs[0]
    one = load_retrieval_set(out, langs=[lang])
    assert one.langs == [lang] and one.corpus_langs == [lang]
    assert 0 < one.queries.num_rows < whole.queries.num_rows
    docids = set(one.corpus.column("docid").to_pylist())
    assert all(set(rel) <= docids for rel in one.qrels.values())


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
