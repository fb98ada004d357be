"""What the Redis-limit scenarios share: a redis-server started with options of the test's own
(memory limits, ACL users, TLS with certificates made by ``openssl`` in the test's directory), the
whole dataset as a user would read it, and the consistency checks a user would make afterwards.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.conftest import RedisServer, free_port, require_binary, start_redis, wait_for_port
from tests.reliability.support import stop_server

#: The streams a cycle publishes to, the entry field holding the document, and the prefix of the
#: idempotency marker of each document (``runner:published:<prefix><id>``).
STREAMS = {
    "signals:raw": ("signal", ""),
    "signals:scored": ("doc", "score:"),
    "signals:advised": ("doc", "advice:"),
    "reports:cycle": ("doc", ""),
}


@contextlib.contextmanager
def redis_with(directory: Path, *options: str) -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free loopback port, with ``options``; stopped after."""
    directory.mkdir(parents=True, exist_ok=True)
    server = start_redis(directory, None, *options)
    try:
        yield server
    finally:
        stop_server(server)


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, decode_responses=True, socket_timeout=10)


def dataset(client: redis.Redis) -> dict[str, Any]:
    """Every key with its type and content (what a user would compare before and after)."""
    out: dict[str, Any] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = None
        out[key] = (kind, value)
    return out


def fill(client: redis.Redis, prefix: str = "ballast:") -> int:
    """Write ballast until Redis refuses a write (OOM), then lower maxmemory 1 MB below what it
    uses, so that it stays full whichever buffers it frees meanwhile; returns the ballast keys."""
    n = 0
    while True:
        try:
            client.set(f"{prefix}{n}", "x" * 65536)
        except redis.exceptions.OutOfMemoryError:
            break
        n += 1
        assert n < 100_000, "Redis never refused a write: is maxmemory set?"
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used - (1 << 20)))
    return n


@dataclass
class Consistency:
    """Whether every published document has its marker and its latest entry, and every marker
    its document: nothing half-written."""

    entries: int
    without_marker: list[str]
    markers_without_entry: list[str]
    latest_missing: list[str]

    @property
    def ok(self) -> bool:
        return not (self.without_marker or self.markers_without_entry or self.latest_missing)


def consistency(client: redis.Redis, prefix: str = "") -> Consistency:
    ids: dict[str, set[str]] = {}
    entries = 0
    without_marker: list[str] = []
    for stream, (name, mark) in STREAMS.items():
        ids[mark or stream] = set()
        for _, fields in client.xrange(prefix + stream):
            entries += 1
            doc = json.loads(fields[name])
            ids[mark or stream].add(doc["id"])
            if not client.exists(f"{prefix}runner:published:{mark}{doc['id']}"):
                without_marker.append(f"{stream} {doc['id']}")
    published = set()
    for stream, (_, mark) in STREAMS.items():
        published |= {f"{mark}{i}" for i in ids[mark or stream]}
    markers = {
        k.removeprefix(f"{prefix}runner:published:") for k in client.scan_iter(f"{prefix}runner:published:*")
    }
    latest_missing = []
    for symbol_id in ids["signals:raw"]:
        symbol = symbol_id.rsplit(":", 2)[0]
        if not client.hexists(f"{prefix}signals:latest", symbol):
            latest_missing.append(symbol_id)
    return Consistency(entries, without_marker, sorted(markers - published), latest_missing)


def held(client: redis.Redis, prefix: str = "") -> dict[str, list[str]]:
    """What runs still hold: locks, leases and heartbeat entries."""
    return {
        "locks": sorted(client.scan_iter(f"{prefix}signal:lock:*")),
        "leases": sorted(client.scan_iter(f"{prefix}runner:lease:*")),
        "heartbeats": sorted(
            f"{k} {f}" for k in client.scan_iter(f"{prefix}runner:heartbeat:*") for f in client.hkeys(k)
        ),
    }


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("runner: error:")]


# --- TLS ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """A test CA, a server certificate it signed (for 127.0.0.1 only) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_binary("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (certificate, key) valid for two days."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(cert), cwd=directory,
    )  # fmt: skip
    return cert, key


def sign(directory: Path, ca: tuple[Path, Path], name: str, alt_names: str) -> tuple[Path, Path]:
    """A certificate for ``alt_names`` (``IP:127.0.0.1``) signed by ``ca``: (certificate, key)."""
    cert, key, csr, ext = (directory / f"{name}{s}" for s in (".crt", ".key", ".csr", ".ext"))
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
        "-out", str(csr), cwd=directory,
    )  # fmt: skip
    ext.write_text(f"subjectAltName={alt_names}\n", encoding="ascii")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=directory,
    )  # fmt: skip
    return cert, key


def certificates(directory: Path) -> Certificates:
    ca = make_ca(directory, "test-ca")
    server = sign(directory, ca, "server", "IP:127.0.0.1")
    client = sign(directory, ca, "client", "DNS:runner")
    return Certificates(ca[0], server[0], server[1], client[0], client[1])


@dataclass
class TlsRedis:
    """A redis-server that speaks only TLS, on a free loopback port."""

    port: int
    process: subprocess.Popen[bytes]

    def url(self, host: str = "127.0.0.1", **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"rediss://{host}:{self.port}/0" + (f"?{q}" if q else "")


@contextlib.contextmanager
def tls_redis(directory: Path, certs: Certificates, auth_clients: str = "optional") -> Iterator[TlsRedis]:
    binary = require_binary("redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(certs.server_cert),
            "--tls-key-file",
            str(certs.server_key),
            "--tls-ca-cert-file",
            str(certs.ca),
            "--tls-auth-clients",
            auth_clients,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield TlsRedis(port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def tls_client(server: TlsRedis, certs: Certificates) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=server.port,
        ssl=True,
        ssl_ca_certs=str(certs.ca),
        ssl_certfile=str(certs.client_cert),
        ssl_keyfile=str(certs.client_key),
        decode_responses=True,
        socket_timeout=10,
    )


# --- a terminal -----------------------------------------------------------------------------------


def cleanup(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
