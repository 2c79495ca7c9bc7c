"""Step hooks: observers of the training loop that are not part of the user's config.

Why: the per-batch trace (which batch every rank trained on, and its loss) and the fault drills
are for tests and benchmarks, not for a user's YAML. A caller hands hooks to
``hybrid_ray.train.run_training(cfg, step_hooks=[...])`` / ``build_trainer``; they travel pickled in
``train_loop_config`` to every worker, where the loop calls ``setup`` once, ``before_step`` before
and ``after_step`` after every optimizer step, and ``close`` at the end. A hook class is imported
by its module path when a worker unpickles it, so test-only hooks (``hybrid_ray.testing``) never
touch the production import path.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybrid_ray.config import TrainConfig
    from hybrid_ray.sampler import GlobalBatch


class StepHook:
    """No-op base: override what you need."""

    def setup(self, cfg: TrainConfig, rank: int, world_size: int) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size

    def before_step(self, global_step: int) -> None:
        """Called before training step ``global_step + 1``."""

    def on_phases(self, global_step: int, phases: dict[str, float]) -> None:
        """Called just before ``after_step`` with the seconds per phase (``hybrid_ray.step_timer``):
        this step's batch wait, forward, backward and optimizer step, and the previous step's
        hooks and report (they run after a step's timings are taken)."""

    def after_step(self, global_step: int, batch: GlobalBatch, loss: float) -> None:
        """Called after step ``global_step`` (1-based) trained on ``batch`` with this rank's ``loss``."""

    def close(self) -> None:
        pass


class BatchTrace(StepHook):
    """A per-rank JSONL of every batch trained on: ``<trace_dir>/rank<r>.jsonl``, flushed per step.

    Proves resume reproducibility (tests) and timestamps steps from outside the workers (bench).
    """

    def __init__(self, trace_dir: str | Path) -> None:
        self.trace_dir = str(trace_dir)
        self._file: IO[str] | None = None
        self._phases: dict[str, float] = {}

    def setup(self, cfg: TrainConfig, rank: int, world_size: int) -> None:
        super().setup(cfg, rank, world_size)
        Path(self.trace_dir).mkdir(parents=True, exist_ok=True)
        self._file = open(Path(self.trace_dir) / f"rank{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def on_phases(self, global_step: int, phases: dict[str, float]) -> None:
        self._phases = phases

    def after_step(self, global_step: int, batch: GlobalBatch, loss: float) -> None:
        assert self._file is not None
        self._file.write(json.dumps({"global_step": global_step, "epoch": batch.epoch, "step": batch.step,
                                     "kind": batch.kind, "pairs": batch.pair_idx.tolist(),
                                     "q_lang": batch.q_lang.tolist(), "p_lang": batch.p_lang.tolist(),
                                     "loss": loss, "time": time.time(),  # when it finished (the bench's clock)
                                     "phases": {k: round(v, 6) for k, v in self._phases.items()}}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, rank: int = 0) -> list[dict[str, Any]]:
        """The trace of ``rank`` (on the driver, after the run)."""
        path = Path(self.trace_dir) / f"rank{rank}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]
