"""Offline validation of the Kubernetes manifests in k8s/.

* KubeRay custom resources (RayJob, RayService) against the vendored subset of the KubeRay v1.7.0
  CRD schema (k8s/schemas/, see its header for sources).
* Every embedded pod template (head, worker groups, RayJob submitter) and every core object (PVC,
  Pod) against the official Kubernetes JSON schemas shipped by ``kubernetes-validate``, in strict
  mode (unknown fields are errors).
* The RayService's serveConfigV2 against Ray Serve's own ``ServeDeploySchema`` (plus unknown keys).
* Project wiring: the RayJob entrypoint is one command for the submitter's shell; each of its steps
  (tune -> MIRACL corpus -> index) names a driver that exists and whose own argparse parser accepts
  the step's arguments; its `--set` keys are fields of the schema of the program named (tune or
  train); the tune config loads through ``hybrid_ray.tuning.config.load_tune_config``; the encoder the job
  exports and the index it builds are exactly the RayService's ``model_dir`` / ``index_dir``;
  config files named in entrypoints exist in the image layout.
* Policy: GPU limits + tolerations on GPU groups, probes on both heads and the service workers,
  non-root security contexts, the shared PVC mounted (read-only for serving), token auth on.
* Negative cases: mutated manifests must fail, which proves the validators actually validate.
"""

from __future__ import annotations

import ast
import copy
import importlib
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError as K8sValidationError

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SCHEMA_PATH = K8S / "schemas" / "kuberay-v1.7.0-subset.yaml"
# Oldest Kubernetes version we claim to support; kubernetes-validate picks the closest schema.
K8S_VERSION = "1.30"
IMAGE_ROOT = "/app"  # WORKDIR of ./Dockerfile: the repository root is copied there
SHARED_MOUNT = "/mnt/shared"

RAYJOB = K8S / "rayjob-train-tune.yaml"
RAYSERVICE = K8S / "rayservice-retrieval.yaml"


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _load(path: Path) -> dict:
    (doc,) = _load_all(path)
    return doc


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def kuberay_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _kuberay_validator(schema: dict, kind: str) -> jsonschema.Draft202012Validator:
    root = dict(schema)
    root["$ref"] = f"#/$defs/{kind}"
    jsonschema.Draft202012Validator.check_schema(root)
    return jsonschema.Draft202012Validator(root)


