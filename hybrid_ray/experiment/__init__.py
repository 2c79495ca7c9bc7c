"""``hybrid-ray experiment``: a declared grid (alpha x seeds x variants) run as one Ray Tune
experiment, every trial trained and evaluated with per-query results, then one report.

Modules: :mod:`.config` (the spec and its grid), :mod:`.trial` (one trial: train, evaluate),
:mod:`.run` (Tune, resume, progress), :mod:`.report` (aggregation, paired tests, files, plots).
"""

from hybrid_ray.experiment.config import ExperimentSpec, TrialSpec, expand_grid, load_experiment_config

__all__ = ["ExperimentSpec", "TrialSpec", "expand_grid", "load_experiment_config"]
