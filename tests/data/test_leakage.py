"""The duplicate-distractor measure: overlapping (v, v+1) pairs leak, disjoint pairs do not."""

from __future__ import annotations

import pyarrow as pa

from hybrid_ray.data.leakage import (
    drop_pairs,
    duplicate_distractor_fraction,
    leakage_report,
    leaking_pair_ids,
    normalize_text,
    pairs_leakage,
)
from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.data.schema import PAIRS_SCHEMA


def _verse(lang: str, v: int) -> str:
    return f"{lang} verse number {v} of the toy chapter"


def _pairs(starts: list[int], *, step: int = 1, missing: tuple[tuple[int, str], ...] = ()) -> pa.Table:
    rows = [
        {"pair_id": f"c.{v}", "lang": lang, "query": _verse(lang, v), "positive": _verse(lang, v + step),
         "negatives": []}
        for v in starts for lang in ("en", "de") if (v, lang) not in missing
    ]
    return pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)


def test_overlapping_windows_leak_like_the_old_builder() -> None:
    # The old builder: pair v = (verse v, verse v+1) for every v, so verse v is also pair v-1's positive.
    table = _pairs([1, 2, 3, 4, 5], missing=((1, "de"),))
    report = pairs_leakage(table)
    # 9 queries. Own text in the pool: c.2..c.5 in en (4), c.3..c.5 in de (3, c.1/de is missing).
    assert report["queries"] == 9
    assert report["own_text"] == round(7 / 9, 4)
    # c.2/de's own text is gone, but its English version (c.2/en's text) is a candidate: 8 of 9.
    assert report["fraction"] == round(8 / 9, 4)
    assert report["per_lang"] == {"de": 1.0, "en": 0.8}
    first = report["examples"][0]
    assert first == {"qid": "c.2/en", "docid": "c.1/en", "via": "c.2/en"}


def test_disjoint_blocks_do_not_leak() -> None:
    table = _pairs([1, 3, 5, 7])  # (1,2), (3,4), ...: no verse in two pairs
    assert pairs_leakage(table) == {
        "queries": 8, "fraction": 0.0, "own_text": 0.0, "per_lang": {"de": 0.0, "en": 0.0}, "examples": [],
    }


def test_text_is_compared_modulo_case_and_whitespace() -> None:
    assert normalize_text("  Every GOOD\tgift\n") == "every good gift"
    rs = RetrievalSet(
        "m",
        pa.table({"qid": ["q1", "q2"], "lang": ["en", "en"], "text": ["Every  GOOD gift", "other"]}),
        pa.table({"docid": ["d1", "d2"], "lang": ["en", "en"], "text": ["every good gift", "answer"]}),
        {"q1": {"d2": 1}, "q2": {"d2": 1}},
    )
    # q2 shares q1's relevant set, so it counts as q1's parallel version: both leak.
    assert duplicate_distractor_fraction(rs) == 1.0
    rs.qrels["q2"] = {"d1": 1}
    report = leakage_report(rs)
    assert report["fraction"] == 0.5 and report["own_text"] == 0.5


def test_dropping_the_leaking_pairs_leaves_a_clean_pool() -> None:
    table = _pairs([1, 2, 3, 4, 5])
    bad = leaking_pair_ids(table)
    assert bad == {"c.2", "c.3", "c.4", "c.5"}
    clean = drop_pairs(table, bad)
    assert set(clean.column("pair_id").to_pylist()) == {"c.1"}
    assert pairs_leakage(clean)["fraction"] == 0.0
    assert drop_pairs(table, set()) is table