def _kuberay_errors(schema: dict, doc: dict) -> list[str]:
    validator = _kuberay_validator(schema, doc["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _validate_k8s(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _validate_pod_template(template: dict, name: str) -> None:
    # A PodTemplate object wraps exactly a PodTemplateSpec: validating it validates the template
    # with the official io.k8s.api.core.v1.PodTemplateSpec schema.
    _validate_k8s(
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
    )


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def _pod_templates(doc: dict) -> dict[str, dict]:
    """Every embedded PodTemplateSpec of a RayJob / RayService, keyed by a readable name."""
    cluster = _cluster_spec(doc)
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        templates[f"worker:{group['groupName']}"] = group["template"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        templates["submitter"] = doc["spec"]["submitterPodTemplate"]
    return templates


def _ray_docs() -> list[dict]:
    return [_load(RAYJOB), _load(RAYSERVICE)]


# --------------------------------------------------------------------------- schema validation


def test_manifest_files_present():
    names = {p.name for p in _manifests()}
    assert {"rayjob-train-tune.yaml", "rayservice-retrieval.yaml", "pvc.yaml"} <= names


def test_schema_subset_is_valid_json_schema(kuberay_schema):
    for kind in ("RayJob", "RayService"):
        _kuberay_validator(kuberay_schema, kind)
    assert "v1.7.0" in SCHEMA_PATH.read_text().split("$schema")[0]  # header names its source


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_manifest_validates(path, kuberay_schema):
    for doc in _load_all(path):
        if doc["apiVersion"].startswith("ray.io/"):
            assert _kuberay_errors(kuberay_schema, doc) == []
            for name, template in _pod_templates(doc).items():
                _validate_pod_template(template, f"{doc['metadata']['name']}-{name}".replace(":", "-"))
        else:
            _validate_k8s(doc)


# --------------------------------------------------------------------------- negative cases


def _mutations() -> list[tuple[str, Path, object]]:
    def set_(path: list, value):
        def mutate(doc):
            node = doc
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value

        return mutate

    def delete(path: list):
        def mutate(doc):
            node = doc
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]

        return mutate

    workers = ["spec", "rayClusterSpec", "workerGroupSpecs", 0]
    return [
        ("replicas as a string", RAYJOB, set_([*workers, "replicas"], "two")),
        ("backoffLimit as a float", RAYJOB, set_(["spec", "backoffLimit"], 1.5)),
        ("shutdownAfterJobFinishes as a string", RAYJOB, set_(["spec", "shutdownAfterJobFinishes"], "yes")),
        ("unknown spec field (typo)", RAYJOB, set_(["spec", "shutdownAfterJobFinish"], True)),
        ("bad submissionMode enum", RAYJOB, set_(["spec", "submissionMode"], "SSHMode")),
        ("worker group without template", RAYJOB, delete([*workers, "template"])),
        ("headGroupSpec missing", RAYJOB, delete(["spec", "rayClusterSpec", "headGroupSpec"])),
        ("wrong apiVersion", RAYJOB, set_(["apiVersion"], "ray.io/v1alpha2")),
        ("bad auth mode", RAYSERVICE, set_(["spec", "rayClusterConfig", "authOptions", "mode"], "password")),
        ("serveConfigV2 as a mapping", RAYSERVICE, set_(["spec", "serveConfigV2"], {"applications": []})),
        ("bad upgradeStrategy", RAYSERVICE, set_(["spec", "upgradeStrategy", "type"], "Rolling")),
    ]


@pytest.mark.parametrize("name,path,mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_mutated_kuberay_manifest_is_rejected(name, path, mutate, kuberay_schema):
    doc = _load(path)
    assert _kuberay_errors(kuberay_schema, doc) == []
    bad = copy.deepcopy(doc)
    mutate(bad)
    assert _kuberay_errors(kuberay_schema, bad), f"mutation not caught: {name}"


def _pod_mutations() -> list[tuple[str, object]]:
    def container(t):
        return t["spec"]["containers"][0]

    return [
        ("runAsUser as a string", lambda t: container(t)["securityContext"].__setitem__("runAsUser", "ray")),
        ("unknown container field", lambda t: container(t).__setitem__("gpus", 1)),
        ("containerPort as a string", lambda t: container(t).__setitem__("ports", [{"containerPort": "x"}])),
        ("container without name", lambda t: container(t).pop("name")),
        ("volumes not a list", lambda t: t["spec"].__setitem__("volumes", {"shared": {}})),
    ]


@pytest.mark.parametrize("name,mutate", _pod_mutations(), ids=[m[0] for m in _pod_mutations()])
def test_mutated_pod_template_is_rejected(name, mutate):
    template = copy.deepcopy(_cluster_spec(_load(RAYJOB))["workerGroupSpecs"][0]["template"])
    _validate_pod_template(template, "ok")
    mutate(template)
    with pytest.raises(K8sValidationError):
        _validate_pod_template(template, "bad")


def test_mutated_pvc_is_rejected():
    pvc = _load(K8S / "pvc.yaml")
    _validate_k8s(pvc)
    pvc["spec"]["accessModes"] = "ReadWriteMany"  # must be a list
    with pytest.raises(K8sValidationError):
        _validate_k8s(pvc)


# --------------------------------------------------------------------------- project wiring


def _module_source(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise AssertionError(f"module {module!r} named in a manifest does not exist in the repository")


def _top_level_functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _repo_path(image_path: str) -> Path:
    assert image_path.startswith(IMAGE_ROOT + "/"), image_path
    return ROOT / image_path[len(IMAGE_ROOT) + 1 :]


SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ";;", "(", ")", "<", ">", ">>"}


def _shell_words(command: str) -> list[str]:
    """POSIX shell words of ``command``, with operators (``&&``, ``;``...) as separate tokens."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _entrypoint_steps(entrypoint: str | None = None) -> list[list[str]]:
    """The commands the RayJob's Ray job runs, in order, each as an argv.

    KubeRay pastes ``spec.entrypoint`` verbatim into the submitter pod's shell command
    (``... ray job submit ... -- <entrypoint> ; fi ; ray job logs ...``, see BuildJobSubmitCommand
    in KubeRay's ray-operator/controllers/ray/common/job.go). A top-level ``&&`` or ``;`` would be
    parsed by THAT shell and run the next step in the submitter pod, not in the Ray job, so the
    entrypoint must be one simple command: either a single program or ``bash -c '<steps>'``.
    """
    words = _shell_words(_load(RAYJOB)["spec"]["entrypoint"] if entrypoint is None else entrypoint)
    operators = [w for w in words if w in SHELL_OPERATORS]
    assert not operators, f"shell operators {operators} at the top level of the entrypoint: quote them in bash -c"
    if words[0] != "bash":
        return [words]
    flags = [w for w in words[1:-1] if w.startswith("-")]
    assert words[1:-1] == flags and any("c" in f for f in flags), words[:3]
    steps, current = [], []
    for word in _shell_words(words[-1]):
        if word == "&&":
            steps.append(current)
            current = []
        else:
            assert word not in SHELL_OPERATORS, f"only '&&' chains are supported in the entrypoint: {word!r}"
            current.append(word)
    steps.append(current)
    assert all(steps), "empty step in the entrypoint"
    return steps


def _step(module: str) -> list[str]:
    (step,) = [s for s in _entrypoint_steps() if s[:3] == ["python", "-m", module]]
    return step


def _flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


def _entrypoint_argv() -> list[str]:
    """The first step: the Tune (or training) program."""
    return _entrypoint_steps()[0]


def test_entrypoint_parser_catches_bare_chains():
    with pytest.raises(AssertionError, match="top level"):
        _entrypoint_steps("python -m hybrid_ray.driver.tune --config x.yaml && python -m hybrid_ray.driver.index")
    assert _entrypoint_steps("bash -ec 'python -m a && python -m b --x \"y z\"'") == [
        ["python", "-m", "a"], ["python", "-m", "b", "--x", "y z"]]
    assert _entrypoint_steps("python -m a --b c") == [["python", "-m", "a", "--b", "c"]]


def _parser_of(module: str):
    mod = importlib.import_module(module)
    for name in ("build_parser", "_parser"):
        if hasattr(mod, name):
            return getattr(mod, name)()
    raise AssertionError(f"{module} has no build_parser()/_parser()")


def test_rayjob_entrypoint_steps_exist_and_parse():
    """Every step is `python -m <module>` of a driver with main(argv), and the driver's own argparse
    parser accepts the step's arguments (an unknown flag or a missing required one fails here)."""
    steps = _entrypoint_steps()
    assert steps[0][2] in ("hybrid_ray.driver.tune", "hybrid_ray.train"), steps[0]
    for argv in steps:
        assert argv[:2] == ["python", "-m"], argv
        functions = _top_level_functions(_module_source(argv[2]))
        assert "main" in functions, f"{argv[2]} has no main(argv) function"
        try:
            _parser_of(argv[2]).parse_args(argv[3:])
        except SystemExit as exc:
            raise AssertionError(f"{argv[2]} rejects its arguments in the RayJob entrypoint: {argv[3:]}") from exc


def test_rayjob_entrypoint_config_exists():
    config = _repo_path(_flag(_entrypoint_argv(), "--config"))
    assert config.is_file(), f"config named in the RayJob entrypoint is missing: {config.relative_to(ROOT)}"


def _overrides(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def test_rayjob_storage_path_on_shared_volume():
    overrides = _overrides(_entrypoint_argv())
    storage = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].endswith("storage_path")]
    assert storage and storage[0].startswith(SHARED_MOUNT + "/"), overrides


def _config_fields(path: Path) -> dict[str, dict[str, str]]:
    """{class name: {field: annotation source}} of the (data)classes defined in ``path``."""
    tree = ast.parse(path.read_text())
    return {
        node.name: {
            item.target.id: ast.unparse(item.annotation)
            for item in node.body
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
        }
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }


#: entrypoint module -> (file holding its config schema, root schema class)
CONFIG_SCHEMAS = {
    "hybrid_ray.driver.tune": (ROOT / "hybrid_ray" / "tuning" / "config.py", "TuneSchema"),
    "hybrid_ray.train": (ROOT / "hybrid_ray" / "config.py", "TrainConfig"),
}


def _unknown_override_keys(module: str, overrides: list[str]) -> list[str]:
    path, root_name = CONFIG_SCHEMAS[module]
    classes = _config_fields(path)
    bad = []
    for override in overrides:
        *sections, leaf = override.split("=", 1)[0].rstrip("+").split(".")
        fields = classes[root_name]
        for section in sections:
            kind = fields.get(section, "").split("|")[0].strip()
            if kind not in classes:
                fields = {}
                break
            fields = classes[kind]
        if leaf not in fields:
            bad.append(override)
    return bad


def test_rayjob_overrides_name_config_fields():
    """Every `--set a.b=v` key is a field of the config schema of the program the entrypoint runs
    (hybrid_ray.driver.tune: TuneSchema in hybrid_ray/tuning/config.py; hybrid_ray.train: TrainConfig in
    hybrid_ray/config.py)."""
    argv = _entrypoint_argv()
    assert _overrides(argv)
    assert _unknown_override_keys(argv[2], _overrides(argv)) == []


def test_override_key_check_uses_the_named_programs_schema():
    # training keys are not tune keys, and the other way round
    assert _unknown_override_keys("hybrid_ray.driver.tune", ["optim.lr=1", "run.checkpoint_every=5"]) == [
        "optim.lr=1", "run.checkpoint_every=5"]
    assert _unknown_override_keys("hybrid_ray.train", ["run.checkpoint_every=5", "num_samples=2"]) == [
        "num_samples=2"]
    assert _unknown_override_keys("hybrid_ray.driver.tune", ["run.export_dir=/x", "num_samples=2"]) == []


def _on_tmp(value: str, tmp: Path) -> str:
    return value.replace(SHARED_MOUNT, str(tmp / "shared"))


@pytest.fixture
def tune_spec(tmp_path):
    """The RayJob's tune config + `--set` overrides through hybrid_ray.tuning.config.load_tune_config: the tune
    schema and all its checks, and the training config it names with its train_overrides, with
    /mnt/shared mapped to a temp dir holding the inputs the volume must provide."""
    from hybrid_ray.tuning.config import load_tune_config

    argv = _entrypoint_argv()
    # The RayJob exists to run the alpha search (issue 8): a job that no longer does is a regression.
    assert argv[2] == "hybrid_ray.driver.tune", (
        f"the RayJob's first step should be hybrid_ray.driver.tune, got {argv[2]!r}")
    config = _repo_path(_flag(argv, "--config"))
    text = _on_tmp(config.read_text(), tmp_path)
    for item in yaml.safe_load(text).get("train_overrides", []):  # inputs the PVC must hold
        key, _, value = str(item).partition("=")
        if key in ("data.path", "model.name_or_path", "eval.miracl_path", "eval.pairs_path") and value.startswith(
            str(tmp_path)
        ):
            Path(value).mkdir(parents=True, exist_ok=True)
    copied = tmp_path / config.name
    copied.write_text(text)
    return load_tune_config(copied, [_on_tmp(o, tmp_path) for o in _overrides(argv)], preflight=False)


def test_rayjob_tune_config_loads(tune_spec, tmp_path):
    assert tune_spec.exp_dir.is_relative_to(tmp_path / "shared")
    assert tune_spec.train_base.scaling.use_gpu is True


def test_pipeline_paths_match_rayservice(tune_spec, tmp_path):
    """The encoder the tune step exports and the index the index step writes are exactly what the
    RayService serves; the index step encodes with that encoder the corpus the data step wrote."""
    args = _serve_config()["applications"][0]["args"]
    assert tune_spec.export_dir == Path(_on_tmp(args["model_dir"], tmp_path))
    index = _step("hybrid_ray.driver.index")
    assert _flag(index, "--model") == args["model_dir"]
    assert _flag(index, "--out") == args["index_dir"]
    convert = _step("hybrid_ray.driver.data")
    modules = [s[2] for s in _entrypoint_steps()]
    assert modules.index("hybrid_ray.driver.tune") < modules.index("hybrid_ray.driver.data") < modules.index(
        "hybrid_ray.driver.index"), modules
    assert _flag(index, "--corpus") == _flag(convert, "--out") + "/corpus.parquet"
    # the data step reads the MIRACL set the trials validate on
    assert _on_tmp(_flag(convert, "--input"), tmp_path) == tune_spec.train_base.eval.miracl_path
    # the shard count fits the RayService's GPUs (retriever replicas + one deployment per shard)
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in _cluster_spec(_load(RAYSERVICE))["workerGroupSpecs"])
    shards = int(_flag(index, "--shards"))
    need = args["retriever_replicas"] * args["retriever_num_gpus"] + shards * args["num_gpus_per_shard"]
    assert need <= gpus, (need, gpus)


def test_data_step_output_is_an_index_corpus(tmp_path):
    """Run the job's data step for real on a small MIRACL-format set (paths mapped to tmp) and read
    the corpus the index step names with the index's own reader (no Ray, no model)."""
    from hybrid_ray.data.miracl import write_miracl
    from hybrid_ray.driver import data as data_driver
    from hybrid_ray.index import read_corpus

    convert = _step("hybrid_ray.driver.data")
    src = Path(_on_tmp(_flag(convert, "--input"), tmp_path))
    for lang in ("de", "sw"):
        write_miracl(src, lang, _flag(convert, "--split"), {"q1": f"frage {lang}"}, {"q1": {"d1": 1, "d2": 0}},
                     [{"docid": "d1", "title": "T", "text": f"eins {lang}"}, {"docid": "d2", "text": "zwei"}])
    assert data_driver.main([_on_tmp(a, tmp_path) for a in convert[3:]]) == 0
    corpus = read_corpus(_on_tmp(_flag(_step("hybrid_ray.driver.index"), "--corpus"), tmp_path))
    assert corpus.num_rows == 4
    assert set(corpus.column("lang").to_pylist()) == {"de", "sw"}
    assert sorted(corpus.column("docid").to_pylist()) == ["d1/de", "d1/sw", "d2/de", "d2/sw"]


def _serve_config() -> dict:
    return yaml.safe_load(_load(RAYSERVICE)["spec"]["serveConfigV2"])


def _serve_schema_errors(config: dict) -> list[str]:
    """Validate a serveConfigV2 with Ray Serve's own ServeDeploySchema (what `serve deploy` and the
    RayService's dashboard call check), plus unknown keys: Ray's pydantic models ignore extra fields,
    so a typo such as `aplications` or `route_prefx` would pass silently there."""
    import pydantic
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except (pydantic.ValidationError, ValueError, TypeError) as exc:
        return [str(exc).splitlines()[0]]
    errors = [f"unknown key {k!r}" for k in config if k not in ServeDeploySchema.model_fields]
    for app in config.get("applications", []):
        errors += [f"unknown application key {k!r}" for k in app if k not in ServeApplicationSchema.model_fields]
    return errors


def test_serve_config_validates_against_ray_serve_schema():
    config = _serve_config()
    assert _serve_schema_errors(config) == []
    (app,) = config["applications"]
    assert app["import_path"] == "hybrid_ray.serving.app:build_app"
    assert app["route_prefix"] == "/"
    assert config["http_options"]["port"] == 8000
    for key in ("model_dir", "index_dir"):
        assert app["args"][key].startswith(SHARED_MOUNT + "/"), key


@pytest.mark.parametrize("name,mutate", [
    ("port as a word", lambda c: c["http_options"].__setitem__("port", "eighty")),
    ("bad proxy_location", lambda c: c.__setitem__("proxy_location", "Everywhere")),
    ("args as a list", lambda c: c["applications"][0].__setitem__("args", ["index_dir"])),
    ("duplicate application", lambda c: c["applications"].append(copy.deepcopy(c["applications"][0]))),
    ("top-level typo", lambda c: c.__setitem__("aplications", [])),
    ("application key typo", lambda c: c["applications"][0].__setitem__("route_prefx", "/")),
])
def test_mutated_serve_config_is_rejected(name, mutate):
    config = _serve_config()
    mutate(config)
    assert _serve_schema_errors(config), f"mutation not caught: {name}"


def test_serve_import_path_exists():
    module, attr = _serve_config()["applications"][0]["import_path"].split(":")
    functions = _top_level_functions(_module_source(module))
    assert attr in functions, f"{module} has no top-level function {attr}"
    args = functions[attr].args
    assert len(args.posonlyargs) + len(args.args) >= 1, f"{attr}(args) must take the Serve args dict"


# --------------------------------------------------------------------------- policy


def _containers(template: dict) -> list[dict]:
    return template["spec"].get("initContainers", []) + template["spec"]["containers"]


@pytest.mark.parametrize("doc", _ray_docs(), ids=lambda d: d["kind"])
def test_non_root_security_contexts(doc):
    for name, template in _pod_templates(doc).items():
        pod_sc = template["spec"]["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 1000, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert template["spec"].get("automountServiceAccountToken") is False, name
        writable = {m["mountPath"] for c in _containers(template) for m in c.get("volumeMounts", [])}
        for container in _containers(template):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000, (name, container["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert "add" not in sc["capabilities"], (name, container["name"])
            assert sc.get("privileged") is not True, (name, container["name"])
            if sc.get("readOnlyRootFilesystem"):
                assert "/tmp" in writable, f"{name}: read-only root needs a writable /tmp"
            assert container["resources"]["requests"] and container["resources"]["limits"], name


@pytest.mark.parametrize("doc", _ray_docs(), ids=lambda d: d["kind"])
def test_gpu_workers(doc):
    groups = _cluster_spec(doc)["workerGroupSpecs"]
    gpu_groups = [
        g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups, "no GPU worker group"
    for group in gpu_groups:
        spec = group["template"]["spec"]
        resources = spec["containers"][0]["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        # extended resources: request must equal limit when both are given
        assert (
            resources["requests"].get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"])
            == resources["limits"]["nvidia.com/gpu"]
        )
        assert any(
            t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in spec["tolerations"]
        ), group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    head = _cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head, "the head should not hold a GPU"


def _volume_claims(template: dict) -> dict[str, dict]:
    return {
        v["name"]: v["persistentVolumeClaim"]
        for v in template["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }


def test_shared_pvc_wiring():
    pvc = _load(K8S / "pvc.yaml")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claim = pvc["metadata"]["name"]
    for doc, read_only in ((_load(RAYJOB), False), (_load(RAYSERVICE), True)):
        cluster = _cluster_spec(doc)
        templates = [cluster["headGroupSpec"]["template"]] + [
            g["template"] for g in cluster["workerGroupSpecs"]
        ]
        for template in templates:
            claims = _volume_claims(template)
            (vol_name,) = [n for n, c in claims.items() if c["claimName"] == claim]
            assert bool(claims[vol_name].get("readOnly")) is read_only, doc["kind"]
            mounts = [m for m in template["spec"]["containers"][0]["volumeMounts"] if m["name"] == vol_name]
            assert mounts and mounts[0]["mountPath"] == SHARED_MOUNT
            assert bool(mounts[0].get("readOnly")) is read_only, doc["kind"]


def test_rayjob_lifecycle_fields():
    spec = _load(RAYJOB)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 0
    assert spec["activeDeadlineSeconds"] > 0


def _probe_urls(probe: dict) -> list[str]:
    """The URLs a probe calls, in order (httpGet, or the wget calls of an exec probe)."""
    if "httpGet" in probe:
        return [f"http://localhost:{probe['httpGet']['port']}{probe['httpGet']['path']}"]
    return re.findall(r"http://localhost:\d+\S*", " ".join(probe["exec"]["command"]))


def test_rayservice_probes():
    """Workers: ready = raylet + Serve proxy + the app's /ready; alive = raylet + the app's /health,
    after a startupProbe on /health that allows a slow index load. All on the Serve port of serveConfigV2."""
    cluster = _cluster_spec(_load(RAYSERVICE))
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["readinessProbe"] and head["livenessProbe"]
    serve = f"http://localhost:{_serve_config()['http_options']['port']}"
    raylet = "http://localhost:52365/api/local_raylet_healthz"
    for group in cluster["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert _probe_urls(worker["readinessProbe"]) == [raylet, f"{serve}/-/healthz", f"{serve}/ready"]
        assert _probe_urls(worker["livenessProbe"]) == [raylet, f"{serve}/health"]
        assert _probe_urls(worker["startupProbe"]) == [f"{serve}/health"]
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = worker[kind]
            # every wget's own timeout fits in the probe's timeout (else the kubelet kills it first)
            wget_t = sum(int(t) for t in re.findall(r"-T (\d+)", " ".join(probe.get("exec", {}).get("command", []))))
            assert wget_t <= probe["timeoutSeconds"], (kind, wget_t, probe["timeoutSeconds"])
        ready, alive, start = worker["readinessProbe"], worker["livenessProbe"], worker["startupProbe"]
        assert ready["periodSeconds"] * ready["failureThreshold"] <= 15, "a lost shard must leave traffic fast"
        assert alive["periodSeconds"] * alive["failureThreshold"] >= 30, "one slow /health must not restart"
        assert start["periodSeconds"] * start["failureThreshold"] >= 600, "index load takes minutes"


def test_rayjob_probes():
    """Head: readiness + liveness on the GCS health route; workers: raylet liveness. All are routes
    Ray's token auth leaves public, so the kubelet needs no token."""
    cluster = _cluster_spec(_load(RAYJOB))
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    public = {"/api/gcs_healthz", "/api/local_raylet_healthz", "/api/healthz"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert head[probe]["httpGet"]["path"] in public, probe
        assert head[probe]["httpGet"]["port"] == 8265, probe
    assert head["livenessProbe"]["failureThreshold"] * head["livenessProbe"]["periodSeconds"] >= 300, (
        "a head restart kills the job: liveness must tolerate minutes of a busy GCS")
    for group in cluster["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert worker["livenessProbe"]["httpGet"]["path"] in public, group["groupName"]


def test_probed_routes_exist_in_serve_app():
    """The app routes the readiness probe calls are defined in hybrid_ray/serving/http.py."""
    source = _module_source("hybrid_ray.serving.http").read_text()
    for route in ("/health", "/ready"):
        assert re.search(rf"\.get\(\s*[\"']{re.escape(route)}[\"']", source), route


def test_serve_args_are_app_args_fields():
    """build_app validates args with AppArgs(extra='forbid'): every key must be a field."""
    tree = ast.parse(_module_source("hybrid_ray.serving.args").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AppArgs"]
    fields = {
        i.target.id for i in cls.body if isinstance(i, ast.AnnAssign) and isinstance(i.target, ast.Name)
    }
    args = _serve_config()["applications"][0]["args"]
    assert set(args) <= fields, set(args) - fields


@pytest.mark.parametrize("doc", _ray_docs(), ids=lambda d: d["kind"])
def test_token_auth_on(doc):
    cluster = _cluster_spec(doc)
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["authOptions"].get("secretName")
    version = tuple(int(x) for x in cluster["rayVersion"].split("."))
    assert version >= (2, 52, 0), "Ray token auth needs Ray >= 2.52"
    for name, template in _pod_templates(doc).items():
        for container in _containers(template):
            env = {e["name"]: e for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value", "token") == "token", name
            assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in env, "loopback-only setting must not reach k8s"


def test_images_consistent():
    images = {
        c["image"]
        for doc in _ray_docs()
        for template in _pod_templates(doc).values()
        for c in _containers(template)
    }
    assert len(images) == 1, images


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    logical, pending = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    out = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def _dockerignore_allows(rel: str) -> bool:
    """Evaluate .dockerignore for a path (last matching pattern wins, '!' re-includes)."""
    import fnmatch

    allowed = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern == "**" or any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            allowed = negate
    return allowed


def test_dockerfile_base_user_workdir():
    instructions = _dockerfile_instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in instructions if i == "ARG" and "=" in a}
    (base,) = [a for i, a in instructions if i == "FROM"]
    base = args.get(base.strip("${}"), base)
    assert base.startswith("rayproject/ray:2.60.0-") and "gpu" in base, base
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1].split(":")[0] == "1000", "the image must end as the non-root uid 1000"
    assert [a for i, a in instructions if i == "WORKDIR"][-1] == "/app"


def test_dockerfile_copies_existing_files_only():
    copies = [a for i, a in _dockerfile_instructions() if i in ("COPY", "ADD")]
    assert copies
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        sources = parts[:-1]
        assert sources, args
        for src in sources:
            assert "://" not in src, f"only the project's own files: {src}"
            assert (ROOT / src).exists(), f"COPY source missing: {src}"
            assert _dockerignore_allows(src), f".dockerignore excludes a COPY source: {src}"
    assert not _dockerignore_allows(".venv") and not _dockerignore_allows(".git")


def test_dockerfile_installs_with_constraints_and_one_faiss():
    runs = " ".join(a for i, a in _dockerfile_instructions() if i == "RUN")
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert installs and all("-c constraints.txt" in cmd for cmd in installs), installs
    # faiss-gpu-cu12 and faiss-cpu ship the same `faiss` module: cpu out before gpu in.
    assert runs.index("pip uninstall -y faiss-cpu") < runs.index("faiss-gpu-cu12")
    assert "faiss-cpu" not in runs.replace("pip uninstall -y faiss-cpu", "")
    assert "sudo" not in runs
