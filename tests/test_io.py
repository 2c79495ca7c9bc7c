"""Atomic writes: all-or-nothing, and published with ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hybrid_ray.io import atomic_dir, atomic_path, write_json_atomic


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_and_dirs_get_umask_modes_not_tempfile_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "f.bin").write_bytes(b"1")
    finally:
        os.umask(old)
    # Another user (a Serve pod reading what a training job wrote) must be able to read them.
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "d") == 0o755


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_dir_write_keeps_previous_dir(tmp_path: Path) -> None:
    target = tmp_path / "index"
    with atomic_dir(target) as d:
        (d / "v1").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "v2").write_text("2")
        raise RuntimeError("died")
    assert sorted(p.name for p in target.iterdir()) == ["v1"]
    assert [p.name for p in tmp_path.iterdir()] == ["index"]
