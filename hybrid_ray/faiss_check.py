"""Exactly one FAISS build: faiss-cpu *or* faiss-gpu-*, checked before ``faiss`` is imported.

Both distributions install the same top-level ``faiss`` package into the same directory, so
with both installed the files of whichever installed last win, mixed with the other's leftovers
(and uninstalling one deletes files the other needs). pip cannot declare two extras mutually
exclusive, so the extras ``cpu`` / ``gpu`` are the install choice and this module is the guard:
``from hybrid_ray.faiss_check import faiss`` raises a clear error instead of importing a broken mix.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hybrid_ray.errors import HybridRayError

CPU_DIST = "faiss-cpu"
GPU_PREFIX = "faiss-gpu"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_faiss_distributions(paths: list[str] | None = None) -> list[str]:
    """Installed distributions that provide ``faiss`` (faiss-cpu, faiss-gpu, faiss-gpu-cu12, ...).

    Reads the ``*.dist-info`` folder names on ``sys.path`` (what ``importlib.metadata`` finds, at a
    glob's cost instead of parsing all ~160 installed distributions' metadata on every import).
    """
    names = set()
    for entry in sys.path if paths is None else paths:
        root = Path(entry or ".")
        if not root.is_dir():
            continue
        for info in root.glob("faiss[-_]*.dist-info"):
            name = _canonical(info.name[: -len(".dist-info")].rsplit("-", 1)[0])
            if name == CPU_DIST or name.startswith(GPU_PREFIX):
                names.add(name)
    return sorted(names)


def check_single_faiss(dists: list[str] | None = None) -> str:
    """Return the one installed FAISS distribution; raise naming them when there are none or several."""
    dists = installed_faiss_distributions() if dists is None else dists
    if not dists:
        raise HybridRayError(
            "FAISS is not installed: pip install -c constraints.txt '.[cpu]' (faiss-cpu) "
            "or '.[gpu]' (faiss-gpu-cu12), exactly one of them"
        )
    if len(dists) > 1:
        raise HybridRayError(
            f"several FAISS builds are installed ({', '.join(dists)}); they overwrite each other's "
            "'faiss' package. Keep one: pip uninstall -y " + " ".join(dists)
            + " && pip install -c constraints.txt '.[cpu]' (or '.[gpu]'). See docs/gpu-faiss.md"
        )
    return dists[0]


check_single_faiss()
import faiss  # noqa: E402  (after the check, on purpose)

__all__ = ["check_single_faiss", "faiss", "installed_faiss_distributions"]
