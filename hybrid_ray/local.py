"""Local-machine defaults: keep every Ray / gloo listener on loopback.

Ray 2.60 binds to the machine's external address by default even for ``ray.init()``; setting
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps it on 127.0.0.1 and ``GLOO_SOCKET_IFNAME=lo`` does
the same for torch.distributed. These are applied by ``hybrid_ray`` entry points that start a
*local* cluster, so users need not remember them. On a real cluster (``RAY_ADDRESS`` set, or
``ray job submit``) nothing is changed.
"""

from __future__ import annotations

import os
from typing import Any

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "GLOO_SOCKET_IFNAME": "lo",
    "RAY_AUTH_MODE": "disabled",
    # DeepSpeed picks its accelerator at import; on a machine without CUDA say so explicitly.
}
# Variables that Ray workers must inherit (passed through runtime_env).
WORKER_ENV_KEYS = ("GLOO_SOCKET_IFNAME", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "TOKENIZERS_PARALLELISM",
                   "HYBRID_RAY_VERBOSE", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (a wildcard host is probed on loopback)."""
    import socket

    with socket.socket() as s:
        s.bind((host if host not in ("0.0.0.0", "::") else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def on_cluster() -> bool:
    """True when we are attached to an existing cluster (job submission or RAY_ADDRESS)."""
    return bool(os.environ.get("RAY_ADDRESS")) or bool(os.environ.get("RAY_JOB_ID"))


def apply_loopback_env() -> None:
    """Set the loopback variables unless the user already chose values.

    Must run before ``import ray``: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER into a constant
    at import time. ``import hybrid_ray`` calls this for local runs, so every entry point that
    imports the package first gets it.
    """
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def apply_accelerator_env() -> None:
    """Tell DeepSpeed to use its CPU accelerator when there is no CUDA device (imports torch)."""
    if not _cuda_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch always importable in our env
        return False


def worker_env() -> dict[str, str]:
    """Environment for ``runtime_env={"env_vars": ...}`` so Ray workers see the same settings."""
    return {k: os.environ[k] for k in WORKER_ENV_KEYS if k in os.environ}


def dashboard_wanted() -> bool:
    """Start the Ray dashboard on local clusters unless ``HYBRID_RAY_DASHBOARD=0``.

    Why on by default: users watch training and Tune there, and Ray Train V2's placement-group
    cleaner polls the State API, which the dashboard serves; without it the cleaner logs a
    warning every few seconds. The tests turn it off (one process less per cluster).
    """
    return os.environ.get("HYBRID_RAY_DASHBOARD", "1").strip().lower() not in ("0", "false", "no")


def init_ray(num_cpus: int | None = None, *, include_dashboard: bool | None = None, **kwargs: Any) -> None:
    """Start or join Ray. Locally: a loopback-only cluster (dashboard on 127.0.0.1); on a cluster: join it.

    The console is configured here too (:mod:`hybrid_ray.console`: quiet unless ``--verbose`` /
    ``HYBRID_RAY_VERBOSE=1``), so every entry point that starts Ray gets the same output.
    """
    import ray

    from hybrid_ray import console

    if ray.is_initialized():
        return
    console.configure_console()
    apply_accelerator_env()
    for key, value in console.ray_init_kwargs().items():
        kwargs.setdefault(key, value)
    runtime_env = {"env_vars": worker_env(), **console.runtime_env_extras()}
    if on_cluster():
        ray.init(runtime_env=runtime_env, **kwargs)
        console.after_ray_init()
        return
    apply_loopback_env()
    dashboard = dashboard_wanted() if include_dashboard is None else include_dashboard
    if dashboard:
        kwargs.setdefault("dashboard_host", "127.0.0.1")
    ctx = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, runtime_env=runtime_env, **kwargs)
    console.after_ray_init()
    url = getattr(ctx, "dashboard_url", None)
    if dashboard and url:
        print(f"[hybrid-ray] Ray dashboard (training, Tune, Serve): http://{url}", flush=True)
    if not console.is_verbose():
        print(f"[hybrid-ray] Ray's own logs (hidden here; --verbose shows them): {console.ray_log_dir()}",
              flush=True)
