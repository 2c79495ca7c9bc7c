"""What reaches the terminal: our progress and results by default, Ray's chatter with ``--verbose``.

Why one module: the noise of a local run comes from many places (Ray's driver logger, Ray Train's
per-report INFO lines, Tune's status tables, Serve's controller / replica INFO lines, Ray Data's
executor, DeepSpeed's op builder, FAISS's loader, torch deprecation warnings in every worker and
the raylet's worker-pool warnings). Each has its own knob; this module turns all of them in one
place so drivers only call :func:`configure_console` and :func:`hybrid_ray.local.init_ray`.

Quiet (the default) uses Ray's own knobs first: ``ray.init(logging_level=WARNING)``, Train V2's
``RunConfig(logging_config=LoggingConfig(log_level="WARNING"))``, Tune ``RunConfig(verbose=0)``
plus :func:`tune_progress_callback` for "trials done / total", Serve's
``LoggingConfig(log_level="WARNING")``, Python ``logging`` levels for ``ray.*`` and
``faiss.loader``, and a ``worker_process_setup_hook`` (:func:`setup_worker`) that applies the same
levels and the torch warning filter inside every Ray worker. Lines that no knob reaches (DeepSpeed's
``print``, C++ ``core_worker.cc`` notices, raylet warnings) are dropped from the console by
:func:`is_noise` in the driver's worker-log handler. Nothing is lost: Ray writes every worker's
stdout / stderr and its own logs under ``<session>/logs`` (see :func:`ray_log_dir`), and Train
writes its INFO lines to ``<session>/logs/train``. Our own rank-0 progress lines still come through
Ray's log forwarding (``log_to_driver`` stays on, so a worker traceback still reaches the console).

``--verbose`` on the drivers, or ``HYBRID_RAY_VERBOSE=1``, leaves every Ray default as it is.

The driver's own C++ core writes ERROR lines straight to the driver's stderr, where no filter
reaches them (the only knob, ``RAY_BACKEND_LOG_LEVEL``, would also drop real C++ errors from
every log file). The one such line of a healthy run was the actor-restart notice for Ray Data's
encoding pool, which the driver creates: restartable actors (``max_restarts=-1``, Ray Data's
default) whose constructor arguments are object references. It is removed at its source: on a
local cluster the index's encoding actors are not restartable
(:func:`hybrid_ray.index.build.actor_restart_args`); on a real cluster the notice stays.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import warnings
from typing import Any

VERBOSE_ENV = "HYBRID_RAY_VERBOSE"
SETUP_HOOK = "hybrid_ray.console.setup_worker"
QUIET_LEVEL = logging.WARNING
QUIET_LEVEL_NAME = "WARNING"

# Loggers whose INFO output is Ray's bookkeeping or a library's start-up chatter, not our progress.
# They print to the console only (driver) or to the worker's captured stderr, so a level is enough.
QUIET_LOGGERS = ("ray", "ray.train", "ray.tune", "faiss.loader")
# Ray Data and Serve configure their own loggers on import (level DEBUG / INFO, a file handler and a
# console handler): only their console handlers are raised to WARNING, so their files keep INFO.
QUIET_CONSOLE_HANDLERS = ("ray.data", "ray.serve")

# Known-harmless torch warning raised in every training worker (DeepSpeed calls the old API).
TORCH_WARNING_MESSAGE = r"`torch\.distributed\.all_gather_into_tensor` is deprecated"

# Lines from Ray workers / the raylet that read as errors or warnings although nothing failed.
# Each is harmless in our runs, and each is still in Ray's log files.
NOISE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((why, re.compile(rx)) for why, rx in (
    # Ray Train's PreemptionWatcher / Ray Data's MapWorker: a notice about actor restarts (ray#53727).
    ("actor-restart notice", r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object"),
    # The raylet counts worker start-ups; on 2 cores a Tune search always starts "too many".
    ("worker-pool notice", r"PYTHON worker processes have been started on node"),
    # serve.shutdown() kills the controller while its graceful_shutdown task is in flight.
    ("Serve shutdown notice", r"Task ServeController\.graceful_shutdown failed"),
    # DeepSpeed prints this once per worker after loading its cached comm op.
    ("DeepSpeed op build", r"^DeepSpeed \S+ built successfully"),
    # faiss tries its AVX512 / AVX2 builds first; faiss-cpu wheels ship the generic one.
    ("faiss loader", r"^(Loading faiss( with AVX\d+ support)?\.|Successfully loaded faiss\.|"
                     r"Could not load library with AVX\d+ support due to:|"
                     r"ModuleNotFoundError\(\"No module named 'faiss\.swigfaiss_avx\d+'\"\))"),
    ("torch deprecation", r"FutureWarning: " + TORCH_WARNING_MESSAGE),
    # Ray Train 2.60 logs this per report under a logger named by its file path, which its own
    # LoggingConfig(log_level=...) does not reach; it stays in the worker's log files.
    ("Train per-report line", r"^Reporting training result \d+: TrainingReport\("),
))

# Ray Data warns once that progress bars are off: we turn them off on purpose for a log-friendly console.
_DATA_NOISE = re.compile(r"Progress bars( for operators)? disabled")


def is_verbose(flag: bool | None = None) -> bool:
    """``flag`` when given (a ``--verbose`` flag), else ``HYBRID_RAY_VERBOSE`` (``1``/``true``/``yes``)."""
    if flag:
        return True
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_noise(line: str) -> bool:
    """True for a known-harmless Ray / library line (see ``NOISE_PATTERNS``); ANSI colours are ignored."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
    return any(rx.search(plain) for _, rx in NOISE_PATTERNS)


