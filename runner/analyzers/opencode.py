"""An LLM agent behind an OpenCode server (``opencode serve``), one session per analysis.

Per symbol: ``POST /session`` (always with a title: an untitled session costs an extra model
call to name it), then ``POST /session/{id}/message`` to the configured agent and model with
``format: json_schema`` and every tool but ``StructuredOutput`` switched off for the message. The
call blocks until the run ends; the reply's ``info.structured`` (or, failing that, its text
parts) is validated with ``prompt.validate_answer``. Finally the session is deleted.

OpenCode reports model failures as HTTP 200 with ``info.error`` set; they are mapped here:

* ``APIError``: 429 -> ``RateLimited`` (Retry-After kept), 401/402 -> ``AuthError``, 408/5xx
  or no status -> ``TransientError``, other 4xx -> ``PermanentError``;
* ``ProviderAuthError`` -> ``AuthError``; ``StructuredOutputError`` and
  ``MessageOutputLengthError`` -> ``InvalidOutput``; ``ContextOverflowError`` and
  ``ContentFilterError`` -> ``PermanentError``; anything else -> ``TransientError``.

HTTP errors of the OpenCode server itself: 401 (wrong or missing ``OPENCODE_SERVER_PASSWORD``)
-> ``AuthError``, so the cycle fails fast; 429 -> ``RateLimited``; 5xx, connection errors and
timeouts -> ``TransientError`` (a 500 on the prompt is first checked against ``GET /agent`` and
``GET /config/providers``: an unknown agent or model is a ``PermanentError`` that says so).

OpenCode retries failing providers by itself for a long time and waits for a silent model for
minutes, so every request gets at most what is left of ``request.timeout``. A call that did not
end normally (timeout, cancellation, error) aborts the run (``POST /session/{id}/abort``: a
deleted session's run otherwise goes on) and then deletes the session, in a task shielded from
cancellation with its own short timeout; ``aclose()`` waits for such tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from runner import __version__
from runner.analyzers.base import AnalysisRequest, Ask, Reply
from runner.analyzers.http import error_for_status, retry_after_seconds
from runner.analyzers.prompt import AskingAnalyzer, extract_json, prompt_hash
from runner.config import Settings, redact_url
from runner.errors import (
    AnalyzerError,
    AuthError,
    ConfigError,
    InvalidOutput,
    PermanentError,
    TransientError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The user name of OpenCode's basic auth (``OPENCODE_SERVER_USERNAME`` on the server side).
USERNAME = "opencode"
#: The tool OpenCode adds for ``format: json_schema``; the only one the agent may use.
STRUCTURED_TOOL = "StructuredOutput"
#: Seconds for aborting and deleting a session after a call that did not end normally.
CLEANUP_SECONDS = 3.0
#: Seconds for the aborts alone, so that the delete still gets its turn.
ABORT_SECONDS = 2.0
CONNECT_SECONDS = 5.0


def _short(text: Any, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def error_from_info(error: Any) -> AnalyzerError:
    """The runner error for an ``info.error`` object in an OpenCode reply."""
    if not isinstance(error, dict):
        return TransientError(f"OpenCode reported an error: {_short(error)}")
    name = str(error.get("name") or "UnknownError")
    raw = error.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    message = _short(data.get("message") or name)
    if name == "ProviderAuthError":
        return AuthError(f"provider {data.get('providerID', '?')} refused the credentials: {message}")
    if name == "APIError":
        status = data.get("statusCode")
        text = f"model API error{f' HTTP {status}' if status else ''}: {message}"
        headers = data.get("responseHeaders")
        retry_after = retry_after_seconds(headers.get("retry-after") if isinstance(headers, dict) else None)
        # No status (a connection failure inside OpenCode) is an outage like a 502.
        return error_for_status(status if isinstance(status, int) else 502, text, retry_after)
    if name in ("StructuredOutputError", "MessageOutputLengthError"):
        return InvalidOutput(f"{name}: {message}")
    if name in ("ContextOverflowError", "ContentFilterError"):
        return PermanentError(f"{name}: {message}")
    if name == "MessageAbortedError":
        return TransientError(f"the OpenCode run was aborted: {message}")
    return TransientError(f"OpenCode {name}: {message}")


def _body_message(response: httpx.Response) -> str:
    """The message of an OpenCode error body (``{"name", "data": {"message"}}`` or ``{"message"}``)."""
    try:
        body = response.json()
    except ValueError:
        return _short(response.text) or response.reason_phrase
    if isinstance(body, dict):
        data = body.get("data")
        if isinstance(data, dict) and data.get("message"):
            return _short(data["message"])
        if body.get("message"):
            return _short(body["message"])
        if body.get("_tag"):
            return _short(body["_tag"])
    return _short(body)


def text_of(parts: Any) -> str:
    """The model's text in a reply's parts (synthetic and ignored parts left out)."""
    if not isinstance(parts, list):
        return ""
    texts = [
        p["text"]
        for p in parts
        if isinstance(p, dict)
        and p.get("type") == "text"
        and isinstance(p.get("text"), str)
        and not p.get("synthetic")
        and not p.get("ignored")
    ]
    return "\n".join(texts).strip()


class OpenCodeClient:
    """Asks an OpenCode agent, one session per question; see the module docstring."""

    name = "opencode"

    def __init__(
        self,
        settings: Settings,
        *,
        model: str | None,
        agent: str | None,
        field: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        cfg = settings.analyzer
        url = (cfg.opencode_url or "").strip()
        if not url:
            raise ConfigError(
                "autonomous_runner.analyzer.opencode_url: required for the opencode backend "
                "(set OPENCODE_URL, e.g. http://opencode:4096; got nothing)"
            )
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port, parts = None, parts._replace(netloc="")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "autonomous_runner.analyzer.opencode_url: must be an http:// or https:// URL "
                f"with a host (got {redact_url(url)!r})"
            )
        model = (model or "").strip()
        provider_id, _, model_id = model.partition("/")
        if not provider_id or not model_id:
            raise ConfigError(
                f"autonomous_runner.{field}.model: the opencode backend needs provider/model, "
                f"e.g. openrouter/openai/gpt-4o-mini (got {model or None!r})"
            )
        if not agent:
            raise ConfigError(f"autonomous_runner.{field}.agent: must name an OpenCode agent (got '')")
        password = cfg.opencode_password.get_secret_value() if cfg.opencode_password else ""
        username = USERNAME
        if parts.username is not None or parts.password is not None:
            # Credentials in the URL work too, but never travel in it (nor into logs).
            username = unquote(parts.username or "") or USERNAME
            password = password or unquote(parts.password or "")
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if port:
            netloc = f"{netloc}:{port}"
        self.base_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.model = model
        self.provider_id, self.model_id = provider_id, model_id
        self.agent = agent
        self.has_password = bool(password)
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            auth=httpx.BasicAuth(username, password) if password else None,
            headers={"User-Agent": f"autonomous-runner/{__version__}"},
            timeout=httpx.Timeout(settings.timeouts.symbol_timeout_seconds, connect=CONNECT_SECONDS),
            transport=transport,
            follow_redirects=False,
        )
        #: Session creations and clean-ups that must finish even if their analysis is cancelled.
        self._background: set[asyncio.Task[Any]] = set()

    # --- the question -----------------------------------------------------------------------

    async def ask(self, ask: Ask) -> Reply:
        """One session: the question to the agent, its answer, the session removed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ask.timeout
        agent = ask.agent or self.agent
        provenance: dict[str, Any] = {
            "analyzer": self.name,
            "requested_model": self.model,
            "prompt_hash": prompt_hash(ask.system, ask.user),
        }
        session_id: str | None = None
        sending: asyncio.Task[httpx.Response] | None = None
        finished = False
        try:
            session_id = await self._start_session(ask.title or ask.schema_name, deadline)
            # The prompt runs as its own task: if we are cancelled, it is not cut off at once
            # but aborted on the server first (see ``_remove``).
            sending = self._spawn(
                self._request(
                    "POST", f"/session/{session_id}/message", deadline, json=self._prompt(ask, agent)
                )
            )
            response = await asyncio.shield(sending)
            finished = True  # the server answered: its run is over, whatever the answer says
            reply = await self._reply(response, deadline, agent)
            return self._interpret(reply, provenance)
        finally:
            if session_id is not None:
                await self._cleanup(session_id, sending=None if finished else sending, abort=not finished)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _start_session(self, title: str, deadline: float) -> str:
        """Create the session; if we are cancelled meanwhile, delete it once it exists.

        The server may have created it already when the cancellation lands, and then only the
        reply would tell us its id: so the creation runs as its own (shielded) task.
        """
        creating = self._spawn(self._create_session(title, deadline))
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            # A task of its own, started now, so that ``aclose`` waits for it.
            self._spawn(self._remove_once_created(creating))
            raise

    async def _remove_once_created(self, creating: asyncio.Task[str]) -> None:
        try:
            session_id = await creating
        except asyncio.CancelledError:
            if creating.cancelled():
                return  # the creation was cut off: there is no session we could know of
            raise
        except Exception:
            return  # the creation failed: no session
        await self._remove(session_id, abort=False)

    async def _create_session(self, title: str, deadline: float) -> str:
        response = await self._request("POST", "/session", deadline, json={"title": title})
        if response.status_code != 200:
            raise self._http_error(response, "creating a session", vanished=False)
        body = self._json(response, "creating a session")
        session_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(session_id, str) or not session_id:
            raise TransientError("OpenCode created a session without an id")
        log.debug("opencode session %s: %s", session_id, title)
        return session_id

    def _prompt(self, ask: Ask, agent: str) -> dict[str, Any]:
        prompt: dict[str, Any] = {
            "agent": agent,
            "model": {"providerID": self.provider_id, "modelID": self.model_id},
            "system": ask.system,
            "parts": [{"type": "text", "text": ask.user}],
            "format": {"type": "json_schema", "schema": ask.schema},
        }
        if not ask.agent_tools:
            # Whatever the agent allows, this message may only answer.
            prompt["tools"] = {"*": False, STRUCTURED_TOOL: True}
        return prompt

    async def _reply(self, response: httpx.Response, deadline: float, agent: str) -> dict[str, Any]:
        if response.status_code == 500:
            raise await self._diagnose(response, deadline, agent)
        if response.status_code != 200:
            # a 404 here: the session vanished under us; a new attempt makes a new one
            raise self._http_error(response, "sending the prompt", vanished=True)
        reply = self._json(response, "sending the prompt")
        if not isinstance(reply, dict) or not isinstance(reply.get("info"), dict):
            raise TransientError("OpenCode answered the prompt without a message")
        return reply

    def _interpret(self, reply: dict[str, Any], provenance: dict[str, Any]) -> Reply:
        info: dict[str, Any] = reply["info"]
        provider, model = info.get("providerID"), info.get("modelID")
        provenance["model"] = f"{provider}/{model}" if provider and model else self.model
        tokens = info.get("tokens")
        if isinstance(tokens, dict):
            provenance["tokens_in"] = _count(tokens.get("input"))
            provenance["tokens_out"] = _count(tokens.get("output"))
        cost = info.get("cost")
        # OpenCode prices tokens from its model table; 0 means "unknown price" as often as "free".
        if isinstance(cost, int | float) and not isinstance(cost, bool) and cost > 0:
            provenance["cost_usd"] = float(cost)
        error = info.get("error")
        text = text_of(reply.get("parts"))
        if error:
            failure = error_from_info(error)
            if isinstance(failure, InvalidOutput) and text and info.get("structured") is None:
                try:  # no tool call, but the text may still be the JSON object asked for
                    return Reply(extract_json(text), provenance)
                except InvalidOutput as exc:
                    raise InvalidOutput(f"{failure} and the text answer is unusable: {exc}") from exc
            raise failure
        if info.get("structured") is not None:
            return Reply(info["structured"], provenance)
        return Reply(extract_json(text), provenance)

    async def _diagnose(self, response: httpx.Response, deadline: float, agent: str) -> AnalyzerError:
        """A 500 on the prompt: an unknown agent or model, or a server fault?"""
        message = _body_message(response)
        try:
            agents = await self._request("GET", "/agent", deadline)
            listed = agents.json() if agents.status_code == 200 else None
            if isinstance(listed, list) and listed:
                names = {a.get("name") for a in listed if isinstance(a, dict)}
                if agent not in names:
                    return PermanentError(f"the OpenCode server has no agent {agent!r}")
            providers = await self._request("GET", "/config/providers", deadline)
            if providers.status_code == 200:
                known = {
                    p.get("id"): p.get("models") or {}
                    for p in providers.json().get("providers", [])
                    if isinstance(p, dict)
                }
                if self.provider_id not in known:
                    return PermanentError(f"the OpenCode server has no provider {self.provider_id!r}")
                if self.model_id not in known[self.provider_id]:
                    return PermanentError(f"the OpenCode server has no model {self.model!r}")
        except (AnalyzerError, ValueError, AttributeError, TypeError):
            pass
        return TransientError(f"OpenCode HTTP 500 sending the prompt: {message}")

    # --- HTTP --------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, deadline: float, **kwargs: Any) -> httpx.Response:
        """One request that takes at most what is left before ``deadline``.

        httpx's read timeout restarts with every chunk, so the whole call is bounded by
        ``asyncio.timeout`` as well.
        """
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TransientError(f"no time left for {method} {path}")
        timeout = httpx.Timeout(remaining, connect=min(CONNECT_SECONDS, remaining))
        try:
            async with asyncio.timeout(remaining):
                return await self.client.request(method, path, timeout=timeout, **kwargs)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise TransientError(
                f"no answer from the OpenCode server within {remaining:.1f}s ({method} {_route(path)})"
            ) from exc
        except httpx.HTTPError as exc:
            raise TransientError(
                f"cannot reach the OpenCode server at {self.base_url}: {type(exc).__name__}"
            ) from exc

    def _http_error(self, response: httpx.Response, doing: str, *, vanished: bool) -> AnalyzerError:
        status = response.status_code
        if status == 401:
            if self.has_password:
                return AuthError(
                    "the OpenCode server refused our credentials (HTTP 401): check OPENCODE_SERVER_PASSWORD"
                )
            return AuthError(
                "the OpenCode server requires a password (HTTP 401): set OPENCODE_SERVER_PASSWORD"
            )
        message = f"OpenCode HTTP {status} {doing}: {_body_message(response)}"
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        return error_for_status(status, message, retry_after, vanished=vanished)

    @staticmethod
    def _json(response: httpx.Response, doing: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise TransientError(f"OpenCode answered {doing} with a body that is not JSON") from exc

    # --- clean-up ----------------------------------------------------------------------------

    async def _cleanup(
        self, session_id: str, *, abort: bool, sending: asyncio.Task[httpx.Response] | None = None
    ) -> None:
        """Abort (if the run may still be going) and delete the session, whatever happens to us.

        Runs as its own task with its own timeout, shielded: a cancelled analysis still removes
        its session. If we are cancelled again while waiting, the task goes on and ``aclose``
        waits for it.
        """
        await asyncio.shield(self._spawn(self._remove(session_id, abort, sending)))

    async def _remove(
        self, session_id: str, abort: bool, sending: asyncio.Task[httpx.Response] | None = None
    ) -> None:
        """Abort until the prompt call returns (its run is then over), then delete the session.

        One abort is not always enough: a prompt that reaches the server just after the abort
        starts a run anyway, and a deleted session's run goes on until the model answers. So
        while our prompt call is still open, abort again until the server ends it.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        abort_until = started + ABORT_SECONDS
        try:
            while abort:
                try:
                    response = await self._request(
                        "POST", f"/session/{session_id}/abort", min(abort_until, loop.time() + 1.0)
                    )
                    if response.status_code != 200:
                        log.warning(
                            "could not abort OpenCode session %s: HTTP %d", session_id, response.status_code
                        )
                except AnalyzerError as exc:
                    log.warning("could not abort OpenCode session %s: %s", session_id, exc)
                if sending is None or sending.done():
                    break
                await asyncio.wait([sending], timeout=max(0.0, min(0.25, abort_until - loop.time())))
                if sending.done() or loop.time() >= abort_until:
                    break
        finally:
            if sending is not None:
                if sending.done():
                    if not sending.cancelled():
                        sending.exception()  # seen: it belongs to a call that was given up
                else:
                    sending.cancel()
        try:
            response = await self._request("DELETE", f"/session/{session_id}", started + CLEANUP_SECONDS)
            if response.status_code not in (200, 404):
                log.warning("could not delete OpenCode session %s: HTTP %d", session_id, response.status_code)
        except AnalyzerError as exc:
            log.warning("could not delete OpenCode session %s: %s", session_id, exc)

    async def aclose(self) -> None:
        """Wait for the clean-ups still running (a session being created, then removed), then
        close the HTTP client."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=2 * CLEANUP_SECONDS + 1)
        await self.client.aclose()


class OpenCodeAnalyzer(AskingAnalyzer):
    """The signal stage through an OpenCode agent (``analyzer.agent``, ``signal-generator``)."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        cfg = settings.analyzer
        client = OpenCodeClient(
            settings, model=cfg.model, agent=cfg.agent, field="analyzer", transport=transport
        )
        super().__init__(client, title=lambda request: session_title("signal", request))


def session_title(stage: str, request: AnalysisRequest) -> str:
    """``signal ETH/USD 2026-11-23T14:05Z cycle ... attempt 2``: who asked what, for the server's logs."""
    title = f"{stage} {request.symbol} {request.scheduled_minute:%Y-%m-%dT%H:%M}Z"
    if request.cycle_id:
        title += f" cycle {request.cycle_id}"
    if request.attempt > 1:
        title += f" attempt {request.attempt}"
    return title


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _route(path: str) -> str:
    """The path with the session id left out, for messages."""
    return "/".join("{id}" if p.startswith("ses_") else p for p in path.split("/"))
