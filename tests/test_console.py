"""hybrid_ray.console: the quiet default console, and ``--verbose`` bringing Ray's output back."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from types import SimpleNamespace

import pytest

from hybrid_ray import console

# Lines copied from a `make demo` log of the main branch: all harmless, all hidden when quiet.
NOISE = [
    "[2026-12-03 08:22:54,171 E 7006 7129] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and "
    "ID: 'bf6c5d56723c1c233c2c4dd001000000' has constructor arguments in the object store and max_restarts > 0.",
    "WARNING: 8 PYTHON worker processes have been started on node: 1283c957 with address: 127.0.0.1, which is 4x "
    "the maximum expected startup concurrency (2).",
    "Task ServeController.graceful_shutdown failed. There are infinite retries remaining, so the task will be "
    "retried. Error: The actor is dead because it was killed by `ray.kill`.",
    "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
    "Loading faiss with AVX512 support.",
    "Could not load library with AVX2 support due to:",
    "ModuleNotFoundError(\"No module named 'faiss.swigfaiss_avx512'\")",
    "Loading faiss.",
    "Successfully loaded faiss.",
    "/venv/lib/python3.11/site-packages/torch/distributed/c10d_logger.py:83: FutureWarning: "
    "`torch.distributed.all_gather_into_tensor` is deprecated. Please use `torch.distributed.all_gather`.",
    "\x1b[32mLoading faiss with AVX2 support.\x1b[0m",  # ANSI colours do not hide a match
    "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'step': 5, 'loss': 2.43}, "
    "validation=False) from rank 0",
]
# Our progress and anything that may be a real failure: always shown.
KEPT = [
    "[hybrid-ray] step 5/40 (12%, ETA 0:01:41) epoch 0 loss 2.4309 mono(hi) 5.5 samples/s lr 2.92e-05",
    "[hybrid-ray] step 16 validation: val_miracl_map 0.1772 val_mono_map 0.2672",
    "Traceback (most recent call last):",
    "ModuleNotFoundError: No module named 'deepspeed'",
    "RuntimeError: Expected all tensors to be on the same device",
    "[2026-12-03 08:22:54,171 E 7006 7129] core_worker.cc:1234: Failed to connect to the GCS",
    "Could not load library libcudart.so.12",
]


@pytest.fixture
def clean_console(monkeypatch):
    """Run a test with no verbose setting and give back the process's logging / warning state."""
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "0"))
    console.configure_console(True)  # undo what an earlier test of this process (init_ray) configured
    os.environ.pop(console.VERBOSE_ENV, None)
    with warnings.catch_warnings():
        yield
        console.configure_console(True)  # restores the saved levels and handlers
    os.environ.pop(console.VERBOSE_ENV, None)


@pytest.mark.parametrize("line", NOISE)
def test_known_harmless_lines_are_noise(line: str) -> None:
    assert console.is_noise(line)


@pytest.mark.parametrize("line", KEPT)
def test_progress_and_real_errors_are_kept(line: str) -> None:
    assert not console.is_noise(line)


def test_filter_log_batch_keeps_other_fields_and_drops_empty_batches() -> None:
    batch = {"pid": 7253, "actor_name": "RayTrainWorker", "is_err": True, "lines": [NOISE[0], KEPT[0], NOISE[4]]}
    kept = console.filter_log_batch(batch)
    assert kept == {**batch, "lines": [KEPT[0]]}
    assert batch["lines"] == [NOISE[0], KEPT[0], NOISE[4]], "the input batch is not modified"
    assert console.filter_log_batch({**batch, "lines": NOISE[:3]}) is None


@pytest.mark.parametrize(("flag", "env", "expected"), [
    (None, None, False), (None, "1", True), (None, "true", True), (None, "0", False), (True, None, True),
    (True, "0", True),
])
def test_verbose_comes_from_the_flag_or_the_environment(monkeypatch, flag, env, expected) -> None:
    if env is None:
        monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    else:
        monkeypatch.setenv(console.VERBOSE_ENV, env)
    assert console.is_verbose(flag) is expected


