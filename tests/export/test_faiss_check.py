"""One FAISS build per environment: the extras and the import-time guard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybrid_ray.errors import HybridRayError
from hybrid_ray.faiss_check import check_single_faiss, installed_faiss_distributions

try:
    import tomllib
except ImportError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _fake_site(tmp_path: Path, *dist_infos: str) -> list[str]:
    for name in dist_infos:
        (tmp_path / name).mkdir()
    (tmp_path / "faiss").mkdir()  # the shared package folder itself is not a distribution
    return [str(tmp_path)]


def test_detects_both_builds(tmp_path):
    site = _fake_site(tmp_path, "faiss_cpu-1.15.1.dist-info", "faiss_gpu_cu12-1.14.1.post1.dist-info",
                      "numpy-2.4.6.dist-info")
    dists = installed_faiss_distributions(site)
    assert dists == ["faiss-cpu", "faiss-gpu-cu12"]
    with pytest.raises(HybridRayError, match=r"faiss-cpu, faiss-gpu-cu12.*pip uninstall -y faiss-cpu faiss-gpu-cu12"):
        check_single_faiss(dists)


def test_none_or_one(tmp_path):
    with pytest.raises(HybridRayError, match=r"FAISS is not installed.*\.\[cpu\]"):
        check_single_faiss(installed_faiss_distributions(_fake_site(tmp_path)))
    assert check_single_faiss(["faiss-gpu-cu12"]) == "faiss-gpu-cu12"


def test_this_environment_has_exactly_one():
    assert len(installed_faiss_distributions()) == 1
    import hybrid_ray.search as search

    assert search.faiss.IndexFlatIP(4).d == 4


def test_extras_are_the_install_choice():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("faiss")]
    extras = project["optional-dependencies"]
    assert [d for d in extras["cpu"] if d.startswith("faiss")] == ["faiss-cpu>=1.8"]
    assert all(d.startswith("faiss-gpu") for d in extras["gpu"])
    for name, deps in extras.items():  # no other extra drags a FAISS build in next to the chosen one
        if name not in ("cpu", "gpu"):
            assert not [d for d in deps if d.startswith("faiss")], name
    install = re.search(r"pip install .*-e '\.\[([^\]]*)\]'", (ROOT / "Makefile").read_text())
    assert install and "cpu" in install.group(1).split(",") and "gpu" not in install.group(1).split(",")
