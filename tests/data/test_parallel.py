from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_ray.data.parallel import ParallelPairs
from hybrid_ray.data.schema import PAIRS_SCHEMA
from hybrid_ray.errors import DataError

from .conftest import pair_rows


def test_index_matches_rows() -> None:
    table = pa.Table.from_pylist(pair_rows(), schema=PAIRS_SCHEMA)
    pp = ParallelPairs.from_table(table)
    assert pp.langs == ["de", "en"]
    assert pp.pair_ids == ["p0", "p1", "p2"]
    assert pp.row_of.dtype == np.int32 and pp.row_of.shape == (3, 2)
    assert pp.row_of.tolist() == [[1, 0], [3, 2], [-1, 4]]
    assert pp.available.tolist() == [[True, True], [True, True], [False, True]]
    assert pp.lang_counts == {"de": 2, "en": 3}
    assert pp.fully_parallel_fraction == pytest.approx(2 / 3)
    rows = pp.rows([0, 2], [pp.lang_index("de"), pp.lang_index("en")])
    assert pp.column("query", rows) == ["question 0 de", "question 2 en"]
    assert pp.pair_index("p2") == 2
    with pytest.raises(DataError, match="no row in language 'de'"):
        pp.rows([2], [0])
    with pytest.raises(IndexError):
        pp.column("query", [-1])
    with pytest.raises(DataError, match="language not in"):
        pp.lang_index("fr")


def test_duplicates_rejected_even_with_pairs_schema() -> None:
    rows = pair_rows() + [pair_rows()[0]]
    with pytest.raises(DataError, match="duplicate row for pair_id 'p0'"):
        ParallelPairs.from_table(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA))


def test_chunked_table_and_empty() -> None:
    t = pa.Table.from_pylist(pair_rows(), schema=PAIRS_SCHEMA)
    chunked = pa.concat_tables([t.slice(0, 2), t.slice(2)])
    assert ParallelPairs.from_table(chunked).row_of.tolist() == ParallelPairs.from_table(t).row_of.tolist()
    empty = ParallelPairs.from_table(PAIRS_SCHEMA.empty_table())
    assert empty.n_pairs == 0 and empty.row_of.shape == (0, 0) and empty.fully_parallel_fraction == 0.0


@settings(max_examples=40, deadline=None)
@given(st.sets(st.tuples(st.integers(0, 30), st.sampled_from(["en", "de", "zh", "ar"])), min_size=1))
def test_row_of_inverts_the_table(cells: set[tuple[int, str]]) -> None:
    cells_l = sorted(cells, key=lambda c: (hash(c) % 7, c))  # arbitrary but deterministic order
    table = pa.table(
        {
            "pair_id": [f"p{p}" for p, _ in cells_l],
            "lang": [lang for _, lang in cells_l],
            "query": ["q"] * len(cells_l),
            "positive": ["d"] * len(cells_l),
        }
    )
    pp = ParallelPairs.from_table(table)
    assert pp.langs == sorted({lang for _, lang in cells_l})
    assert int(pp.available.sum()) == len(cells_l)
    for row, (p, lang) in enumerate(cells_l):
        assert pp.row_of[pp.pair_index(f"p{p}"), pp.lang_index(lang)] == row


def test_large_table_indexes_every_row() -> None:
    """A language-major table of 20k pairs x 5 languages: every cell points at its row.

    (How long indexing takes is measured by the benchmarks, not asserted in a unit test.)
    """
    n_pairs, langs = 20_000, ["ar", "de", "en", "es", "zh"]
    pid = pa.array(np.char.add("p", np.arange(n_pairs).astype(str)))
    pair_col = pa.concat_arrays([pid] * len(langs))
    lang_col = pa.array(np.repeat(np.array(langs), n_pairs))
    text = pa.array(np.full(n_pairs * len(langs), "t"))
    neg = pa.array([[]] * 1, type=pa.list_(pa.string()))
    negs = pa.ListArray.from_arrays(pa.array(np.zeros(len(text) + 1, dtype=np.int32)), neg.values)
    table = pa.Table.from_arrays([pair_col, lang_col, text, text, negs], schema=PAIRS_SCHEMA)
    pp = ParallelPairs.from_table(table)
    assert pp.n_pairs == n_pairs and pp.langs == langs
    assert pp.row_of.shape == (n_pairs, len(langs))
    # Row of (pair p, language l) is l * n_pairs + p, for every cell.
    expected = np.arange(n_pairs * len(langs)).reshape(len(langs), n_pairs).T
    np.testing.assert_array_equal(pp.row_of, expected)
    assert pp.pair_ids[123] == "p123" and pp.pair_index("p123") == 123
    assert pp.fully_parallel_fraction == 1.0


def test_mapped_index_equals_built_index(tmp_path) -> None:
    from hybrid_ray.data.pairs import open_pairs, read_pairs, write_pairs

    write_pairs(pa.Table.from_pylist(pair_rows(), schema=PAIRS_SCHEMA), tmp_path / "train.parquet")
    mapped = ParallelPairs.from_table(open_pairs(tmp_path))
    built = ParallelPairs.from_table(read_pairs(tmp_path))
    assert not mapped.row_of.flags.writeable  # a view of the mapped index file, not a copy
    assert not mapped.row_of.flags.owndata and not mapped.available.flags.owndata
    np.testing.assert_array_equal(mapped.row_of, built.row_of)
    np.testing.assert_array_equal(mapped.available, built.available)
    assert mapped.langs == built.langs and mapped.pair_ids == built.pair_ids == ["p0", "p1", "p2"]
    assert mapped.column("positive", mapped.rows([2, 0], [1, 0])) == ["answer 2 en", "answer 0 de"]
    with pytest.raises(DataError, match="pair 'p2' has no row in language 'de'"):
        mapped.rows([2], [0])


def test_filtered_mapped_table_gets_its_own_index(tmp_path) -> None:
    """A table from open_pairs keeps its metadata through filter/take: the index must not be
    trusted when it no longer describes the table."""
    import pyarrow.compute as pc

    from hybrid_ray.data.pairs import open_pairs, write_pairs

    write_pairs(pa.Table.from_pylist(pair_rows(), schema=PAIRS_SCHEMA), tmp_path / "train.parquet")
    table = open_pairs(tmp_path)
    only_en = table.filter(pc.equal(table.column("lang"), "en"))
    pp = ParallelPairs.from_table(only_en)
    assert pp.langs == ["en"] and pp.row_of.tolist() == [[0], [1], [2]] and pp.row_of.flags.writeable
    reordered = table.take(pa.array([1, 0, 3, 2, 4]))  # same row count, other order
    np.testing.assert_array_equal(
        ParallelPairs.from_table(reordered).row_of, ParallelPairs.from_table(reordered.replace_schema_metadata()).row_of
    )


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.data())
def test_take_rows_across_chunks(chunk_sizes: list[int], data) -> None:
    from hybrid_ray.data.parallel import take_rows

    n = sum(chunk_sizes)
    values = [f"v{i}" for i in range(n)]
    starts = np.cumsum([0] + chunk_sizes)
    column = pa.chunked_array([values[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)])
    rows = np.asarray(data.draw(st.lists(st.integers(0, n - 1), max_size=12)), dtype=np.int64)
    assert take_rows(column, rows).to_pylist() == [values[i] for i in rows]
