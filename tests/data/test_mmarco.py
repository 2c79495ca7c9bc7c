from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_ray.data.mmarco import load_mmarco, mmarco_langs
from hybrid_ray.data.parallel import ParallelPairs
from hybrid_ray.errors import DataError

from .conftest import write_mmarco


def test_load_parallel_long_layout(mmarco_dir: Path) -> None:
    assert mmarco_langs(mmarco_dir) == ["de", "en"]
    table = load_mmarco(mmarco_dir)
    rows = table.to_pylist()
    assert [r["pair_id"] for r in rows] == ["1-100", "2-101", "2-103"] * 2
    assert [r["lang"] for r in rows] == ["de"] * 3 + ["en"] * 3
    first_en = rows[3]
    assert first_en["query"] == "english query one"
    assert first_en["positive"] == 'english passage hundred "quoted"'
    assert first_en["negatives"] == ['english passage hundred two "quoted"']  # first negative only
    assert ParallelPairs.from_table(table).fully_parallel_fraction == 1.0


def test_options(mmarco_dir: Path) -> None:
    two = load_mmarco(mmarco_dir, ["english"], negatives_per_pair=2)
    assert two.column("negatives").to_pylist()[0] == [
        'english passage hundred two "quoted"',
        'english passage hundred three "quoted"',
    ]
    capped = load_mmarco(mmarco_dir, ["en"], max_triples=3)
    assert capped.column("pair_id").to_pylist() == ["1-100", "2-101"]
    none = load_mmarco(mmarco_dir, ["de"], negatives_per_pair=0)
    assert none.column("negatives").to_pylist() == [[], [], []]


def test_missing_doc_id_names_file_and_id(mmarco_dir: Path) -> None:
    coll = mmarco_dir / "collections" / "german_collection.tsv"
    coll.write_text(
        "".join(line + "\n" for line in coll.read_text().splitlines() if not line.startswith("103"))
    )
    with pytest.raises(DataError, match="missing from this file") as e:
        load_mmarco(mmarco_dir)
    assert str(coll) in str(e.value) and "'103'" in str(e.value)


def test_missing_query_id(mmarco_dir: Path) -> None:
    q = mmarco_dir / "queries" / "train" / "english_queries.train.tsv"
    q.write_text("1\tonly one\n")
    with pytest.raises(DataError, match="query id") as e:
        load_mmarco(mmarco_dir, ["en"])
    assert str(q) in str(e.value) and "'2'" in str(e.value)


def test_malformed_triples_line(mmarco_dir: Path) -> None:
    t = mmarco_dir / "triples.train.ids.small.tsv"
    t.write_text("1\t100\t102\n2\t101\n")
    with pytest.raises(DataError, match="malformed line") as e:
        load_mmarco(mmarco_dir)
    assert f"{t}:2" in str(e.value)


def test_unknown_language_name_and_code(tmp_path: Path) -> None:
    root = write_mmarco(tmp_path / "m", ("english", "klingon"))
    with pytest.raises(DataError, match="unknown mMARCO language name") as e:
        load_mmarco(root)
    assert "klingon" in str(e.value)
    with pytest.raises(DataError, match="language not in mMARCO"):
        load_mmarco(root, ["sw"])


def test_empty_passage_text(mmarco_dir: Path) -> None:
    coll = mmarco_dir / "collections" / "english_collection.tsv"
    coll.write_text(coll.read_text().replace('english passage hundred one "quoted"', " "))
    with pytest.raises(DataError, match="empty passage text") as e:
        load_mmarco(mmarco_dir, ["en"])
    assert str(coll) in str(e.value) and "'101'" in str(e.value)
