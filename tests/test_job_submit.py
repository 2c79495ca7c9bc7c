"""`ray job submit` end to end on a throw-away loopback cluster, through scripts/job_submit_local.sh.

The script starts `ray start --head --block` on 127.0.0.1 (free ports, own --temp-dir, own process
group), uploads the repository as the job's working dir, runs ENTRYPOINT as the job driver and
stops that cluster -- and only that one -- on exit. Measured: ~30-35 s on 2 cores.

`test_default_invocation_trains` runs the script exactly as the docs show it, with NO arguments
(only JOB_OUT points its outputs at a temp dir): it writes the tiny pairs set itself and submits the
real training entry point (tiny random BERT, 2 Ray Train workers, ZeRO-2, 24 steps).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "job_submit_local.sh"

MARKER = "HYBRID_RAY_JOB_OK"
ENTRYPOINT: list[str] = [
    "python",
    "-c",
    "import os, hybrid_ray; "
    f"print('{MARKER}', os.path.relpath(hybrid_ray.__file__, os.getcwd()), os.getcwd(), "
    "'uploaded:' + ','.join(sorted(d for d in ('.venv', '.git', 'pyproject.toml') if os.path.exists(d))))",
]
EXPECTED_OUTPUT = re.compile(rf"{MARKER} hybrid_ray/__init__\.py (\S+) uploaded:(\S*)")
# Generous: a loaded 2-core box (another Ray job beside the tests) took >150 s for the training job.
TIMEOUT_S = 300
TRAIN_TIMEOUT_S = 600


def _run_script(entry: list[str], timeout_s: float = TIMEOUT_S, **extra_env: str) -> subprocess.CompletedProcess:
    """Run the script with ``-- entry``, or with no arguments at all when ``entry`` is empty."""
    env = dict(os.environ, **extra_env)
    # The job's `python` must be this interpreter's environment (it has ray and the project deps).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY"] = str(Path(sys.executable).parent / "ray")
    env.setdefault("NUM_CPUS", "2")
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), *(["--", *entry] if entry else [])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # SIGTERM the whole group: the script's EXIT trap stops its cluster (no stray raylets).
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"job script still running after {timeout_s} s; its output:\n{(out + err)[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def submitted() -> subprocess.CompletedProcess:
    if not (Path(sys.executable).parent / "ray").exists():
        pytest.skip("the ray CLI is not installed next to this interpreter")
    return _run_script(ENTRYPOINT)


def test_script_is_executable_bash():
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash")
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_job_succeeded(submitted):
    out = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, out[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", out), out[-4000:]


def test_job_ran_from_uploaded_working_dir(submitted):
    out = submitted.stdout + submitted.stderr
    match = EXPECTED_OUTPUT.search(out)
    assert match, out[-4000:]
    # The driver imported hybrid_ray from the uploaded package, not from the checkout.
    assert "working_dir_files" in match.group(1)
    assert not match.group(1).startswith(str(ROOT))


def test_upload_left_out_ignored_dirs(submitted):
    match = EXPECTED_OUTPUT.search(submitted.stdout + submitted.stderr)
    assert match
    # .venv (in .gitignore) and .git (in the script's excludes) stay home; the sources travel.
    assert match.group(2).split(",") == ["pyproject.toml"]


def test_cluster_stopped(submitted):
    out = submitted.stdout + submitted.stderr
    temp_dirs = set(re.findall(r"/tmp/hrjs\.\w+", out))
    assert temp_dirs, "could not find the cluster's temp dir in the output"
    for temp_dir in temp_dirs:
        assert not Path(temp_dir).exists(), f"{temp_dir} left behind"
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert temp_dir not in ps, f"processes of the test cluster still running ({temp_dir})"


@pytest.mark.slow  # a second cluster: another 30-50 s
def test_failing_job_fails():
    if not (Path(sys.executable).parent / "ray").exists():
        pytest.skip("the ray CLI is not installed next to this interpreter")
    result = _run_script(["python", "-c", "raise SystemExit(3)"])
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' failed", out), out[-4000:]


@pytest.fixture(scope="module")
def default_job(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`scripts/job_submit_local.sh` with no arguments: the documented default job."""
    if not (Path(sys.executable).parent / "ray").exists():
        pytest.skip("the ray CLI is not installed next to this interpreter")
    out = tmp_path_factory.mktemp("job-default")
    return _run_script([], TRAIN_TIMEOUT_S, JOB_OUT=str(out)), out


def test_default_invocation_trains(default_job) -> None:
    result, out_dir = default_job
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", out), out[-4000:]
    # the script wrote its own data set and passed it to tiny.yaml's data.path
    assert (out_dir / "tiny-pairs.parquet").is_file()
    assert f"data.path={out_dir / 'tiny-pairs.parquet'}" in out
    assert "[hybrid-ray] done: step 24" in out, out[-4000:]
    (run_dir,) = [d for d in out_dir.iterdir() if d.is_dir() and d.name.startswith("tiny-")]
    encoder = run_dir / "encoder"
    assert (encoder / "config.json").exists() and (encoder / "hybrid_ray_encoder.json").exists()
