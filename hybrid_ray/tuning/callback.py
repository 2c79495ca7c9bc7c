"""Stream a Ray Train run's validated reports to the Ray Tune trial that runs it.

Kept in its own module because it imports Ray Tune's Train V2 integration at import time; the
config checks in :mod:`hybrid_ray.tuning.config` must not pay for that.
"""

from __future__ import annotations

from typing import Any

from ray.train import Checkpoint
from ray.tune.integration.ray_train import TuneReportCallback


class ValidatedReportCallback(TuneReportCallback):
    """``TuneReportCallback`` that forwards only the reports carrying the search metric.

    Why filter: the training loop reports every ``run.log_every`` steps but validates (adds the
    ``val_*`` metrics) only at checkpoints. Tune's strict metric check rejects a result without the
    searched metric, and ASHA would count metric-less results as iterations. Forwarding only the
    validated reports makes one Tune ``training_iteration`` = one validation (one checkpoint), so
    ``scheduler.grace_period`` counts validations and every Tune result has the metric. The
    forwarded result still carries the training loss, step and the checkpoint path; the full
    per-step curves are in the training run's own TensorBoard.
    """

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        if metrics and self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)
