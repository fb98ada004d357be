"""The servers the bench runs on loopback ports of its own: redis-server (alone, as a replica or as
a node of a cluster), PostgreSQL for the archive, and an HTTP receiver for notifications. Each
one is started, waited for on a condition it reports, and stopped by the bench.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it is truthy (errors count as not yet); exit after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.02)
    sys.exit(f"bench: {what} not within {timeout:.0f} s")


class Server:
    """One redis-server without persistence; ``args`` add to its command line."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.port = port or free_port()
        binary = shutil.which("redis-server")
        if not binary:
            sys.exit("bench: redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.dir),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: redis.Redis(port=self.port).ping(), f"redis-server on port {self.port}")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.version = redis.Redis(port=self.port).info()["redis_version"]

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def flush(self) -> None:
        redis.Redis(port=self.port).flushall()

    def masters(self) -> list[redis.Redis]:
        """Clients of the nodes that take writes: this one."""
        return [self.client()]

    def replica(self) -> Server:
        """A replica of this server, once the master counts it online."""
        replica = Server("--replicaof", "127.0.0.1", str(self.port))
        wait_until(
            lambda: self.client().info("replication").get("slave0", {}).get("state") == "online",
            "the replica's sync",
        )
        return replica

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """A Redis Cluster of ``masters`` masters with one replica each, on free ports."""

    def __init__(self, masters: int = 3) -> None:
        ports: list[int] = []
        while len(ports) < masters * 2:  # the cluster bus listens on port + 10000
            port = free_port()
            if port < 55535 and port not in ports and _bindable(port + 10000):
                ports.append(port)
        self.nodes: list[Server] = []
        try:
            for port in ports:
                self.nodes.append(
                    Server("--cluster-enabled", "yes", "--cluster-node-timeout", "5000", port=port)
                )
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in ports),
                    *("--cluster-replicas", "1", "--cluster-yes"),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for node in self.nodes:
                wait_until(
                    lambda n=node: (
                        n.client().cluster("info")["cluster_state"] == "ok"
                        and sum("slave" in v["flags"] for v in n.client().cluster("nodes").values())
                        == masters
                    ),
                    "the cluster's state ok, with every replica known to every node",
                )
                wait_until(
                    lambda n=node: (
                        n.client().info("replication")["role"] == "master"
                        or n.client().info("replication")["master_link_status"] == "up"
                    ),
                    "the replicas' sync",
                )
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:masters])

    def flush(self) -> None:
        for client in self.masters():
            client.flushall()

    def masters(self) -> list[redis.Redis]:
        """Clients of the nodes that take writes: the masters of the slots."""
        clients = [node.client() for node in self.nodes]
        return [c for c in clients if c.info("replication")["role"] == "master"]

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=True)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Postgres:
    """A PostgreSQL server of the bench's own (Debian's binaries; run as ``postgres`` when the
    bench runs as root, since the server refuses root), trusting loopback connections."""

    USER = "bench"

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        which = shutil.which("initdb")
        initdb = found[-1] if found else (Path(which).resolve() if which else None)
        if initdb is None:
            sys.exit("bench: PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = initdb.parent
        self.as_user: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.root / "data"
        self.data.mkdir()
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            for path in (self.root, self.data):
                os.chown(path, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *self.as_user,
                *(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.USER, "--auth=trust"),
                *("--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.port = free_port()
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-w", "-t", "60", "-l", str(self.data / "server.log"), "-o", options, "start")
        self.url = f"postgresql://{self.USER}@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class Receiver:
    """Accepts what Apprise's ``json://127.0.0.1:PORT/hook`` posts, and keeps each message's event."""

    def __init__(self) -> None:
        self.events: list[str] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    message = str(json.loads(raw).get("message", ""))
                except ValueError:
                    message = ""
                events.append(
                    next((line[7:] for line in message.splitlines() if line.startswith("Event: ")), "?")
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"json://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def proc_status_kb(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in KB (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
