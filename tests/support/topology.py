"""Redis as operators run it, for the tests: a master, a replica and three sentinels; a cluster of
three masters with one replica each. Real ``redis-server`` processes on loopback ports, started
and stopped by fixtures. Every wait is on a condition the servers report, with a generous
timeout: nothing depends on how fast the machine is.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from tests.conftest import require_binary, wait_for_port

#: Sentinel's down-after and the cluster's node timeout: failovers within a few seconds.
DOWN_AFTER_MS = 1000
NODE_TIMEOUT_MS = 2000
MASTER_NAME = "runner-master"
#: Generous bounds on waits for the topology (a loaded machine is slow, never wrong).
SETTLE_S = 60.0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ports(count: int, *, bus: bool = False) -> list[int]:
    """``count`` free loopback ports; with ``bus``, each one's cluster bus port (+10000) is free
    too (so every port is below 55535)."""
    chosen: list[int] = []
    rng = random.Random()
    while len(chosen) < count:
        port = rng.randrange(20000, 45000)
        if port in chosen or (bus and port + 10000 in chosen):
            continue
        if _bindable(port) and (not bus or _bindable(port + 10000)):
            chosen.append(port)
    return chosen


def eventually(predicate: Callable[[], Any], what: str, timeout: float = SETTLE_S) -> Any:
    """Poll ``predicate`` until it is truthy (errors count as not yet); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (redis.RedisError, OSError) as exc:
            last, value = exc, None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.0f}s" + (f" (last error: {last})" if last else ""))


