"""hybrid_ray.local: loopback defaults and the local Ray cluster (with its dashboard)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hybrid_ray.local import dashboard_wanted, on_cluster


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("1", True), ("0", False), ("false", False),
                                                  ("No", False)])
def test_dashboard_switch(monkeypatch, value, expected) -> None:
    if value is None:
        monkeypatch.delenv("HYBRID_RAY_DASHBOARD", raising=False)
    else:
        monkeypatch.setenv("HYBRID_RAY_DASHBOARD", value)
    assert dashboard_wanted() is expected


def test_on_cluster_follows_ray_address_and_job_id(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    assert not on_cluster()
    monkeypatch.setenv("RAY_JOB_ID", "01000000")
    assert on_cluster()


def test_local_cluster_and_dashboard_listen_on_loopback_only() -> None:
    """A fresh process (Ray reads the loopback switch at import): every Ray address is 127.0.0.1."""
    code = textwrap.dedent("""
        import json, os, urllib.request
        import hybrid_ray  # applies the loopback environment before ray is imported
        from hybrid_ray.local import init_ray
        import ray
        init_ray(num_cpus=1)
        url = ray.worker.global_worker.node.address_info["webui_url"]
        nodes = [n["NodeManagerAddress"] for n in ray.nodes()]
        with urllib.request.urlopen(f"http://{url}/api/version", timeout=30) as r:
            ok = r.status == 200
        print("RESULT", json.dumps({"webui": url, "nodes": nodes, "api_ok": ok}))
        ray.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}
    env["HYBRID_RAY_DASHBOARD"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, out.stdout[-3000:] + out.stderr[-3000:]
    import json

    result = json.loads(line.removeprefix("RESULT "))
    assert result["webui"].startswith("127.0.0.1:")
    assert result["nodes"] == ["127.0.0.1"]
    assert result["api_ok"]
    assert "Ray dashboard (training, Tune, Serve): http://127.0.0.1:" in out.stdout
