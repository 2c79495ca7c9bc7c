from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybrid_ray.data import pairs as pairs_mod
from hybrid_ray.data.pairs import list_splits, open_pairs, read_pairs, write_pairs
from hybrid_ray.data.schema import PAIRS_SCHEMA
from hybrid_ray.errors import DataError

from .conftest import pair_rows, write_jsonl


def _table() -> pa.Table:
    return pa.Table.from_pylist(pair_rows(), schema=PAIRS_SCHEMA)


def test_dataset_dir_roundtrip(tmp_path: Path) -> None:
    for split in ("test", "train", "dev", "extra"):
        write_pairs(_table(), tmp_path / f"{split}.parquet")
    assert list_splits(tmp_path) == ["train", "dev", "test", "extra"]
    assert read_pairs(tmp_path).equals(_table())  # split=None -> train
    assert read_pairs(tmp_path, "dev").num_rows == 5
    with pytest.raises(DataError, match="no such split") as e:
        read_pairs(tmp_path, "validation")
    assert str(tmp_path) in str(e.value)


def test_dir_without_train_needs_a_split(tmp_path: Path) -> None:
    write_pairs(_table(), tmp_path / "dev.parquet")
    assert read_pairs(tmp_path).num_rows == 5  # the only split
    write_pairs(_table(), tmp_path / "test.parquet")
    with pytest.raises(DataError, match="several splits"):
        read_pairs(tmp_path)


def test_single_file_rejects_split(tmp_path: Path) -> None:
    path = write_pairs(_table(), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="one-split"):
        read_pairs(path, "dev")


@pytest.mark.parametrize("name", ["p.jsonl", "p.jsonl.gz"])
def test_jsonl_reading(tmp_path: Path, name: str) -> None:
    rows = pair_rows()
    del rows[0]["negatives"]  # absent negatives -> empty list
    rows[1]["extra"] = 3  # unknown fields ignored
    path = write_jsonl(tmp_path / name, rows)
    table = read_pairs(path)
    assert table.schema.equals(PAIRS_SCHEMA)
    assert table.column("negatives").to_pylist()[:2] == [[], ["wrong 0 de"]]
    assert table.column("pair_id").to_pylist() == [r["pair_id"] for r in rows]


def test_jsonl_and_parquet_writers_roundtrip(tmp_path: Path) -> None:
    for name in ("a.jsonl", "a.jsonl.gz", "a.parquet"):
        assert read_pairs(write_pairs(_table(), tmp_path / name)).equals(_table())


