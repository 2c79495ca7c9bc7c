"""Prepare the next training batches while the current step computes.

Why: batch assembly (sampler slice, table lookups, tokenisation) is pure host work that the bare
PyTorch loop pays inside its step; a worker can do it on a background thread instead, so the step
only waits when the batch is not ready yet. HF fast tokenizers and Arrow lookups release the GIL,
so the thread overlaps with forward/backward for real.

Order is the iterator's, exactly: one producer thread consumes the source in sequence and a FIFO
hands items over, so batch ``t`` is always the ``t``-th the sampler yields (resume and the
per-step dropout seeds are unaffected). The source runs *ahead* of training by up to ``depth``
items, so anything that reads the sampler's own position must use the batch actually trained on
(``HybridBatchSampler.state_after``), not the sampler's current state. An exception in the
producer is re-raised in the consumer at the item where it happened.

When it pays (``data.prefetch`` unset = :func:`auto_depth`): the thread needs a core the step's
compute does not use. On a GPU the host idles while kernels run; on CPU, one 1-thread worker on a
2-core machine leaves a core free (the inline batch was 13 ms of a 2 s step). Two 1-thread workers
on 2 cores leave none: the thread then takes its 7 ms from one rank at a random moment and the
other rank waits for it at the next collective, so 2 workers ran 4-5% slower prefetching than inline
(``bench/results/train_throughput.md``; docs/training-throughput.md).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


AUTO_DEPTH = 2  # the depth auto_depth picks when prefetching pays


def auto_depth(setting: int | None, *, use_gpu: bool, local_ranks: int, threads_per_rank: int,
               cores: int | None = None) -> int:
    """The prefetch depth of a run: ``setting`` when given, else (auto) :data:`AUTO_DEPTH` on GPUs
    or when this machine's ``cores`` exceed the compute threads of its ``local_ranks`` ranks, else 0."""
    if setting is not None:
        return int(setting)
    if use_gpu:
        return AUTO_DEPTH
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return AUTO_DEPTH if local_ranks * max(1, threads_per_rank) < cores else 0


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Generic[T, R]):
    """``for item, prepared in Prefetcher(source, fn, depth)``: ``fn(item)`` computed ahead, in order.

    ``depth=0`` computes ``fn`` inline (no thread): the same sequence, for comparison and for
    debugging. ``close()`` (or leaving a ``with`` block) stops the producer early.
    """

    def __init__(self, source: Iterable[T], fn: Callable[[T], R], depth: int = 2) -> None:
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._source, self._fn, self.depth = iter(source), fn, int(depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, self.depth))

    # ---------------------------------------------------------------- producer
    def _put(self, obj: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._put((item, self._fn(item))):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(exc))
            return
        self._put(_DONE)

    # ---------------------------------------------------------------- consumer
    def __iter__(self) -> Iterator[tuple[T, R]]:
        if self.depth == 0:
            for item in self._source:
                yield item, self._fn(item)
            return
        self._thread = threading.Thread(target=self._produce, name="hybrid-ray-prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                got = self._queue.get()
                if got is _DONE:
                    return
                if isinstance(got, _Failure):
                    raise got.exc
                yield got
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