class _DropKnownNoise(logging.Filter):
    """Drops Ray Data's "progress bars disabled" notice (we disable them on purpose; it is a WARNING)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _DATA_NOISE.search(record.getMessage())


_NOISE_FILTER = _DropKnownNoise()


_saved_levels: dict[str, int] = {}
_saved_handler_levels: dict[int, tuple[logging.Handler, int]] = {}


def _set_levels(verbose: bool) -> None:
    """Quiet: WARNING on ``QUIET_LOGGERS`` (the old levels are kept); verbose: the old levels back."""
    if verbose:
        for name, level in _saved_levels.items():
            logging.getLogger(name).setLevel(level)
        _saved_levels.clear()
        return
    for name in QUIET_LOGGERS:
        log = logging.getLogger(name)
        _saved_levels.setdefault(name, log.level)
        log.setLevel(QUIET_LEVEL)


def _console_handlers(log: logging.Logger) -> list[logging.Handler]:
    return [h for h in log.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def quiet_library_handlers(verbose: bool | None = None) -> None:
    """Raise (quiet) or restore (verbose) the console handlers of Ray Data and Serve, if imported.

    Call after importing them: their import installs fresh handlers (``init_ray`` imports Ray
    Data for this; :func:`serve_start_kwargs` does it for Serve).
    """
    verbose = is_verbose(verbose)
    if verbose:
        for handler, level in _saved_handler_levels.values():
            handler.setLevel(level)
            handler.removeFilter(_NOISE_FILTER)
        _saved_handler_levels.clear()
        return
    for name in QUIET_CONSOLE_HANDLERS:
        if name not in sys.modules:
            continue
        for handler in _console_handlers(logging.getLogger(name)):
            _saved_handler_levels.setdefault(id(handler), (handler, handler.level))
            handler.setLevel(max(handler.level, QUIET_LEVEL))
            handler.addFilter(_NOISE_FILTER)


_set_env: set[str] = set()


def _tune_output_engine(verbose: bool) -> None:
    """Quiet: Tune's legacy output engine, which ``verbose=0`` silences completely.

    Tune 2.60's new engine prints the experiment-configuration table and the "View detailed results"
    lines even at ``verbose=0``; ``RAY_AIR_NEW_OUTPUT=0`` (Tune's switch) selects the engine that
    does not. Left alone if the user set it; undone by a later verbose call.
    """
    key = "RAY_AIR_NEW_OUTPUT"
    if not verbose and key not in os.environ:
        os.environ[key] = "0"
        _set_env.add(key)
    elif verbose and key in _set_env:
        os.environ.pop(key, None)
        _set_env.discard(key)


def _filter_warnings(verbose: bool) -> None:
    """Quiet: ignore the known torch deprecation warning (verbose: leave the filters alone)."""
    if not verbose:
        warnings.filterwarnings("ignore", message=TORCH_WARNING_MESSAGE, category=FutureWarning)


def _our_log_handler() -> None:
    """Show ``hybrid_ray.*`` INFO records (e.g. "built shard-0000") as ``[hybrid-ray] ...`` lines, once."""
    log = logging.getLogger("hybrid_ray")
    if not any(getattr(h, "_hybrid_ray", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[hybrid-ray] %(message)s"))
        handler._hybrid_ray = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def add_verbose_flag(parser: Any) -> None:
    """The drivers' ``--verbose`` flag (same meaning as ``HYBRID_RAY_VERBOSE=1``)."""
    parser.add_argument("--verbose", action="store_true", default=None,
                        help=f"show Ray's own INFO lines, status tables and warnings (or set {VERBOSE_ENV}=1)")


def configure_console(verbose: bool | None = None) -> bool:
    """Set up this process's console; returns whether it is verbose. Call before Ray starts.

    Records the choice in ``HYBRID_RAY_VERBOSE`` so :func:`hybrid_ray.local.init_ray`, the Ray
    workers (through :func:`hybrid_ray.local.worker_env`) and the Serve app builder see the same.
    """
    verbose = is_verbose(verbose)
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if not verbose:  # Hugging Face's tqdm bars ("Writing model shards") are one 300-character line in a log
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _tune_output_engine(verbose)
    _set_levels(verbose)
    quiet_library_handlers(verbose)
    _filter_warnings(verbose)
    _our_log_handler()
    return verbose


def setup_worker() -> None:
    """Ray ``worker_process_setup_hook``: the quiet levels and warning filter inside each worker."""
    if not is_verbose():
        _set_levels(False)
        _filter_warnings(False)


def ray_init_kwargs() -> dict[str, Any]:
    """Extra ``ray.init`` arguments: the driver's ``ray`` logger at WARNING when quiet."""
    return {} if is_verbose() else {"logging_level": QUIET_LEVEL}


def runtime_env_extras() -> dict[str, Any]:
    """Job-level runtime_env fields (merged by ``init_ray``): the worker setup hook when quiet."""
    return {} if is_verbose() else {"worker_process_setup_hook": SETUP_HOOK}


def install_driver_log_filter() -> bool:
    """Route forwarded worker lines through :func:`is_noise` (quiet only). Call after ``ray.init``.

    Ray prints the workers' stdout / stderr on the driver through a handler registered as
    ``ray_print_logs``; we replace it by one that drops the known-harmless lines and then prints
    the rest exactly as Ray does (prefix, colours, de-duplication). Returns True if installed.
    """
    if is_verbose():
        return False
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - Ray is a dependency
        return False
    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    names = [pair[0] for pair in getattr(dispatcher, "handlers", ())]
    if "ray_print_logs" not in names:
        return False  # log_to_driver is off or Ray changed its internals: nothing to filter
    ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", functools.partial(_print_filtered, ignore_prefix=ignore_prefix))
    # The raylet's notices (worker pool, task retries) reach the driver through a second path, the
    # error listener thread, which calls this module-level function by name.
    if not getattr(ray_worker.print_to_stdstream, "_hybrid_ray", False):
        global _ray_print_to_stdstream
        _ray_print_to_stdstream = ray_worker.print_to_stdstream
        ray_worker.print_to_stdstream = _print_filtered
    return True


def after_ray_init() -> None:
    """What :func:`hybrid_ray.local.init_ray` runs once Ray is up: Ray Data's console handler and
    the forwarded-log filter (quiet only)."""
    if is_verbose():
        return
    import ray.data  # noqa: F401  - installs its handlers now, so they can be quieted once

    quiet_library_handlers()
    install_driver_log_filter()


def filter_log_batch(data: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of one forwarded log batch without its noise lines; None when nothing is left."""
    lines = [ln for ln in data.get("lines", []) if not is_noise(ln)]
    if not lines:
        return None
    return {**data, "lines": lines}


_ray_print_to_stdstream: Any = None


def _print_filtered(data: dict[str, Any], ignore_prefix: bool) -> None:
    """Ray's ``print_to_stdstream`` minus the noise lines."""
    kept = filter_log_batch(data)
    if kept is None:
        return
    printer = _ray_print_to_stdstream
    if printer is None:
        from ray._private.worker import print_to_stdstream as printer
    printer(kept, ignore_prefix=ignore_prefix)


_print_filtered._hybrid_ray = True  # type: ignore[attr-defined]


def train_logging_config():
    """``ray.LoggingConfig`` for Train V2's ``RunConfig``: WARNING when quiet (the per-report INFO
    lines then go only to ``<session>/logs/train``), Ray's default otherwise."""
    from ray import LoggingConfig

    return LoggingConfig() if is_verbose() else LoggingConfig(log_level=QUIET_LEVEL_NAME)


def serve_log_level() -> str:
    """Serve controller / proxy / replica log level: WARNING when quiet, Serve's INFO otherwise.

    Serve applies one level to a component's console and file alike; ``--verbose`` brings back
    the INFO lines (and the access log of ``hybrid-ray serve``).
    """
    return "INFO" if is_verbose() else QUIET_LEVEL_NAME


def deployment_log_options(access_log: bool) -> dict[str, Any]:
    """Extra Serve ``logging_config`` keys of our deployments (``hybrid_ray.serving.app``).

    WARNING only when a hybrid-ray driver set up a quiet console in this process
    (``HYBRID_RAY_VERBOSE=0``) and the access log is off: ``serve run`` / ``serve deploy`` / a
    RayService keep Serve's defaults, and an enabled access log stays visible.
    """
    quiet = os.environ.get(VERBOSE_ENV) == "0"
    return {"log_level": QUIET_LEVEL_NAME} if quiet and not access_log else {}


def serve_start_kwargs() -> dict[str, Any]:
    """``serve.start(**...)`` extras: the controller / proxy log level; quiets Serve's driver logger too."""
    from ray.serve.schema import LoggingConfig

    quiet_library_handlers()
    return {"logging_config": LoggingConfig(log_level=serve_log_level())}


def tune_verbose(configured: int) -> int:
    """Tune's ``RunConfig(verbose=...)``: the configured value when verbose, 0 when quiet."""
    return int(configured) if is_verbose() else 0


def tune_progress_callback(metric: str | None = None):
    """A Tune callback printing one line per trial start / finish with "k / n done" (quiet runs).

    Replaces Tune's status table (printed every 30 s) with the facts a person waits for: the
    searched ``metric`` (every ``val_*`` metric when None) and the step a trial ended at.
    """
    from ray import tune

    class TrialProgress(tune.Callback):
        def __init__(self) -> None:
            self.total: int | None = None
            self.done = 0

        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
            self.total = total_num_samples

        def _count(self) -> str:
            return f"{self.done}/{self.total}" if self.total else str(self.done)

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            params = ", ".join(f"{k}={v}" for k, v in sorted((trial.config or {}).items()))
            print(f"[hybrid-ray tune] trial {trial.trial_id} started ({params}); {self._count()} done", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.done += 1
            res = trial.last_result or {}
            keys = [metric] if metric else sorted(k for k in res if k.startswith("val_"))
            vals = " ".join(f"{k} {res[k]:.4f}" for k in keys if isinstance(res.get(k), float))
            step = f" at step {res['step']}" if "step" in res else ""
            print(f"[hybrid-ray tune] trial {trial.trial_id} finished{step}: {vals or 'no validation'}; "
                  f"{self._count()} done", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self.done += 1
            print(f"[hybrid-ray tune] trial {trial.trial_id} FAILED (see {trial.local_path}); "
                  f"{self._count()} done", flush=True)

    return TrialProgress()


def ray_log_dir() -> str | None:
    """The running Ray session's log directory (where the hidden lines are), or None."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return os.path.join(ray._private.worker.global_worker.node.get_session_dir_path(), "logs")
    except Exception:  # pragma: no cover - best effort, only used in messages
        return None
