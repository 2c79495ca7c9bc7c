"""``run_isolated``: one bad item in a batch fails alone, the others that shared its batch succeed."""

from __future__ import annotations

import asyncio

import pytest

from hybrid_ray.serving.batching import run_isolated


class Tokenizer:
    """A batch function that, like the tokenizer, raises for the whole batch if one item is bad."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, items: list[str]) -> list[str]:
        self.calls.append(list(items))
        bad = [x for x in items if x.startswith("bad")]
        if bad:
            raise ValueError(f"cannot tokenize {bad[0]!r}")
        return [x.upper() for x in items]


def test_good_batch_runs_once():
    run = Tokenizer()
    assert asyncio.run(run_isolated(["a", "b", "c"], run)) == ["A", "B", "C"]
    assert run.calls == [["a", "b", "c"]]  # no retry when nothing failed


def test_one_bad_item_fails_alone():
    run = Tokenizer()
    out = asyncio.run(run_isolated(["a", "bad1", "c", "d"], run))
    assert out[0] == "A" and out[2] == "C" and out[3] == "D"
    assert isinstance(out[1], ValueError) and "bad1" in str(out[1])
    # the batch once, then every item alone, in order
    assert run.calls == [["a", "bad1", "c", "d"], ["a"], ["bad1"], ["c"], ["d"]]


def test_several_bad_items_each_get_their_own_error():
    out = asyncio.run(run_isolated(["bad1", "x", "bad2"], Tokenizer()))
    assert out[1] == "X"
    assert [str(e) for e in (out[0], out[2])] == ["cannot tokenize 'bad1'", "cannot tokenize 'bad2'"]


def test_single_item_batch_error_is_its_result_not_raised():
    run = Tokenizer()
    (out,) = asyncio.run(run_isolated(["bad"], run))
    assert isinstance(out, ValueError)
    assert run.calls == [["bad"]]  # nothing to isolate: no retry


def test_per_item_exceptions_returned_by_run_are_kept():
    """A result that is already an exception (a shard's 503) fails that request only, no retry."""
    calls = []

    async def run(items):
        calls.append(items)
        return [RuntimeError("shard down") if x == 2 else x * 10 for x in items]

    out = asyncio.run(run_isolated([1, 2, 3], run))
    assert out[0] == 10 and out[2] == 30 and isinstance(out[1], RuntimeError)
    assert calls == [[1, 2, 3]]


@pytest.mark.parametrize("n", [2, 16])
def test_results_keep_request_order(n):
    items = [f"q{i}" if i != n // 2 else "bad" for i in range(n)]
    out = asyncio.run(run_isolated(items, Tokenizer()))
    assert [o for i, o in enumerate(out) if i != n // 2] == [f"Q{i}" for i in range(n) if i != n // 2]
