"""The Ray cluster launcher configs in cluster/ parse and validate against Ray's own schema.

Two levels, both offline: the raw file against ``ray/autoscaler/ray-schema.json`` (jsonschema), and
the same preparation + validation ``ray up`` runs before touching a cloud
(``prepare_config`` -- merges the provider's defaults.yaml -- then ``validate_config``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CONFIGS = sorted(CLUSTER.glob("*.yaml"))


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_configs_present():
    assert {p.name for p in CONFIGS} >= {"gpu.yaml", "local.yaml"}
    assert (CLUSTER / "README.md").is_file()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_matches_ray_schema(path, ray_schema):
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, ray_schema)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_survives_ray_up_preparation(path):
    config = yaml.safe_load(path.read_text())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.__setitem__("max_workers", "four"),
        lambda c: c.__setitem__("setup_command", []),  # typo: unknown top-level key
        lambda c: c["provider"].pop("type"),
        lambda c: c["docker"].__setitem__("image", 3),
        lambda c: c["available_node_types"]["ray.worker.gpu"].pop("node_config"),
    ],
    ids=[
        "max_workers-type",
        "unknown-key",
        "provider-type-missing",
        "docker-image-type",
        "node-config-missing",
    ],
)
def test_mutated_config_is_rejected(mutate, ray_schema):
    config = _load("gpu.yaml")
    jsonschema.validate(config, ray_schema)
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema)


def test_gpu_config_contents():
    config = _load("gpu.yaml")
    assert config["docker"]["image"].startswith("rayproject/ray:") and "gpu" in config["docker"]["image"]
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "keep work off the head"
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers), "no GPU node type"
    setup = " ".join(config["setup_commands"])
    assert "-c constraints.txt" in setup
    # faiss-gpu replaces faiss-cpu; uninstall must come before the GPU install.
    assert setup.index("uninstall -y faiss-cpu") < setup.index("install --no-cache-dir faiss-gpu-cu12")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in " ".join(config[key]), key
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert ".venv" in config["rsync_exclude"]


def test_local_config_is_loopback_only():
    config = _load("local.yaml")
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] == "127.0.0.1"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in head_start
    assert "--node-ip-address=127.0.0.1" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "-c constraints.txt" in " ".join(config["setup_commands"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_synced_paths_exist(path):
    config = yaml.safe_load(path.read_text())
    for remote, local in config.get("file_mounts", {}).items():
        if local.startswith("~"):
            continue  # user files (the auth token) live outside the repository
        assert (ROOT / local).exists(), (remote, local)
    assert (ROOT / "constraints.txt").is_file()
