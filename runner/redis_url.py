"""``REDIS_URL`` read into what the runner connects to: one server, Sentinel or Cluster.

Pure: no Redis client is imported here. ``runner.config`` validates with ``parse`` (one-line
errors that never show a password) and ``runner.store.connection`` builds the client from the
``Target`` it returns.

=================================================================================  ============
``redis://[user:password@]host[:port][/db]``, ``rediss://...``, ``unix:///path``   one server
``redis+sentinel://[user:password@]host1:port1,host2:port2/<master>[/db]``         Sentinel
``rediss+sentinel://...`` (TLS to the sentinels and to the master)
``redis+cluster://[user:password@]host1:port1,host2:port2``                         Cluster
``rediss+cluster://...``
=================================================================================  ============

The Sentinel forms take ``?sentinel_password=`` (and ``sentinel_username=``) for the sentinels
themselves; the user and password before the ``@`` are the data nodes'. The TLS forms take
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` (``none``, ``optional``,
``required``) and ``ssl_check_hostname`` (``true``/``false``); a one-server URL takes those (over
TLS) and ``db``, nothing else. Sentinel ports default to 26379, cluster ports to 6379.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import parse_qsl, unquote, urlsplit

SENTINEL_PORT = 26379
REDIS_PORT = 6379
#: The hash tag every key gets on a cluster when no prefix is configured.
CLUSTER_PREFIX = "{runner}:"

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
CERT_REQS = ("none", "optional", "required")
_HOST = re.compile(r"^[A-Za-z0-9._-]+$")
_SECRET_QUERY = re.compile(r"((?:^|[?&;])(?:sentinel_)?password=)[^&;#]*", re.IGNORECASE)


class Topology(StrEnum):
    """How the Redis behind ``REDIS_URL`` is run."""

    SINGLE = "single"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class Target:
    """What ``REDIS_URL`` names. ``nodes`` are the sentinels (Sentinel) or the seed nodes
    (Cluster); a single server keeps its URL for redis-py's own parser."""

    topology: Topology
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    #: redis-py's ``ssl_*`` keyword arguments, already typed.
    tls_options: dict[str, str | bool] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        """Every password the URL carries (kept out of logs)."""
        found = [self.password, self.sentinel_password]
        if self.topology is Topology.SINGLE:
            found.append(_password_of(self.url))
        return [s for s in found if s]

    def describe(self) -> str:
        """One line without secrets: ``sentinel master mymaster via 127.0.0.1:26379, ...``."""
        where = ", ".join(f"{_show_host(h)}:{p}" for h, p in self.nodes)
        tls = " over TLS" if self.tls else ""
        if self.topology is Topology.SENTINEL:
            return f"sentinel master {self.master_name!r} (db {self.db}) via {where}{tls}"
        if self.topology is Topology.CLUSTER:
            return f"cluster seeded by {where}{tls}"
        return redact_url(self.url)


def parse(url: str) -> Target:
    """The target ``url`` names; ``ValueError`` with one line (the URL shown redacted) when it
    cannot be used."""
    shown = redact_url(url)
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (*SINGLE_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES):
        raise ValueError(
            "must be a redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
            f"redis+cluster:// or rediss+cluster:// URL, got {shown!r}"
        )
    if scheme in SINGLE_SCHEMES:
        return _single(url, scheme, shown)
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    credentials, at, hosts = authority.rpartition("@")
    if not at:
        hosts, credentials = authority, ""
    username, password = _credentials(credentials)
    sentinel = scheme in SENTINEL_SCHEMES
    nodes = _nodes(hosts, SENTINEL_PORT if sentinel else REDIS_PORT, shown)
    allowed = (*SENTINEL_OPTIONS, *TLS_OPTIONS) if sentinel else TLS_OPTIONS
    options = _options(parse_qsl(query, keep_blank_values=True), allowed, scheme.startswith("rediss"), shown)
    common = {
        "url": url,
        "nodes": nodes,
        "username": username,
        "password": password,
        "tls": scheme.startswith("rediss"),
        "tls_options": {k: v for k, v in options.items() if k in TLS_OPTIONS},
    }
    if not sentinel:
        if path.strip("/") not in ("", "0"):
            raise ValueError(f"a cluster has only db 0 and no master name: drop the path in {shown!r}")
        return Target(Topology.CLUSTER, **common)  # type: ignore[arg-type]
    parts = [unquote(p) for p in path.split("/")] if slash else []
    if not parts or not parts[0]:
        raise ValueError(f"names no master: use redis+sentinel://host:26379/<master name>, got {shown!r}")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"has a bad db after the master name (a number is expected): {shown!r}")
    return Target(
        Topology.SENTINEL,
        master_name=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        sentinel_username=_str(options.get("sentinel_username")),
        sentinel_password=_str(options.get("sentinel_password")),
        **common,  # type: ignore[arg-type]
    )