@pytest.mark.parametrize(
    ("raw", "lineno", "needle"),
    [
        ('{"pair_id": "p9", "lang": "en", ', 3, "invalid JSON"),
        ('{"pair_id": "p9", "lang": "en", "positive": "x"}', 2, "field 'query'"),
        ('{"pair_id": "p9", "lang": "xx", "query": "q", "positive": "x"}', 4, "'xx'"),
        ('{"pair_id": "p9", "lang": "en", "query": "  ", "positive": "x"}', 2, "empty text"),
        ('{"pair_id": 7, "lang": "en", "query": "q", "positive": "x"}', 5, "expected a string"),
        ('["not", "an", "object"]', 1, "expected a JSON object"),
        ('{"pair_id": "p0", "lang": "en", "query": "q", "positive": "x"}', 4, "duplicate row"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, raw: str, lineno: int, needle: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", pair_rows(), raw_lines={lineno: raw})
    with pytest.raises(DataError) as e:
        read_pairs(path)
    assert f"{path}:{lineno}" in str(e.value)
    assert needle in str(e.value)
    assert e.value.line == lineno


def test_parquet_missing_column_names_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(_table().drop(["positive"]), path)
    with pytest.raises(DataError, match="positive") as e:
        read_pairs(path)
    assert str(path) in str(e.value)
    assert e.value.field == "positive"


def test_unsupported_and_missing(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported"):
        read_pairs(tmp_path / "x.csv")
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="unsupported output"):
        write_pairs(_table(), tmp_path / "x.csv")


def test_write_is_atomic_on_writer_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "train.parquet"
    write_pairs(_table(), target)
    before = target.read_bytes()

    def broken(table: pa.Table, where: Path, **kw: object) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pairs_mod.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_pairs(_table(), target)
    with pytest.raises(OSError):
        write_pairs(_table(), tmp_path / "new.parquet")
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet"]  # no partial/temp files


def test_write_validates_first(tmp_path: Path) -> None:
    bad = _table().set_column(1, "lang", pa.array(["en", "de", "en", "de", "english"]))
    with pytest.raises(DataError, match="unknown language"):
        write_pairs(bad, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def _write_raw_parquet(path: Path, column: str, row: int, value: object) -> Path:
    """Write pair_rows() as Parquet WITHOUT validation, with one cell replaced."""
    rows = pair_rows()
    rows[row][column] = value
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA.remove_metadata()), path)
    return path


@pytest.mark.parametrize(
    ("column", "value"),
    [("query", ""), ("query", "   "), ("positive", "\t\n"), ("pair_id", " ")],
)
def test_parquet_empty_text_names_file_column_and_row(tmp_path: Path, column: str, value: str) -> None:
    path = _write_raw_parquet(tmp_path / "bad.parquet", column, 3, value)
    with pytest.raises(DataError, match="empty text in row 3") as e:
        read_pairs(path)
    assert str(path) in str(e.value) and e.value.field == column
    assert e.value.line is None  # a Parquet row is not a file line
    # Same check through a data-set directory.
    ds = tmp_path / "ds"
    ds.mkdir()
    _write_raw_parquet(ds / "train.parquet", column, 0, value)
    with pytest.raises(DataError, match="empty text in row 0") as e:
        read_pairs(ds)
    assert str(ds / "train.parquet") in str(e.value)


@pytest.mark.parametrize("code", ["xx", "xx-bogus", "und", "english", ""])
def test_parquet_unknown_language_names_file_and_code(tmp_path: Path, code: str) -> None:
    path = _write_raw_parquet(tmp_path / "bad.parquet", "lang", 1, code)
    with pytest.raises(DataError, match="unknown language code") as e:
        read_pairs(path)
    assert str(path) in str(e.value) and e.value.field == "lang" and e.value.value == code


def test_parquet_null_text(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    rows = pair_rows()
    rows[2]["positive"] = None
    schema = pa.schema([pa.field(f.name, f.type) for f in PAIRS_SCHEMA])  # nullable, to write the null
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    with pytest.raises(DataError, match="null value in row 2") as e:
        read_pairs(path)
    assert str(path) in str(e.value) and e.value.field == "positive"


def test_parquet_null_negatives_are_empty_and_wrong_types_are_data_errors(tmp_path: Path) -> None:
    rows = pair_rows()
    rows[1]["negatives"] = None
    schema = pa.schema([pa.field(f.name, f.type) for f in PAIRS_SCHEMA])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "ok.parquet")
    assert read_pairs(tmp_path / "ok.parquet").column("negatives").to_pylist()[1] == []
    bad = pa.table({"pair_id": ["p0"], "lang": ["en"], "query": ["q"], "positive": ["x"], "negatives": [3]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="pairs schema") as e:
        read_pairs(tmp_path / "bad.parquet")
    assert str(tmp_path / "bad.parquet") in str(e.value)


# ------------------------------------------------------------------------------- any language
def _lang_rows(langs: tuple[str, ...]) -> list[dict[str, object]]:
    return [
        {"pair_id": f"p{i}", "lang": lang, "query": f"{lang} question {i}", "positive": f"{lang} answer {i}"}
        for i in range(2) for lang in langs
    ]


def test_low_resource_languages_are_read_and_validated(tmp_path: Path) -> None:
    """Chichewa, Amharic, Quechua, Hausa (and ISO 639-3 codes) are languages like any other."""
    path = write_jsonl(tmp_path / "africa-andes.jsonl", _lang_rows(("ny", "am", "qu", "ha", "ceb", "yo")))
    table = read_pairs(path)
    assert sorted(set(table.column("lang").to_pylist())) == ["am", "ceb", "ha", "ny", "qu", "yo"]
    assert table.num_rows == 12
    assert read_pairs(write_pairs(table, tmp_path / "x.parquet")).equals(table)


def test_language_codes_are_normalised(tmp_path: Path) -> None:
    """ISO 639-3 and non-canonical spellings become one base tag: 'nya' and 'NY' are Chichewa 'ny'."""
    rows = _lang_rows(("nya", "AM", "en-US", "tgl"))
    table = read_pairs(write_jsonl(tmp_path / "codes.jsonl", rows))
    assert table.column("lang").to_pylist() == ["ny", "am", "en", "tl"] * 2
    # Two spellings of one language in one pair are a duplicate row, named as such.
    dup = [*_lang_rows(("ny",)), {"pair_id": "p0", "lang": "nya", "query": "q", "positive": "a"}]
    with pytest.raises(DataError, match="duplicate row"):
        read_pairs(write_jsonl(tmp_path / "dup.jsonl", dup))


def test_bogus_language_names_file_line_field_and_value(tmp_path: Path) -> None:
    rows = _lang_rows(("ny", "am"))
    rows[2]["lang"] = "xx-bogus"
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match="unknown language code") as e:
        read_pairs(path)
    assert f"{path}:3" in str(e.value) and "'xx-bogus'" in str(e.value)
    assert (e.value.line, e.value.field, e.value.value) == (3, "lang", "xx-bogus")


# ----------------------------------------------------------------- open_pairs (memory-mapped)
def test_open_pairs_maps_a_validated_arrow_copy(tmp_path: Path) -> None:
    write_pairs(_table(), tmp_path / "train.parquet")
    write_pairs(_table().slice(0, 2), tmp_path / "dev.parquet")
    table = open_pairs(tmp_path)  # split=None -> train, like read_pairs
    assert table.equals(read_pairs(tmp_path)) and table.schema.equals(PAIRS_SCHEMA)
    assert (tmp_path / "train.arrow").is_file() and (tmp_path / "train.index.arrow").is_file()
    assert list_splits(tmp_path) == ["train", "dev"]  # the cache files are no splits
    # the copy is uncompressed Arrow IPC (Feather v2) and readable by any Arrow reader
    with pa.memory_map(str(tmp_path / "train.arrow"), "r") as mm:
        assert pa.ipc.open_file(mm).read_all().equals(table)
    assert open_pairs(tmp_path, "dev").num_rows == 2
    with pytest.raises(DataError, match="no such split"):
        open_pairs(tmp_path, "validation")


def test_open_pairs_does_not_reread_a_fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pairs(_table(), tmp_path / "train.parquet")
    open_pairs(tmp_path)
    calls = []
    monkeypatch.setattr(pairs_mod, "read_pairs", lambda *a, **k: calls.append(a))
    assert open_pairs(tmp_path).num_rows == _table().num_rows
    assert calls == []  # mapped, not decoded or validated again


def test_open_pairs_rebuilds_a_stale_cache(tmp_path: Path) -> None:
    import os

    src = tmp_path / "train.parquet"
    write_pairs(_table(), src)
    assert open_pairs(tmp_path).num_rows == 5
    write_pairs(_table().slice(0, 3), src)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new version, whatever the clock
    assert open_pairs(tmp_path).equals(read_pairs(tmp_path))
    assert open_pairs(tmp_path).num_rows == 3
    # a corrupt cache is rebuilt, not trusted
    (tmp_path / "train.arrow").write_bytes(b"not arrow")
    assert open_pairs(tmp_path).num_rows == 3


def test_open_pairs_validates_once_and_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"pair_id": ["1"], "lang": ["xx"], "query": ["q"], "positive": ["p"]}), bad)
    with pytest.raises(DataError, match="unknown language code") as err:
        open_pairs(bad)
    assert "bad.parquet" in str(err.value)
    assert not (tmp_path / "bad.arrow").exists()  # nothing cached for invalid data


def test_open_pairs_jsonl_single_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl.gz", pair_rows())
    assert open_pairs(path).equals(read_pairs(path))
    assert (tmp_path / "pairs.arrow").is_file()