def test_quiet_by_default_then_verbose_restores_ray_levels(clean_console) -> None:
    before = {name: logging.getLogger(name).level for name in console.QUIET_LOGGERS}
    assert console.configure_console() is False
    assert os.environ[console.VERBOSE_ENV] == "0", "workers and init_ray read the choice from the environment"
    assert all(logging.getLogger(n).level == logging.WARNING for n in console.QUIET_LOGGERS)
    assert console.ray_init_kwargs() == {"logging_level": logging.WARNING}
    assert console.runtime_env_extras() == {"worker_process_setup_hook": console.SETUP_HOOK}
    assert console.train_logging_config().log_level == "WARNING"
    assert console.serve_log_level() == "WARNING"
    assert console.tune_verbose(1) == 0
    assert os.environ.get("RAY_AIR_NEW_OUTPUT") == "0", "the Tune engine that verbose=0 silences"
    assert console.deployment_log_options(access_log=False) == {"log_level": "WARNING"}
    assert console.deployment_log_options(access_log=True) == {}, "an enabled access log stays visible"
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated.", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else is deprecated"]

    assert console.configure_console(True) is True
    assert os.environ[console.VERBOSE_ENV] == "1"
    assert {n: logging.getLogger(n).level for n in console.QUIET_LOGGERS} == before
    assert console.ray_init_kwargs() == {} and console.runtime_env_extras() == {}
    assert console.train_logging_config().log_level == "INFO"
    assert console.serve_log_level() == "INFO"
    assert console.tune_verbose(2) == 2
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    assert console.deployment_log_options(access_log=False) == {}


def test_serve_deploy_outside_our_drivers_keeps_serve_defaults(monkeypatch) -> None:
    """``serve run`` / ``serve deploy`` / a RayService never ran configure_console: Serve's levels stay."""
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    assert console.deployment_log_options(access_log=False) == {}


def test_ray_data_console_handler_is_raised_not_its_file(clean_console) -> None:
    import ray.data  # noqa: F401  - installs Ray Data's own handlers

    handlers = console._console_handlers(logging.getLogger("ray.data"))
    assert handlers, "Ray Data no longer has a console handler: revisit QUIET_CONSOLE_HANDLERS"
    levels = [h.level for h in handlers]
    files = [h for h in logging.getLogger("ray.data").handlers if h not in handlers]
    file_levels = [h.level for h in files]
    console.configure_console(False)
    assert all(h.level >= logging.WARNING for h in handlers)
    assert [h.level for h in files] == file_levels, "the log file keeps Ray Data's INFO lines"
    notice = logging.LogRecord("ray.data", logging.WARNING, __file__, 1, "Progress bars disabled. To enable, set "
                               "`ray.data.DataContext.get_current().enable_progress_bars = True`.", None, None)
    real = logging.LogRecord("ray.data", logging.WARNING, __file__, 1, "Failed to read block 3", None, None)
    assert not handlers[0].filter(notice) and handlers[0].filter(real)
    console.configure_console(True)
    assert [h.level for h in handlers] == levels and handlers[0].filter(notice)


def test_tune_progress_callback_counts_trials(capsys) -> None:
    cb = console.tune_progress_callback("val_miracl_map")
    cb.setup(total_num_samples=3)
    trial = SimpleNamespace(trial_id="a8d12_00000", config={"alpha": 0.5}, local_path="/tmp/t",
                            last_result={"val_miracl_map": 0.17722, "val_mono_map": 0.3, "step": 16})
    cb.on_trial_start(0, [], trial)
    cb.on_trial_complete(1, [], trial)
    cb.on_trial_error(2, [], SimpleNamespace(trial_id="a8d12_00001", config={}, local_path="/tmp/u"))
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "[hybrid-ray tune] trial a8d12_00000 started (alpha=0.5); 0/3 done",
        "[hybrid-ray tune] trial a8d12_00000 finished at step 16: val_miracl_map 0.1772; 1/3 done",
        "[hybrid-ray tune] trial a8d12_00001 FAILED (see /tmp/u); 2/3 done",
    ]