def _single(url: str, scheme: str, shown: str) -> Target:
    parts = urlsplit(url)
    tls = scheme == "rediss"
    options = _single_options(parts.query, tls, shown)
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"has no socket path: {shown!r}")
        return Target(Topology.SINGLE, url)
    if "," in parts.netloc:
        raise ValueError(
            f"names several hosts: use redis+sentinel:// or redis+cluster:// for those, got {shown!r}"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"has a bad port: {shown!r}") from exc
    if not parts.hostname:
        raise ValueError(f"has no host: {shown!r}")
    del port
    return Target(Topology.SINGLE, url, tls=tls, tls_options=options)


def _single_options(query: str, tls: bool, shown: str) -> dict[str, str | bool]:
    """The query of a one-server URL: ``db`` and, over TLS, the TLS options (redis-py reads them
    itself; anything else would reach its connection as an unknown argument)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(not v.isdigit() for k, v in pairs if k == "db"):
        raise ValueError(f"has a bad db (a number is expected): {shown!r}")
    return _options([(k, v) for k, v in pairs if k != "db"], ("db", *TLS_OPTIONS), tls, shown)


def _credentials(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, colon, password = text.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _nodes(text: str, default_port: int, shown: str) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, bracket, tail = item[1:].partition("]")
            if not bracket or not host:
                raise ValueError(f"has a bad IPv6 address {item!r}: {shown!r}")
            port_text = tail[1:] if tail.startswith(":") else ""
            if tail and not tail.startswith(":"):
                raise ValueError(f"has a bad host {item!r}: {shown!r}")
        else:
            host, _, port_text = item.partition(":")
            if not _HOST.fullmatch(host):
                raise ValueError(f"has a bad host {item!r}: {shown!r}")
        if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ValueError(f"has a bad port in {item!r}: {shown!r}")
        nodes.append((host, int(port_text) if port_text else default_port))
    if not nodes:
        raise ValueError(f"has no host: {shown!r}")
    return tuple(dict.fromkeys(nodes))


def _options(
    pairs: list[tuple[str, str]], allowed: tuple[str, ...], tls: bool, shown: str
) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for name, value in pairs:
        if name not in allowed:
            raise ValueError(f"has an unknown option {name!r} (known: {', '.join(allowed)}): {shown!r}")
        if name in TLS_OPTIONS and not tls:
            raise ValueError(f"has {name} but is not a TLS URL (use rediss:// or rediss+...): {shown!r}")
        if name == "ssl_cert_reqs" and value not in CERT_REQS:
            raise ValueError(f"ssl_cert_reqs must be one of {', '.join(CERT_REQS)} (got {value!r})")
        if name == "ssl_check_hostname":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"ssl_check_hostname must be true or false (got {value!r})")
            out[name] = value.lower() == "true"
            continue
        out[name] = value
    return out


def _str(value: str | bool | None) -> str | None:
    return value if isinstance(value, str) and value else None


def _password_of(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def _show_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def redact_url(url: str) -> str:
    """The URL with any credentials masked: ``redis://user:***@host:6379/0``, and
    ``?sentinel_password=***``.

    Works on the raw text (everything between ``://`` and the last ``@``), so a password that
    is not URL-encoded, or a URL that does not parse, still never shows.
    """
    url = _SECRET_QUERY.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user = credentials.split(":", 1)[0] if ":" in credentials else ""
    return f"{scheme}://{user}:***@{location}"


def cluster_prefix(prefix: str) -> str:
    """The key prefix to use on a cluster: one hash tag for every key, so every key one script
    touches (and the heartbeat keys the lock script derives from a lock's owner) shares a slot.

    Empty: ``{runner}:``. A prefix that already holds a hash tag (``{prod}:``, ``app{x}:``) is
    kept; any other becomes one (``prod:`` -> ``{prod}:``).
    """
    if not prefix:
        return CLUSTER_PREFIX
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    if start >= 0 and end > start + 1:
        return prefix
    core = prefix.rstrip(":").replace("{", "").replace("}", "")
    return f"{{{core}}}:" if core else CLUSTER_PREFIX
