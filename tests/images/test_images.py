"""The built images, run as the manifests run them.

A session fixture builds both images with ``.ci/images build`` (buildah on debootstrap stand-ins
for the registry's bases; cached, so a second build takes seconds) unless ``.ci/run`` has just
done it (``IMAGES_BUILT=1``), and reads their ids from ``.cache/images.env``. Each test runs an
image as a :class:`~tests.images.pod.Pod`: read-only root, the pod's user, its volumes (emptyDirs
as fresh directories, ConfigMaps laid out as the kubelet lays them out, with ``..data``), and the
container's args and environment taken from the rendered kustomization, the Secret's values
standing in. A missing buildah, podman or debootstrap fails these tests; it never skips them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from runner.analyzers.opencode import OpenCodeAnalyzer
from tests.conftest import ROOT, RedisServer, free_port
from tests.images.pod import Pod, Volume, buildah, require, wait_for
from tests.integration.test_manifests import (
    EXAMPLES_OPENCODE,
    K8S,
    env_of,
    kustomize,
    only,
    opencode_container,
    pod_spec,
    runner_container,
)
from tests.integration.test_opencode import MODEL, PROVIDER, request_for, settings_for
from tests.support.stub_llm import Mode, StubLLM

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

IMAGES_ENV = ROOT / ".cache" / "images.env"
PASSWORD = "image-test-password"
#: What the Secret `autonomous-runner` holds, for the pods of these tests.
SECRETS = {"opencode-server-password": PASSWORD, "openrouter-api-key": "sk-or-test-key"}
#: Kubernetes sets this in every container; the runner takes it to mean "inside Kubernetes".
IN_KUBERNETES = {"KUBERNETES_SERVICE_HOST": "kubernetes.default.svc", "KUBERNETES_SERVICE_PORT": "443"}


@dataclass(frozen=True)
class Images:
    runner: str
    opencode: str


@pytest.fixture(scope="session")
def images() -> Images:
    for tool in ("buildah", "podman", "debootstrap", "unshare"):
        require(tool)
    if os.environ.get("IMAGES_BUILT") != "1" or not IMAGES_ENV.exists():
        proc = subprocess.run(
            ["bash", str(ROOT / ".ci" / "images"), "build"],
            capture_output=True,
            text=True,
            timeout=1200,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            pytest.fail(f".ci/images build failed:\n{proc.stderr[-4000:]}", pytrace=False)
    ids = dict(line.split("=", 1) for line in IMAGES_ENV.read_text().split())
    for image in ids.values():
        buildah("inspect", "--type", "image", image)  # the built image is still there
    return Images(runner=ids["RUNNER_IMAGE"], opencode=ids["OPENCODE_IMAGE"])


# --- pods from the manifests -------------------------------------------------------------------


def empty_dir(tmp_path: Path, name: str, fs_group: int | None) -> Path:
    """An emptyDir as the kubelet makes it: world-writable, and the pod's fsGroup's."""
    path = tmp_path / "volumes" / name
    path.mkdir(parents=True)
    path.chmod(0o777)
    if fs_group is not None:
        os.chown(path, 0, fs_group)
        path.chmod(0o2777)
    return path


def config_map_dir(tmp_path: Path, name: str, data: dict[str, str]) -> Path:
    """A ConfigMap volume as the kubelet lays it out: the files in a timestamped directory,
    ``..data`` linking to it, and one link per key."""
    path = tmp_path / "volumes" / name
    stamp = path / "..2026_11_23_14_05_00.000000001"
    stamp.mkdir(parents=True)
    for key, text in data.items():
        (stamp / key).write_text(text, encoding="utf-8")
        (path / key).symlink_to(f"..data/{key}")
    (path / "..data").symlink_to(stamp.name)
    return path


def container_pod(
    image: str,
    workload: dict[str, Any],
    container: dict[str, Any],
    docs: dict[tuple[str, str], dict[str, Any]],
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    config_maps: dict[str, dict[str, str]] | None = None,
    volumes: dict[str, Path] | None = None,
    secrets: dict[str, str] | None = None,
) -> Pod:
    """The pod a kubelet would run for ``container`` of ``workload``: its args and command, its
    literal env, the Secret's keys, its volumes, the pod's runAsUser/runAsGroup, a read-only root
    if its securityContext says so. ``config_maps`` replaces a ConfigMap's data by name prefix;
    ``volumes`` shares volume directories between the containers of one pod."""
    spec = pod_spec(workload)
    context = spec["securityContext"]
    environment = dict(IN_KUBERNETES)
    for name, entry in env_of(container).items():
        if "value" in entry:
            environment[name] = entry["value"]
            continue
        ref = entry["valueFrom"].get("secretKeyRef")
        if ref:
            assert ref["name"] == "autonomous-runner", name
            values = SECRETS if secrets is None else secrets
            if ref["key"] in values:
                environment[name] = values[ref["key"]]
            else:
                assert ref.get("optional"), f"{name}: the pod would not start without {ref['key']}"
    environment.update(env or {})
    shared = volumes if volumes is not None else {}
    by_name = {v["name"]: v for v in spec.get("volumes", [])}
    mounted = []
    for mount in container.get("volumeMounts", []):
        name = mount["name"]
        if name not in shared:
            volume = by_name[name]
            if "emptyDir" in volume:
                shared[name] = empty_dir(tmp_path, name, context.get("fsGroup"))
            else:
                cm_name = volume["configMap"]["name"]
                data = docs[("ConfigMap", cm_name)]["data"]
                for prefix, replaced in (config_maps or {}).items():
                    if cm_name.startswith(prefix):
                        data = replaced
                shared[name] = config_map_dir(tmp_path, name, data)
        source = shared[name] / mount["subPath"] if "subPath" in mount else shared[name]
        mounted.append(Volume(mount["mountPath"], source, read_only=bool(mount.get("readOnly"))))
    return Pod(
        image,
        command=container.get("command"),
        args=args if args is not None else container.get("args"),
        env=environment,
        volumes=mounted,
        user=(context["runAsUser"], context["runAsGroup"]),
        read_only_root=container["securityContext"]["readOnlyRootFilesystem"],
    )


def with_option(args: list[str], option: str, value: str) -> list[str]:
    """``args`` with ``option``'s value replaced (or the option added)."""
    out = list(args)
    if option in out:
        out[out.index(option) + 1] = value
    else:
        out += [option, value]
    return out