def test_every_driver_takes_verbose() -> None:
    from hybrid_ray import train
    from hybrid_ray.driver import demo, index, serve, tune

    assert demo.build_parser().parse_args(["--verbose"]).verbose is True
    assert demo.build_parser().parse_args([]).verbose is None, "absent: HYBRID_RAY_VERBOSE decides"
    assert train.build_parser().parse_args(["--config", "tiny.yaml", "--verbose"]).verbose is True
    assert tune.build_parser().parse_args(["--config", "demo.yaml", "--verbose"]).verbose is True
    assert index.build_parser().parse_args(["--model", "m", "--corpus", "c", "--out", "o", "--verbose"]).verbose
    assert serve.parse_args(["--index", "i", "--verbose"]).verbose is True


def test_demo_data_summary_is_one_line_per_split() -> None:
    from hybrid_ray.driver.demo import data_summary

    stats = {"splits": {"train": {"rows": 290198, "pairs": 29020, "langs": {"en": 29020, "de": 29018, "bn": 0}},
                        "dev": {"rows": 3889, "pairs": 300, "langs": {"en": 300, "bn": 289}}}}
    lines = data_summary(stats).splitlines()
    assert lines == ["  train   290,198 rows  29,020 pairs   2 languages (de,en)",
                     "  dev       3,889 rows     300 pairs   2 languages (bn,en)"]


_ACTOR_SCRIPT = textwrap.dedent("""
    import logging, warnings
    import hybrid_ray, ray
    from hybrid_ray.local import init_ray
    init_ray(num_cpus=1, include_dashboard=False)

    @ray.remote
    class Chatty:
        def go(self):
            print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
            print("Loading faiss with AVX512 support.")  # the forwarded-log filter hides it
            hook_ran = logging.getLogger("faiss.loader").level == logging.WARNING
            warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated.", FutureWarning)
            print("[hybrid-ray] step 5/40 our progress", flush=True)
            return hook_ran

    # Its own env_vars, like Train's worker_runtime_env: the job's setup hook must still apply.
    print("HOOK", ray.get(Chatty.options(runtime_env={"env_vars": {"X": "1"}}).remote().go.remote()))
    import time; time.sleep(3)  # let the log monitor forward the lines
    ray.shutdown()
""")


@pytest.mark.slow
@pytest.mark.parametrize("verbose", ["0", "1"])
def test_worker_noise_hidden_unless_verbose(verbose: str) -> None:
    """A real local cluster: quiet hides the worker's known noise and keeps our line; verbose shows all."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}
    env.update({console.VERBOSE_ENV: verbose, "HYBRID_RAY_DASHBOARD": "0"})
    out = subprocess.run([sys.executable, "-c", _ACTOR_SCRIPT], capture_output=True, text=True, env=env, timeout=240)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "[hybrid-ray] step 5/40 our progress" in text
    noisy = ["built successfully", "Loading faiss with AVX512", "all_gather_into_tensor", "Started a local Ray"]
    if verbose == "1":
        assert all(n in text for n in noisy[:3]), text[-3000:]
        assert "HOOK False" in out.stdout, "verbose runs no worker setup hook"
    else:
        assert not [n for n in noisy if n in text], text[-3000:]
        assert "HOOK True" in out.stdout, "the worker setup hook did not reach an actor with its own runtime_env"


def test_raylet_notices_through_the_error_listener_are_filtered(monkeypatch) -> None:
    """The driver's error listener prints raylet notices with ``print_to_stdstream``; ours drops the noise."""
    printed: list[dict] = []
    monkeypatch.setattr(console, "_ray_print_to_stdstream", lambda data, ignore_prefix: printed.append(data))
    console._print_filtered({"lines": [NOISE[1]], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert printed == []
    real = "A worker died or was killed while executing a task by an unexpected system error."
    console._print_filtered({"lines": [real], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert printed == [{"lines": [real], "pid": "raylet", "is_err": False}]
