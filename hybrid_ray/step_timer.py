"""Wall time per phase of a training step: where a step's seconds go, measured in the loop itself.

Why in the loop and not only under a profiler: the benchmark compares the same phases of the bare
PyTorch loop and of the Ray Train worker (batch wait, forward, backward, optimizer step, report,
hooks) run after run, and a user can read them from TensorBoard (``train/phase_s/<name>``) on a
real cluster. ``perf_counter`` pairs cost well under a microsecond. On a GPU, kernels are
asynchronous: phases then measure launch time unless ``sync`` is set (``run.profile_phases``),
which synchronises the device at each boundary (honest numbers, slower steps). Losses that drive
the encoder themselves (``cached_infonce``: chunked forwards and its own backward) are timed as one
"forward" phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PHASES = ("batch", "forward", "backward", "step", "report", "hooks")


class StepTimer:
    """Accumulates seconds per phase; ``take()`` returns this step's and starts the next."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self._sync = sync
        self._step: dict[str, float] = {}
        self._window: dict[str, float] = {}
        self._window_steps = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._sync is not None:
            self._sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self._step[name] = self._step.get(name, 0.0) + time.perf_counter() - t

    def take(self) -> dict[str, float]:
        """This step's phases (seconds), added to the window; the next step starts from zero."""
        step, self._step = self._step, {}
        for k, v in step.items():
            self._window[k] = self._window.get(k, 0.0) + v
        self._window_steps += 1
        return step

    def window_means(self) -> dict[str, float]:
        """Mean seconds per step for each phase since the last call (then reset)."""
        n = max(1, self._window_steps)
        out = {k: v / n for k, v in self._window.items()}
        self._window, self._window_steps = {}, 0
        return out
