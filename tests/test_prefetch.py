"""``hybrid_ray.prefetch.Prefetcher``: order, errors and early stop."""

from __future__ import annotations

import threading
import time

import pytest

from hybrid_ray.prefetch import Prefetcher


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_same_sequence_as_inline(depth: int) -> None:
    # Uneven work per item: a later item may finish before an earlier one would on a pool; here
    # the order must still be the source's.
    def fn(x: int) -> int:
        time.sleep(0.002 * (x % 3))
        return x * x

    assert list(Prefetcher(range(20), fn, depth)) == [(i, i * i) for i in range(20)]


def test_runs_ahead_by_at_most_depth_and_off_the_calling_thread() -> None:
    produced: list[int] = []
    threads: set[str] = set()

    def fn(x: int) -> int:
        produced.append(x)
        threads.add(threading.current_thread().name)
        return x

    it = iter(Prefetcher(range(100), fn, depth=2))
    assert next(it) == (0, 0)
    time.sleep(0.2)
    # consumed 1, queue holds 2, and the producer may hold one more it could not put yet
    assert 2 <= len(produced) <= 4, produced
    assert threads == {"hybrid-ray-prefetch"}
    it.close()


def test_error_is_raised_at_its_item() -> None:
    def fn(x: int) -> int:
        if x == 3:
            raise ValueError("bad item 3")
        return x

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for item, _ in Prefetcher(range(10), fn, depth=2):
            got.append(item)
    assert got == [0, 1, 2]


def test_close_stops_the_producer_of_an_endless_source() -> None:
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    pf = Prefetcher(endless(), lambda x: x, depth=2)
    it = iter(pf)
    assert [next(it)[0] for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert pf._thread is not None and not pf._thread.is_alive()


def test_negative_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        Prefetcher([], lambda x: x, depth=-1)


def test_auto_depth_prefetches_only_where_a_core_is_free() -> None:
    """Unset ``data.prefetch``: on GPUs, or when the ranks' compute threads leave a core free."""
    from hybrid_ray.prefetch import AUTO_DEPTH, auto_depth

    assert auto_depth(None, use_gpu=True, local_ranks=8, threads_per_rank=4, cores=8) == AUTO_DEPTH
    assert auto_depth(None, use_gpu=False, local_ranks=1, threads_per_rank=1, cores=2) == AUTO_DEPTH
    assert auto_depth(None, use_gpu=False, local_ranks=2, threads_per_rank=1, cores=2) == 0
    assert auto_depth(None, use_gpu=False, local_ranks=1, threads_per_rank=2, cores=2) == 0
    # What the user sets wins, both ways.
    assert auto_depth(3, use_gpu=False, local_ranks=2, threads_per_rank=1, cores=2) == 3
    assert auto_depth(0, use_gpu=True, local_ranks=1, threads_per_rank=1, cores=64) == 0
