"""PID 1 of a :class:`tests.images.pod.Pod` until it becomes the image's entry point.

Runs on the host's Python inside the pod's fresh mount and PID namespaces (``unshare``), as
root. It makes the mount points in the container's writable layer, binds the root filesystem
read-only onto itself, mounts /proc, /dev, /sys, the volumes and the host's resolv.conf and
hosts, then chroots, drops to the pod's user and execs the entry point, which so becomes PID 1.
Its only argument is the JSON spec that ``Pod.start`` writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def bind(source: str, target: str, read_only: bool) -> None:
    mount("--rbind", source, target)
    if read_only:
        mount("-o", "remount,bind,ro", target)


def main(spec: dict) -> None:  # type: ignore[type-arg]
    root = spec["root"]
    # Mount points live in the container's writable layer, made before the root goes read-only
    # (as runc makes them), so nothing the image ships is changed.
    files = [v["path"] for v in spec["volumes"] if os.path.isfile(v["source"])] + spec["files"]
    for volume in spec["volumes"]:
        if volume["path"] not in files:
            os.makedirs(root + volume["path"], exist_ok=True)
    for name in files:  # a subPath of a ConfigMap, resolv.conf, hosts: a file on a file
        os.makedirs(os.path.dirname(root + name), exist_ok=True)
        if not os.path.lexists(root + name):
            open(root + name, "a").close()
    bind(root, root, spec["read_only"])
    mount("-t", "proc", "proc", root + "/proc")
    bind("/dev", root + "/dev", read_only=False)
    bind("/sys", root + "/sys", read_only=True)
    for volume in spec["volumes"]:
        bind(volume["source"], root + volume["path"], volume["read_only"])
    for name in spec["files"]:
        bind(name, root + name, read_only=True)
    os.chroot(root)
    os.chdir(spec["workdir"])
    os.setgroups([])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])  # noqa: S606 - the image's entry point, as a runtime runs it


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
