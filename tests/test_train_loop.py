"""Pure helpers of the training loop (the loop itself runs in tests/test_train.py)."""

from __future__ import annotations

from hybrid_ray.train_loop import _eta


def test_eta_from_the_rate_since_start() -> None:
    assert _eta(done=10, elapsed_s=20.0, remaining=30) == "0:01:00"
    assert _eta(done=1, elapsed_s=3600.0, remaining=2) == "2:00:00"
    assert _eta(done=0, elapsed_s=5.0, remaining=10) == "?"  # nothing timed yet
    assert _eta(done=5, elapsed_s=1.0, remaining=0) == "0:00:00"
