"""Run a built image the way a Kubernetes pod runs it, on a machine without an OCI runtime.

``buildah run --isolation chroot`` runs a command in an image here, but it cannot make the root
filesystem read-only (buildah 1.28 panics cleaning up after a command whose root was remounted
read-only), and read-only is what the pods ask for. So :class:`Pod` does what a runtime does,
with buildah's storage: ``buildah from`` and ``buildah mount`` give the image's root filesystem
with a writable layer on top (where, as runc does, the mount points are made); then, in a mount
and PID namespace of their own (``unshare``), the root is bound read-only onto itself, /proc,
/dev and /sys are mounted, each volume is bound at its path, and the image's ENTRYPOINT and CMD
(or the pod's command and args) run chrooted with the image's environment, as the image's USER
(or the pod's runAsUser/runAsGroup) in the image's WORKDIR. The network is the host's: a server in
the pod listens on this machine's loopback, and reaches servers there.

The entry point is PID 1 of its namespace, as in a container, and gets the signals a kubelet
sends; when the ``unshare`` process dies, everything in the namespace dies with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: The step that runs inside the new namespaces, before the chroot: the host's Python.
_ENTER = Path(__file__).with_name("enter.py")


def require(tool: str) -> str:
    """The path of a host tool the images need; a missing one fails the test, never skips it."""
    path = shutil.which(tool)
    if not path:
        pytest.fail(
            f"{tool} is not installed: bash .ci/run installs it (apt-get install {tool})", pytrace=False
        )
    return path


def buildah(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        [require("buildah"), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def image_config(image: str) -> dict[str, Any]:
    """The OCI config of an image (User, Env, Entrypoint, Cmd, WorkingDir, Volumes, ...)."""
    inspected = json.loads(buildah("inspect", "--type", "image", image))
    config: dict[str, Any] = inspected["OCIv1"].get("config", {})
    return config


@dataclass
class Volume:
    """A writable volume (an emptyDir) or a read-only one (a ConfigMap) bound at ``path``."""

    path: str
    source: Path
    read_only: bool = False


@dataclass
class Pod:
    """One container of a pod: the image, what the pod spec overrides, and its volumes."""

    image: str
    command: list[str] | None = None  # replaces ENTRYPOINT (Kubernetes' `command`)
    args: list[str] | None = None  # replaces CMD (Kubernetes' `args`)
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[Volume] = field(default_factory=list)
    user: tuple[int, int] | None = None  # runAsUser, runAsGroup; None: the image's USER
    read_only_root: bool = True

    def __post_init__(self) -> None:
        self.config = image_config(self.image)
        self.container: str | None = None
        self.root: Path | None = None
        self.process: subprocess.Popen[str] | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="pod-"))

    # --- what runs -------------------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        entrypoint = self.command if self.command is not None else list(self.config.get("Entrypoint") or [])
        cmd = self.args if self.args is not None else ([] if self.command else self.config.get("Cmd") or [])
        return [*entrypoint, *cmd]

    @property
    def environment(self) -> dict[str, str]:
        env = dict(item.split("=", 1) for item in self.config.get("Env") or [])
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env["HOSTNAME"] = "pod"
        env.update(self.env)
        return env

    @property
    def uid_gid(self) -> tuple[int, int]:
        if self.user is not None:
            return self.user
        user, _, group = str(self.config.get("User") or "0").partition(":")
        if not user.isdigit() or (group and not group.isdigit()):
            raise AssertionError(
                f"USER {self.config.get('User')!r} is not numeric: runAsNonRoot cannot check it"
            )
        return int(user), int(group or 0)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Pod:
        self.container = buildah("from", "--pull=never", self.image)
        self.root = Path(buildah("mount", self.container))
        uid, gid = self.uid_gid
        spec = {
            "root": str(self.root),
            "read_only": self.read_only_root,
            "volumes": [
                {"path": v.path, "source": str(v.source), "read_only": v.read_only} for v in self.volumes
            ],
            "files": ["/etc/resolv.conf", "/etc/hosts"],
            "workdir": self.config.get("WorkingDir") or "/",
            "uid": uid,
            "gid": gid,
            "argv": self.argv,
            "env": self.environment,
        }
        with (self.scratch / "stdout").open("w") as out, (self.scratch / "stderr").open("w") as err:
            self.process = subprocess.Popen(
                [
                    require("unshare"),
                    "--mount",
                    "--propagation",
                    "private",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    sys.executable,
                    str(_ENTER),
                    json.dumps(spec),
                ],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        return self

    @property
    def stdout(self) -> str:
        return (self.scratch / "stdout").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.scratch / "stderr").read_text(errors="replace")

    def logs(self) -> str:
        """What the pod printed: stderr, then stdout."""
        return self.stderr + self.stdout

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def entry_pid(self) -> int | None:
        """The host PID of the pod's PID 1 (the only child of ``unshare``)."""
        if self.process is None:
            return None
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            return int(children[0]) if children else None
        return None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM to PID 1, SIGKILL after ``grace`` seconds (as a kubelet does); then clean up."""
        code = None
        try:
            if self.process is not None:
                if self.process.poll() is None:
                    pid = self.entry_pid()
                    if pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGTERM)
                    try:
                        self.process.wait(grace)
                    except subprocess.TimeoutExpired:
                        self.process.kill()  # --kill-child takes the namespace with it
                        self.process.wait(10)
                code = self.process.returncode
        finally:
            if self.container is not None:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    buildah("umount", self.container)
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    buildah("rm", self.container)
                self.container = None
        return code

    def run(self, timeout: float) -> int:
        """Start, wait for the exit and clean up; the exit code (output in stdout, stderr)."""
        self.start()
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"{self.argv} did not exit within {timeout} s:\n{self.logs()[-3000:]}"
            ) from None
        self.stop()
        return code

    def __enter__(self) -> Pod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def remove(self) -> None:
        """Forget the captured output."""
        shutil.rmtree(self.scratch, ignore_errors=True)


def wait_for(check: Any, within: float, pod: Pod, what: str) -> None:
    """Poll ``check()`` until it is true; fail with the pod's output if it never is."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pod.process is not None and pod.process.poll() is not None:
            pytest.fail(f"the pod exited ({pod.process.returncode}) before {what}:\n{pod.logs()[-3000:]}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {within} s:\n{pod.logs()[-3000:]}")
