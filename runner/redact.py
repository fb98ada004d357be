"""Secrets out of everything the runner shows: which values are secret, and how a URL that
carries them is shown.

Notification URLs carry their secret in different places (``json://user:pass@host/path``,
``slack://TokenA/TokenB/TokenC``, ``ntfy://topic``, ``tgram://bot-token/chat``), so a URL is
shown as its service and, for plain web hooks, its host: ``json://127.0.0.1:8080/***``,
``slack://***``. ``secret_values`` lists every secret string the settings hold, so logs,
messages and errors can mask them wherever they turn up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from runner.config import Settings

#: Schemes whose host is a server address rather than part of the secret.
WEB_SCHEMES = frozenset({"json", "jsons", "form", "forms", "xml", "xmls", "http", "https"})

MASK = "***"

#: Shorter credential or host values are not masked in free text (they would mask ordinary words).
MIN_SECRET = 4
#: Path segments and query values shorter than this are names, not tokens.
MIN_TOKEN = 8


def masked_url(url: str) -> str:
    """A notification URL with everything that may be secret replaced by ``***``."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not scheme:
        return MASK
    if scheme.lower() in WEB_SCHEMES:
        netloc = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
        return f"{scheme}://{netloc}/{MASK}" if netloc else f"{scheme}://{MASK}"
    return f"{scheme}://{MASK}"


def url_secrets(url: str) -> list[str]:
    """The parts of a notification URL that may be secret, for masking in free text: the URL
    itself, its credentials, its host (unless a web hook's), its path and any long path segment
    or query value."""
    url = url.strip()
    found = [url]
    scheme, sep, rest = url.partition("://")
    if not sep:
        return found
    try:
        parts = urlsplit(url)
        username, password, hostname = parts.username, parts.password, parts.hostname
    except ValueError:  # a bad port, say: the raw text below still finds the parts
        username, password, hostname = None, None, None
    for value in (username, password):
        if value and len(value) >= MIN_SECRET:
            found += [value, unquote(value)]
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    host = netloc.rsplit("@", 1)[-1]
    if scheme.lower() not in WEB_SCHEMES:
        for value in (host, hostname or ""):
            if len(value) >= MIN_SECRET:
                found.append(value)
    tail = rest[len(netloc) :]
    path, _, query = tail.partition("?")
    path = path.split("#", 1)[0]
    if len(path.strip("/")) >= MIN_SECRET:
        found += [path, path.strip("/")]
    for segment in path.split("/"):
        if len(segment) >= MIN_TOKEN:
            found += [segment, unquote(segment)]
    for pair in query.split("&"):
        value = pair.partition("=")[2]
        if len(value) >= MIN_TOKEN:
            found += [value, unquote(value)]
    return found


def dsn_secrets(url: str | None) -> list[str]:
    """The passwords a database URL holds (its credentials', a query's ``password=`` and
    ``sslpassword=``), to mask in logs."""
    if not url:
        return []
    from urllib.parse import parse_qsl

    found = []
    credentials = url.partition("://")[2].rpartition("@")[0]
    if ":" in credentials:
        password = credentials.split(":", 1)[1]
        found += [password, unquote(password)]
    query = url.partition("?")[2]
    found += [v for k, v in parse_qsl(query) if k.lower() in ("password", "sslpassword")]
    return [s for s in dict.fromkeys(found) if s]


def secret_values(settings: Settings) -> list[str]:
    """Every secret string the settings hold (API key and token, passwords, notification URLs'
    secret parts, the archive's database password), longest first so that a secret containing another
    is masked whole."""
    found: list[str] = []
    for secret in (settings.analyzer.api_key, settings.analyzer.opencode_password, settings.api.token):
        if secret is not None:
            found.append(secret.get_secret_value())
    target = settings.redis.target()
    if target is not None:
        found += target.secrets()
    for url in (settings.metrics.pushgateway_url, settings.analyzer.opencode_url):
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            if password:
                found += [password, unquote(password)]
    for secret in settings.notify.urls:
        found += url_secrets(secret.get_secret_value())
    if settings.archive.postgres_url is not None:
        found += dsn_secrets(settings.archive.postgres_url.get_secret_value())
    return sorted({s for s in found if len(s) >= MIN_SECRET}, key=len, reverse=True)


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``***`` (secrets longest first)."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text