@dataclass
class Node:
    """One redis-server (or sentinel) process of ours, which may be killed, frozen and restarted."""

    port: int
    directory: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    def start(self, *extra: str) -> None:
        binary = require_binary("redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, *self.args, *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        wait_for_port(self.port, timeout=SETTLE_S)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process is gone, nothing is saved."""
        self.thaw()
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers."""
        if self.alive() and not self.frozen:
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        self.thaw()
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _server_args(port: int, directory: Path) -> list[str]:
    return [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        # A replica's full sync starts at once rather than after 5 s waiting for others.
        "--repl-diskless-sync-delay",
        "0",
    ]


@dataclass
class SentinelSet:
    """A master, a replica and three sentinels (quorum 2, down-after 1 s)."""

    root: Path
    data: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    @classmethod
    def start(cls, root: Path) -> SentinelSet:
        s = cls(root)
        try:
            s._launch()
        except BaseException:
            s.stop()
            raise
        return s

    def _launch(self) -> None:
        s, root = self, self.root
        master_port, replica_port, *sentinel_ports = ports(5)
        for i, port in enumerate((master_port, replica_port)):
            directory = root / f"redis-{port}"
            node = Node(port, directory, _server_args(port, directory))
            node.start(*(() if i == 0 else ("--replicaof", "127.0.0.1", str(master_port))))
            s.data.append(node)
        for port in sentinel_ports:
            directory = root / f"sentinel-{port}"
            directory.mkdir(parents=True)
            conf = directory / "sentinel.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        f"dir {directory}",
                        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2",
                        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {MASTER_NAME} 3000",
                        f"sentinel parallel-syncs {MASTER_NAME} 1",
                        "",
                    ]
                ),
                encoding="utf-8",
            )
            node = Node(port, directory, [str(conf), "--sentinel"])
            node.start()
            s.sentinels.append(node)
        s.wait_healthy()

    def url(self, **query: str) -> str:
        hosts = ",".join(n.address for n in self.sentinels)
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0" + (f"?{tail}" if tail else "")

    def master_address(self) -> tuple[str, int] | None:
        """The master every live sentinel agrees on, or None."""
        seen = set()
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            with sentinel.client() as c:
                addr = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            seen.add((addr[0], int(addr[1])) if addr else None)
        return seen.pop() if len(seen) == 1 else None

    def node_at(self, port: int) -> Node:
        return next(n for n in self.data if n.port == port)

    def master(self) -> Node:
        addr = eventually(self.master_address, "the sentinels agree on a master")
        return self.node_at(addr[1])

    def replica(self) -> Node:
        master = self.master()
        return next(n for n in self.data if n is not master)

    def _healthy(self) -> bool:
        addr = self.master_address()
        if addr is None:
            return False
        master = self.node_at(addr[1])
        if not master.alive() or master.frozen:
            return False
        with master.client() as c:
            info = c.info("replication")
        if info.get("role") != "master" or int(info.get("connected_slaves", 0)) < 1:
            return False
        replica = info.get("slave0") or {}
        if replica.get("state") != "online":
            return False
        other = next(n for n in self.data if n is not master)
        with other.client() as c:
            mine = c.info("replication")
        if mine.get("role") != "slave" or mine.get("master_link_status") != "up":
            return False
        if int(mine.get("master_port", 0)) != master.port:
            return False
        # Every sentinel sees that replica and no longer thinks anything is down.
        for sentinel in self.sentinels:
            with sentinel.client() as c:
                state = c.sentinel_master(MASTER_NAME)
                if state["is_sdown"] or state["is_odown"] or int(state.get("num-slaves", 0)) < 1:
                    return False
                good = [
                    r
                    for r in c.sentinel_slaves(MASTER_NAME)
                    if int(r.get("port", 0)) == other.port and not r["is_sdown"]
                ]
                if not good:  # (its master-link-status is refreshed only every 10 s: not waited for)
                    return False
        return True

    def wait_healthy(self, timeout: float = SETTLE_S) -> None:
        """Until the sentinels agree on a live master with one online replica."""
        eventually(self._healthy, "sentinel set healthy (a master, an online replica)", timeout)

    def restart_as_replica(self, node: Node) -> None:
        """Start a killed data node again as a replica of the current master (as a pod that comes
        back asks the sentinels who the master is)."""
        master = self.master()
        assert node is not master
        node.start("--replicaof", "127.0.0.1", str(master.port))

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: promote the replica, on purpose."""
        with self.sentinels[0].client() as c:
            c.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Cluster:
    """Three masters with one replica each (node timeout 2 s)."""

    root: Path
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def start(cls, root: Path) -> Cluster:
        c = cls(root)
        try:
            c._launch()
        except BaseException:
            c.stop()
            raise
        return c

    def _launch(self) -> None:
        c, root = self, self.root
        for port in ports(6, bus=True):
            directory = root / f"node-{port}"
            args = [
                *_server_args(port, directory),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # A replica that was cut off for a while may still take over (the tests cut it off).
                "--cluster-replica-validity-factor",
                "0",
            ]
            node = Node(port, directory, args)
            node.start()
            c.nodes.append(node)
        create = [
            require_binary("redis-cli"),
            "--cluster",
            "create",
            *(n.address for n in c.nodes),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ]
        subprocess.run(create, check=True, capture_output=True, timeout=SETTLE_S)
        c.wait_healthy()

    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:3])

    def view(self) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as one live node sees it."""
        for node in self.nodes:
            if not node.alive() or node.frozen:
                continue
            return self.view_of(node)
        raise AssertionError("no cluster node is up")

    def view_of(self, node: Node) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as ``node`` sees it."""
        with node.client() as cl:
            text = cl.execute_command("CLUSTER", "NODES")
        rows = []
        for line in str(text).splitlines():
            parts = line.split()
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            rows.append(
                {"id": parts[0], "port": port, "flags": parts[2], "master": parts[3], "slots": parts[8:]}
            )
        return rows

    def node_at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def master_of(self, key: str) -> Node:
        """The master serving ``key``'s slot now (as the cluster reports it)."""
        slot = key_slot(key.encode())

        def find() -> Node | None:
            for row in self.view():
                if "master" not in row["flags"] or "fail" in row["flags"]:
                    continue
                for span in row["slots"]:
                    if span.startswith("["):
                        continue
                    low, _, high = span.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return self.node_at(row["port"])
            return None

        return eventually(find, f"a master serves slot {slot}")

    def replica_of(self, master: Node) -> Node:
        rows = self.view()
        ids = {r["port"]: r["id"] for r in rows}
        for row in rows:
            if row["master"] == ids[master.port]:
                return self.node_at(row["port"])
        raise AssertionError(f"{master.address} has no replica")

    def _healthy(self) -> bool:
        for node in self.nodes:
            if not node.alive() or node.frozen:
                return False
            with node.client() as cl:
                info = cl.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in str(info):
                    return False
                role = cl.info("replication")
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return False
        # Every node's own table must agree, not one node's: after a failover a master can be the
        # last to count the replica that rejoined it, and `runner status` asks the master.
        return all(self._complete(self.view_of(node)) for node in self.nodes)

    @staticmethod
    def _complete(rows: list[dict[str, Any]]) -> bool:
        masters = [r for r in rows if "master" in r["flags"] and "fail" not in r["flags"]]
        if len(masters) != 3 or any("fail" in r["flags"] for r in rows):
            return False
        replicated = {r["master"] for r in rows if "slave" in r["flags"]}
        return all(m["id"] in replicated for m in masters)

    def wait_healthy(self, timeout: float = SETTLE_S) -> None:
        """Until every node is up, the cluster is ok, and each of three masters has a replica."""
        eventually(self._healthy, "cluster healthy (3 masters, each with an online replica)", timeout)

    def manual_failover(self, replica: Node) -> None:
        """``CLUSTER FAILOVER`` on ``replica``: it takes over its master, after catching up."""
        with replica.client() as cl:
            cl.execute_command("CLUSTER", "FAILOVER")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def sentinel_set(root: Path) -> Iterator[SentinelSet]:
    s = SentinelSet.start(root)
    try:
        yield s
    finally:
        s.stop()


@contextlib.contextmanager
def cluster(root: Path) -> Iterator[Cluster]:
    c = Cluster.start(root)
    try:
        yield c
    finally:
        c.stop()
