"""Domains through retrieval sets, per-query results and the per-domain breakdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.data.schema import validate_pairs_table
from hybrid_ray.domains import domain_breakdown, format_domain_table
from hybrid_ray.errors import DataError


def _pairs(with_domain: bool = True) -> pa.Table:
    rows = []
    for i in range(4):
        for lang in ("en", "de"):
            row = {"pair_id": f"p{i}", "lang": lang, "query": f"q {i} {lang}", "positive": f"a {i} {lang}"}
            if with_domain:
                row["domain"] = "law" if i < 2 else "letters"
            rows.append(row)
    return pa.Table.from_pylist(rows)


def test_domain_column_survives_validation_and_reaches_the_retrieval_set(tmp_path: Path) -> None:
    table = validate_pairs_table(_pairs())
    assert table.column("domain").to_pylist()[:2] == ["law", "law"]
    assert "domain" not in validate_pairs_table(_pairs(False)).column_names
    rs = RetrievalSet.from_pairs(table)
    assert rs.domains == {"p0/en": "law", "p0/de": "law", "p1/en": "law", "p1/de": "law",
                          "p2/en": "letters", "p2/de": "letters", "p3/en": "letters", "p3/de": "letters"}
    loaded = RetrievalSet.load(rs.save(tmp_path / "rs"))
    assert loaded.domains == rs.domains
    assert loaded.filter_langs(["en"]).domains == rs.domains


def test_a_pair_with_two_domains_is_rejected() -> None:
    t = _pairs()
    doms = t.column("domain").to_pylist()
    doms[1] = "history"  # p0/de differs from p0/en
    with pytest.raises(DataError, match="different domains"):
        validate_pairs_table(t.set_column(t.column_names.index("domain"), "domain", pa.array(doms)))


def test_breakdown_is_a_macro_over_language_cells() -> None:
    # law: cell en->en has queries with AP 1.0 and 0.0 (mean 0.5); cell de->de one query 1.0
    # -> mono macro 0.75 (a plain mean over the 3 queries would be 0.667).
    pq = pa.table({
        "setting": ["mono", "mono", "mono", "mono", "cross"],
        "q_lang": ["en", "en", "de", "en", "en"],
        "c_lang": ["en", "en", "de", "en", "de"],
        "qid": ["a/en", "b/en", "a/de", "c/en", "a/en"],
        "domain": ["law", "law", "law", "letters", "law"],
        "map": [1.0, 0.0, 1.0, 0.25, np.nan],
    })
    out = domain_breakdown(pq)
    assert out["law"]["mono"] == pytest.approx(0.75)
    assert "cross" not in out["law"]  # only a NaN there
    assert out["letters"] == {"mono": 0.25, "n_queries": 1}
    assert out["law"]["n_queries"] == 3
    assert "| law | 0.7500 |" in "\n".join(format_domain_table(out))
    assert domain_breakdown(pq.drop_columns(["domain"])) == {}


def test_jsonl_domain_is_read_when_given(tmp_path: Path) -> None:
    import json

    from hybrid_ray.data.pairs import read_pairs
    from hybrid_ray.data.stats import describe

    rows = _pairs().to_pylist()
    (tmp_path / "with.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "without.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "domain"})
                                                      for r in rows) + "\n")
    assert read_pairs(tmp_path / "with.jsonl").column("domain").to_pylist()[-1] == "letters"
    assert "domain" not in read_pairs(tmp_path / "without.jsonl").column_names
    stats = describe(tmp_path / "with.jsonl")
    assert next(iter(stats["splits"].values()))["domains"] == {"law": 2, "letters": 2}