def scheduled_now() -> dict[str, str]:
    """The downward API's values for a CronJob pod of this minute (fixed for the whole test)."""
    minute = int(datetime.now(UTC).timestamp() // 60)
    return {
        "INSTANCE_ID": f"autonomous-runner-{minute}-abcde",
        "RUNNER_JOB_NAME": f"autonomous-runner-{minute}",
        "RUNNER_SCHEDULED_AT": "",
    }


def cycle_json(pod: Pod) -> dict[str, Any]:
    lines = [line for line in pod.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON on stdout:\n{pod.logs()[-3000:]}"
    doc: dict[str, Any] = json.loads(lines[-1])
    return doc


# --- the runner's image ------------------------------------------------------------------------


def test_the_runner_image_runs_cycles_on_its_embedded_defaults(images: Images, tmp_path: Path) -> None:
    """`docker run IMAGE` with nothing set: the embedded Redis, kept in /tmp, as uid 10001."""
    tmp = empty_dir(tmp_path, "tmp", None)
    minute = datetime.now(UTC).replace(second=0, microsecond=0).isoformat()
    runs = []
    for _ in range(2):
        pod = Pod(images.runner, env={"RUNNER_SCHEDULED_AT": minute}, volumes=[Volume("/tmp", tmp)])
        assert pod.argv == ["runner", "cycle"]
        assert pod.uid_gid == (10001, 10001)
        assert pod.run(timeout=120) == 0, pod.logs()
        runs.append(cycle_json(pod))
        assert "using embedded Redis (/tmp/autonomous-runner/runner.rdb)" in pod.stderr
        assert "Traceback" not in pod.stderr
    first, second = runs
    assert first["status"] == "completed"
    assert len(first["signals"]) == 20
    # The same minute again: the state outlived the first process, nothing is published twice.
    assert second["status"] == "completed"
    assert second["signals"] == []
    state = tmp / "autonomous-runner"
    assert (state / "runner.rdb").stat().st_uid == 10001
    status = Pod(images.runner, args=["status", "--json"], volumes=[Volume("/tmp", tmp)])
    assert status.run(timeout=60) == 0, status.logs()
    assert json.loads(status.stdout)["last_cycle"]["cycle_id"] == second["cycle_id"]


def test_the_runner_image_without_a_writable_tmp_says_what_it_needs(images: Images) -> None:
    """The read-only root is the manifests' promise: the image writes nowhere but /tmp."""
    pod = Pod(images.runner, volumes=[])
    assert pod.run(timeout=120) == 2, pod.logs()
    assert "Traceback" not in pod.stderr
    (line,) = [line for line in pod.stderr.splitlines() if "RUNNER_STATE_DIR" in line]
    assert "'/tmp/autonomous-runner' (Read-only file system)" in line


def test_the_cronjob_pod_publishes_through_redis_with_the_embedded_one_off(
    images: Images, tmp_path: Path, redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    docs = _rendered("base")
    cron = only(docs, "CronJob")
    container = runner_container(cron)
    offline = {
        "RUNNER_ANALYZER__BACKEND": "builtin",  # as k8s/README.md's development setup
        "RUNNER_MARKET__SOURCE": "synthetic",
        "PUSHGATEWAY_URL": f"http://127.0.0.1:{free_port()}",  # down: a warning, not a failure
    }
    pod = container_pod(
        images.runner,
        cron,
        container,
        docs,
        tmp_path,
        env={**scheduled_now(), **offline},
        secrets={**SECRETS, "redis-url": redis_server.url},
    )
    assert pod.read_only_root
    assert pod.uid_gid == (10001, 10001)
    assert pod.run(timeout=120) == 0, pod.logs()
    doc = cycle_json(pod)
    assert doc["status"] == "completed"
    assert doc["instance_id"].startswith("autonomous-runner-")
    assert real_redis.xlen("signals:raw") == 20
    assert "embedded Redis" not in pod.stderr
    # Without the Secret's redis-url (optional in the manifest), inside Kubernetes: exit 2, one line.
    missing = container_pod(images.runner, cron, container, docs, tmp_path / "2", env=offline)
    assert missing.run(timeout=120) == 2, missing.logs()
    assert "REDIS_URL" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_runner_serve_answers_its_probes(images: Images, tmp_path: Path, redis_server: RedisServer) -> None:
    # The image's defaults: the embedded Redis, /health/live.
    port = free_port()
    tmp = empty_dir(tmp_path, "tmp", None)
    with Pod(
        images.runner,
        args=["serve", "--host", "127.0.0.1", "--port", str(port)],
        volumes=[Volume("/tmp", tmp)],
    ) as pod:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: httpx.get(f"{url}/health/live", timeout=2).status_code == 200, 60, pod, "/health/live"
        )
        assert pod.stop(grace=35) == 0, f"SIGTERM ends `runner serve` cleanly:\n{pod.logs()[-2000:]}"
    # k8s/service's Deployment, with its probes, against a real Redis.
    docs = _rendered("service")
    deployment = only(docs, "Deployment")
    container = runner_container(deployment)
    port = free_port()
    args = with_option(with_option(container["args"], "--port", str(port)), "--host", "127.0.0.1")
    served = container_pod(
        images.runner,
        deployment,
        container,
        docs,
        tmp_path / "service",
        args=args,
        env={"INSTANCE_ID": "autonomous-runner-7d9f-abcde", "RUNNER_ANALYZER__BACKEND": "builtin"},
        secrets={**SECRETS, "redis-url": redis_server.url},
    )
    with served:
        for probe in ("livenessProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            wait_for(
                lambda path=path: httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200,
                60,
                served,
                f"{probe} {path}",
            )


# --- the OpenCode server's image ---------------------------------------------------------------


def _rendered(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in kustomize(K8S / name)}


@dataclass
class OpenCodePod:
    pod: Pod
    port: int
    stub: StubLLM
    deployment: dict[str, Any]
    volumes: dict[str, Path]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def stub_config(stub: StubLLM) -> str:
    """examples/opencode/opencode.json with the stub model added as a provider."""
    config = json.loads((EXAMPLES_OPENCODE / "opencode.json").read_text())
    config["enabled_providers"] = [*config["enabled_providers"], PROVIDER]
    config["provider"][PROVIDER] = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "Stub LLM",
        "options": {"baseURL": stub.url + "/v1", "apiKey": "stub-key"},
        "models": {
            MODEL: {"name": "Stub model", "tool_call": True, "limit": {"context": 128000, "output": 4096}}
        },
    }
    return json.dumps(config, indent=2)


def start_opencode_pod(images: Images, tmp_path: Path, stub: StubLLM) -> OpenCodePod:
    """k8s/opencode/server's pod: the init container fills the agents' emptyDir from the
    ConfigMap, then the server runs with the manifest's mounts and env, on a free port of this
    machine's loopback; returned once it says it listens."""
    docs = _rendered("opencode/server")
    deployment = docs[("Deployment", "opencode")]
    spec = pod_spec(deployment)
    shared: dict[str, Path] = {}
    configs = {"opencode-config-": {"opencode.json": stub_config(stub)}}
    (init,) = spec["initContainers"]
    agents = container_pod(
        images.opencode, deployment, init, docs, tmp_path, volumes=shared, config_maps=configs
    )
    assert agents.run(timeout=120) == 0, agents.logs()
    container = opencode_container(deployment)
    port = free_port()
    args = with_option(with_option(container["args"], "--port", str(port)), "--hostname", "127.0.0.1")
    pod = container_pod(
        images.opencode, deployment, container, docs, tmp_path, args=args, volumes=shared, config_maps=configs
    )
    pod.start()
    try:
        # A request sent before "server listening" can hang: wait for the line first.
        wait_for(lambda: "server listening" in pod.logs(), 120, pod, "opencode serve listening")

        # Its first authorised request sets the server's instance up, which a loaded machine can
        # take many seconds over: wait for one answer (as the readiness probe does) before the
        # tests ask theirs.
        def answers() -> bool:
            doc = httpx.get(f"http://127.0.0.1:{port}/doc", auth=("opencode", PASSWORD), timeout=60)
            return doc.status_code == 200

        wait_for(answers, 180, pod, "opencode serve answering")
    except BaseException:
        pod.stop()
        raise
    return OpenCodePod(pod, port, stub, deployment, shared)


@pytest.fixture(scope="module")
def opencode_pod(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenCodePod]:
    stub = StubLLM(models=[MODEL]).start()
    try:
        server = start_opencode_pod(images, tmp_path_factory.mktemp("opencode-pod"), stub)
        yield server
        server.pod.stop(grace=pod_spec(server.deployment)["terminationGracePeriodSeconds"])
    finally:
        stub.stop()


def test_the_opencode_server_wants_its_password(opencode_pod: OpenCodePod) -> None:
    url = opencode_pod.url
    assert httpx.get(f"{url}/doc", timeout=60).status_code == 401
    assert httpx.get(f"{url}/doc", auth=("opencode", "wrong"), timeout=60).status_code == 401
    doc = httpx.get(f"{url}/doc", auth=("opencode", PASSWORD), timeout=60)
    assert doc.status_code == 200
    assert "openapi" in doc.json()


def test_the_opencode_server_has_every_example_agent(opencode_pod: OpenCodePod) -> None:
    listed = httpx.get(f"{opencode_pod.url}/agent", auth=("opencode", PASSWORD), timeout=60).json()
    names = {agent["name"] for agent in listed}
    expected = {path.stem for path in (EXAMPLES_OPENCODE / "agent").glob("*.md")}
    assert "signal-generator" in expected
    assert expected <= names
    assert not [n for n in names if n.startswith("..")], "the ConfigMap's ..data links became agents"
    (generator,) = [a for a in listed if a["name"] == "signal-generator"]
    assert {"permission": "*", "pattern": "*", "action": "deny"} in generator["permission"]


def test_the_opencode_server_serves_a_prompt_to_the_runners_analyzer(opencode_pod: OpenCodePod) -> None:
    opencode_pod.stub.reset(Mode(action="SELL", confidence=0.61, price=3120.5))

    async def analyze() -> Any:
        analyzer = OpenCodeAnalyzer(settings_for(opencode_pod.url, opencode_password=PASSWORD))
        try:
            return await analyzer.analyze(await request_for("ETH/USD"))
        finally:
            await analyzer.aclose()

    analysis = asyncio.run(analyze())

    assert (analysis.symbol, analysis.action, analysis.confidence) == ("ETH/USD", "SELL", 0.61)
    assert analysis.model == f"{PROVIDER}/{MODEL}"
    [sent] = opencode_pod.stub.chat_requests()
    assert sent.tools == ["StructuredOutput"]


def test_the_opencode_probe_command_checks_the_password(images: Images, opencode_pod: OpenCodePod) -> None:
    container = opencode_container(opencode_pod.deployment)
    command = [*container["readinessProbe"]["exec"]["command"][:-1], str(opencode_pod.port)]
    for password, code in ((PASSWORD, 0), ("wrong", 1)):
        probe = Pod(images.opencode, command=command, env={"OPENCODE_SERVER_PASSWORD": password})
        assert probe.run(timeout=60) == code, probe.logs()
    assert "HTTP 401" in probe.stderr


def test_the_opencode_server_installs_nothing_and_writes_only_to_its_volumes(
    opencode_pod: OpenCodePod,
) -> None:
    logs = opencode_pod.pod.logs()
    assert "server listening" in logs
    assert "dependency install" not in logs, "it tried to npm-install its plugin package"
    assert "EROFS" not in logs, "it tried to write to the read-only root"
    assert "level=ERROR" not in logs, logs[-3000:]
    # Its sessions database is where the image's XDG_DATA_HOME points: on the data emptyDir.
    assert (opencode_pod.volumes["data"] / "data" / "opencode" / "opencode.db").stat().st_uid == 10002
    assert sorted(p.name for p in opencode_pod.volumes["agents"].iterdir()) == sorted(
        p.name for p in (EXAMPLES_OPENCODE / "agent").glob("*.md")
    ), "the init container copied every agent, and nothing else"


def test_a_cycle_in_the_runner_pod_goes_through_the_opencode_pod(
    images: Images,
    opencode_pod: OpenCodePod,
    tmp_path: Path,
    redis_server: RedisServer,
    real_redis: redis.Redis,
) -> None:
    """k8s/opencode end to end: its CronJob's pod, pointed at the server's pod."""
    opencode_pod.stub.reset()
    docs = _rendered("opencode")
    cron = only(docs, "CronJob")
    container = copy.deepcopy(runner_container(cron))
    env = env_of(container)
    assert env["RUNNER_ANALYZER__BACKEND"]["value"] == "opencode"
    pod = container_pod(
        images.runner,
        cron,
        container,
        docs,
        tmp_path,
        env={
            **scheduled_now(),
            "OPENCODE_URL": opencode_pod.url,  # the Service, on this machine
            "RUNNER_ANALYZER__MODEL": f"{PROVIDER}/{MODEL}",  # the stub instead of OpenRouter
            "RUNNER_MARKET__SOURCE": "synthetic",
            "PUSHGATEWAY_URL": f"http://127.0.0.1:{free_port()}",
        },
        args=[*container["args"], "--symbols", "ETH/USD,BTC/USD"],
        secrets={**SECRETS, "redis-url": redis_server.url},
    )
    began = time.monotonic()
    assert pod.run(timeout=120) == 0, pod.logs()
    doc = cycle_json(pod)
    assert doc["status"] == "completed", (time.monotonic() - began, pod.logs()[-3000:])
    published = [json.loads(fields["signal"]) for _, fields in real_redis.xrange("signals:raw")]
    assert sorted(s["symbol"] for s in published) == ["BTC/USD", "ETH/USD"]
    assert {s["analyzer"] for s in published} == {"opencode"}
    assert {s["model"] for s in published} == {f"{PROVIDER}/{MODEL}"}
    assert len(opencode_pod.stub.chat_requests()) == 2
    assert PASSWORD not in pod.logs()


def test_sigterm_stops_the_opencode_server_within_its_grace_period(images: Images, tmp_path: Path) -> None:
    """tini is PID 1: the kubelet's SIGTERM reaches OpenCode, which would ignore it as PID 1."""
    with StubLLM(models=[MODEL]) as stub:
        server = start_opencode_pod(images, tmp_path, stub)
        code = server.pod.stop(grace=pod_spec(server.deployment)["terminationGracePeriodSeconds"])
    assert code in (0, 143), f"not stopped by SIGTERM within the grace period (exit {code})"
