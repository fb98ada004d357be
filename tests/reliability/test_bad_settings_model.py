"""Scenario 28 (settings, generated): every setting of the sections this round added or grew
(pipeline and its stages, risk, outcomes, market, redis, notify, archive, api) given bad values
made from its own type and bounds in ``runner.config.Settings``, once through the environment
and once through the config file.

A setting added to one of these sections is covered without a new line here. Each case runs
``runner config`` in-process (the same ``main`` the console script calls, so click's and the
settings' errors take their real path), which loads the settings and touches no server: exit
2, one stderr line ``runner: error: autonomous_runner.<setting>...``, no traceback, no secret.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
import pytest
import yaml
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import NoDecode

from runner import cli
from runner.config import ENV_ALIASES, ROOT_KEY, Settings
from tests.conftest import CliResult, drop_settings_variables
from tests.integration.helpers import assert_one_error_line

#: The sections of this round's settings.
SECTIONS = ("pipeline", "risk", "outcomes", "market", "redis", "notify", "archive", "api")

PG_PASSWORD = "pg-canary-5ecret"
TOKEN = "api-canary-token-0123456789"
HOOK_TOKEN = "hook-canary-9f8e7d"
#: Secrets set beside every case; none of them may appear in what the runner prints.
SECRETS = {
    "RUNNER_API_TOKEN": TOKEN,
    "POSTGRES_URL": f"postgresql://u:{PG_PASSWORD}@127.0.0.1:9/archive",
    "RUNNER_NOTIFY__URLS": f"json://127.0.0.1:9/{HOOK_TOKEN}",
}


@dataclass(frozen=True)
class Bad:
    """A bad value of one setting: as the environment spells it, and as YAML would."""

    path: tuple[str, ...]
    why: str
    env: str | None
    file: Any

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def variable(self) -> str:
        return "RUNNER_" + "__".join(self.path).upper()


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any], bool]:
    """The type under ``Annotated`` and ``| None``, its constraints, and whether it is optional."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            for item in extra:
                metadata = [*metadata, *(item.metadata if isinstance(item, FieldInfo) else [item])]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation, metadata, optional


def _bounds(metadata: list[Any]) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low excluded, high excluded) from annotated-types constraints."""
    low = high = None
    low_open = high_open = False
    for item in metadata:
        if isinstance(item, at.Gt):
            low, low_open = float(item.gt), True  # type: ignore[arg-type]
        elif isinstance(item, at.Ge):
            low = float(item.ge)  # type: ignore[arg-type]
        elif isinstance(item, at.Lt):
            high, high_open = float(item.lt), True  # type: ignore[arg-type]
        elif isinstance(item, at.Le):
            high = float(item.le)  # type: ignore[arg-type]
    return low, high, low_open, high_open


def _scalar_bad(kind: Any, metadata: list[Any]) -> list[tuple[str, Any]]:
    """(why, value) pairs no setting of this type and these bounds takes; values as YAML gives them."""
    if kind is bool:
        return [("not a boolean", "perhaps"), ("a number that is no switch", 7)]
    if typing.get_origin(kind) is Literal:
        return [("not one of the choices", "no-such-choice"), ("a number", 3)]
    if kind is SecretStr:
        # A secret given the wrong type: the message may say what it got only as ***.
        return [("a mapping holding a secret", {"password": PG_PASSWORD})]
    if kind is str:
        out: list[tuple[str, Any]] = [("a mapping", {"a": 1})]
        if any(isinstance(m, at.MinLen) and m.min_length > 0 for m in metadata):
            out.append(("empty", ""))
        return out
    if kind in (int, float):
        low, high, low_open, high_open = _bounds(metadata)
        out = [("a word", "many"), ("a list", [1])]
        if kind is int:
            out.append(("fractional", 2.5))
        if low is not None:
            out.append(("below its least", low if low_open else low - 1))
        if high is not None:
            out.append(("above its most", high if high_open else high + 1))
        if kind is float and (low is not None or high is not None):
            out.append(("not a number", math.nan))
        return [(w, int(v) if kind is int and isinstance(v, float) and v.is_integer() else v) for w, v in out]
    return []


def _env_text(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value if isinstance(value, str) else json.dumps(value)


def _cases_of(model: type[BaseModel], path: tuple[str, ...]) -> list[Bad]:
    out = [Bad((*path, "no_such_setting"), "unknown", "1", 1)]
    for name, info in model.model_fields.items():
        here = (*path, name)
        kind, metadata, _ = _unwrap(info.annotation, list(info.metadata))
        no_decode = any(m is NoDecode or isinstance(m, NoDecode) for m in info.metadata)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out.append(Bad(here, "a section given a number", None, 5))
            if not no_decode:
                out.append(Bad(here, "a section that is not JSON", "{broken", None))
            out += _cases_of(kind, here)
            continue
        if typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            item_kind, item_meta, _ = _unwrap(item, [])
            out.append(Bad(here, "a list given a mapping", '{"a": 1}', {"a": 1}))
            if not no_decode:
                out.append(Bad(here, "a list that is not JSON", "a,b", None))
            for why, value in _scalar_bad(item_kind, item_meta):
                if isinstance(value, list | dict) or (isinstance(value, float) and math.isnan(value)):
                    continue  # JSON has no NaN; nested containers say nothing new
                out.append(Bad(here, f"an item {why}", json.dumps([value]), [value]))
            continue
        for why, value in _scalar_bad(kind, metadata):
            # The environment is text: a mapping or a list there is one more word.
            env = None if isinstance(value, list | dict) or value == "" else _env_text(value)
            out.append(Bad(here, why, env, value))
    return out


def generated() -> list[Bad]:
    out: list[Bad] = []
    for section in SECTIONS:
        kind = Settings.model_fields[section].annotation
        assert isinstance(kind, type)
        assert issubclass(kind, BaseModel)
        out += _cases_of(kind, (section,))
    return out


CASES = generated()
ENV_CASES = {f"{c.dotted}: {c.why}": c for c in CASES if c.env is not None}
FILE_CASES = {f"{c.dotted}: {c.why}": c for c in CASES if c.file is not None}


def run_cli(args: list[str]) -> CliResult:
    """``runner <args>`` in-process through the console script's ``main``."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["runner", *args]
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    return CliResult(code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    drop_settings_variables(monkeypatch)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def _check(res: CliResult, case: Bad) -> str:
    line = assert_one_error_line(res, 2)
    head = f"runner: error: {ROOT_KEY}.{case.dotted}"
    assert line.startswith(head), (line, head)
    for secret in (PG_PASSWORD, TOKEN, HOOK_TOKEN):
        assert secret not in res.stdout + res.stderr, line
    return line


def test_every_section_of_this_round_has_cases() -> None:
    """Every leaf setting of the sections named above has at least one generated bad value
    (a setting whose type the generator does not know would be left out silently otherwise)."""

    def leaves(model: type[BaseModel], path: tuple[str, ...]) -> set[str]:
        found: set[str] = set()
        for name, info in model.model_fields.items():
            kind, _, _ = _unwrap(info.annotation, list(info.metadata))
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found |= leaves(kind, (*path, name))
            else:
                found.add(".".join((*path, name)))
        return found

    every: set[str] = set()
    for section in SECTIONS:
        kind = Settings.model_fields[section].annotation
        assert isinstance(kind, type)
        assert issubclass(kind, BaseModel)
        every |= leaves(kind, (section,))
    covered = {c.dotted for c in CASES}
    assert every - covered == set()


@pytest.mark.scenario("28")
@pytest.mark.parametrize("name", list(ENV_CASES))
def test_a_bad_setting_in_the_environment_exits_2(name: str, env: pytest.MonkeyPatch, measure) -> None:
    """`RUNNER_<SECTION>__<SETTING>=<bad>` (a value made from the setting's type and bounds):
    exit 2, one line starting with the setting's dotted path, no traceback, no secret shown
    (the API token, the archive's password and a webhook token are set beside it)."""
    case = ENV_CASES[name]
    alias = next((k for k, p in ENV_ALIASES.items() if tuple(p) == case.path), None)
    if alias:
        env.delenv(alias, raising=False)  # the alias would win over the setting's own variable
    env.setenv(case.variable, case.env or "")
    line = _check(run_cli(["config"]), case)
    measure.figures(variable=case.variable, value=(case.env or "")[:40], line=line[:160])


@pytest.mark.scenario("28")
@pytest.mark.parametrize("name", list(FILE_CASES))
def test_a_bad_setting_in_the_config_file_exits_2(
    name: str, env: pytest.MonkeyPatch, tmp_path: Path, measure
) -> None:
    """The same setting given a bad value in the YAML file (`--config`): exit 2, one line
    starting with the setting's dotted path, no traceback, no secret shown."""
    case = FILE_CASES[name]
    for alias, where in ENV_ALIASES.items():
        if tuple(where) == case.path:
            env.delenv(alias, raising=False)
    env.delenv(case.variable, raising=False)  # the environment wins over the file
    node: dict[str, Any] = {}
    body = node
    for part in case.path[:-1]:
        body = body.setdefault(part, {})
    body[case.path[-1]] = case.file
    path = tmp_path / "runner.yaml"
    path.write_text(yaml.safe_dump({ROOT_KEY: node}), encoding="utf-8")
    line = _check(run_cli(["config", "--config", str(path)]), case)
    measure.figures(value=repr(case.file)[:40], line=line[:160])


REDIS_PASSWORD = "redis-canary-pw"

#: ``REDIS_URL`` of every topology, wrong in one way each (a string setting: no type to make
#: bad values from, so listed); the password in them must never be shown.
REDIS_URLS = {
    "not a Redis scheme": f"http://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
    "sentinel without a master name": f"redis+sentinel://:{REDIS_PASSWORD}@127.0.0.1:26379",
    "sentinel with a bad db": f"redis+sentinel://:{REDIS_PASSWORD}@127.0.0.1:26379/mymaster/zero",
    "sentinel with a bad port": f"redis+sentinel://:{REDIS_PASSWORD}@127.0.0.1:26379,127.0.0.2:x/mymaster",
    "sentinel with an unknown option": f"redis+sentinel://:{REDIS_PASSWORD}@127.0.0.1/mymaster?sentinel_pass=x",
    "sentinel with TLS options but no TLS": (
        f"redis+sentinel://:{REDIS_PASSWORD}@127.0.0.1/mymaster?ssl_ca_certs=/ca.pem"
    ),
    "cluster with a path": f"redis+cluster://:{REDIS_PASSWORD}@127.0.0.1:7000/3",
    "cluster without a host": f"redis+cluster://:{REDIS_PASSWORD}@/",
    "cluster with a bad IPv6 node": f"redis+cluster://:{REDIS_PASSWORD}@[::1:7000/",
    "cluster with a db option": f"redis+cluster://:{REDIS_PASSWORD}@127.0.0.1:7000/?db=1",
    "TLS with a bad cert_reqs": f"rediss://:{REDIS_PASSWORD}@127.0.0.1:6379/0?ssl_cert_reqs=sometimes",
    "TLS cluster with a bad check_hostname": (
        f"rediss+cluster://:{REDIS_PASSWORD}@127.0.0.1:7000/?ssl_check_hostname=maybe"
    ),
    "unix socket without a path": f"unix://:{REDIS_PASSWORD}@",
}


@pytest.mark.scenario("28")
@pytest.mark.parametrize("name", list(REDIS_URLS))
def test_a_bad_redis_url_of_any_topology_exits_2(name: str, env: pytest.MonkeyPatch, measure) -> None:
    """`REDIS_URL` of a single server, a Sentinel set, a cluster or a unix socket, wrong in one
    way: exit 2, one line `autonomous_runner.redis.url: ...` saying what is wrong, the URL shown
    with its password as ***."""
    env.setenv("REDIS_URL", REDIS_URLS[name])
    res = run_cli(["config"])
    line = _check(res, Bad(("redis", "url"), name, REDIS_URLS[name], None))
    assert REDIS_PASSWORD not in res.stdout + res.stderr
    measure.figures(line=line[:200])


#: The lines a user meets most, word for word: (variable, value, the whole stderr line).
EXACT = {
    "a stage list that does not start with signal": (
        "RUNNER_PIPELINE__STAGES",
        '["score"]',
        "runner: error: autonomous_runner.pipeline.stages: must start with signal (got ['score'])",
    ),
    "a stage list that is not JSON": (
        "RUNNER_PIPELINE__STAGES",
        "signal,score",
        "runner: error: autonomous_runner.pipeline.stages (RUNNER_PIPELINE__STAGES): must be JSON for a "
        "list or a section, e.g. RUNNER_SYMBOLS='[\"ETH/USD\"]' (got 'signal,score')",
    ),
    "an unknown stage backend": (
        "RUNNER_PIPELINE__SCORE__BACKEND",
        "gpt",
        "runner: error: autonomous_runner.pipeline.score.backend: Input should be 'builtin', 'openai', "
        "'opencode' or 'plugin' (got 'gpt')",
    ),
    "the report switch misspelt": (
        "RUNNER_PIPELINE__REPORT",
        "of",
        "runner: error: autonomous_runner.pipeline.report: must be true or false, or a section as JSON "
        "(got 'of')",
    ),
    "a position size over 100 %": (
        "RUNNER_RISK__MAX_POSITION_SIZE_PCT",
        "150",
        "runner: error: autonomous_runner.risk.max_position_size_pct: Input should be less than or equal "
        "to 100 (got '150')",
    ),
    "a horizon of 0 minutes": (
        "RUNNER_OUTCOMES__HORIZONS_MINUTES",
        "[0, 15]",
        "runner: error: autonomous_runner.outcomes.horizons_minutes[0]: Input should be greater than or "
        "equal to 1 (got 0)",
    ),
    "a webhook URL of no service": (
        "RUNNER_NOTIFY__URLS",
        f"slak://{HOOK_TOKEN}",
        "runner: error: autonomous_runner.notify.urls[0]: Apprise has no service slak:// (slak://***)",
    ),
    "an archive URL that is not PostgreSQL": (
        "POSTGRES_URL",
        f"mysql://u:{PG_PASSWORD}@db/archive",
        "runner: error: autonomous_runner.archive.postgres_url: must be a postgresql:// URL, got "
        "'mysql://u:***@db/archive'",
    ),
    "an API token with the newline of its file": (
        "RUNNER_API_TOKEN",
        TOKEN + "\n",
        "runner: error: autonomous_runner.api.token: has whitespace at its start or end (a newline from "
        "the file it came from?); no client can send it",
    ),
    "a Sentinel URL without a master": (
        "REDIS_URL",
        f"redis+sentinel://:{REDIS_PASSWORD}@127.0.0.1:26379",
        "runner: error: autonomous_runner.redis.url: names no master: use "
        "redis+sentinel://host:26379/<master name>, got 'redis+sentinel://:***@127.0.0.1:26379'",
    ),
}


@pytest.mark.scenario("28")
@pytest.mark.parametrize("name", list(EXACT))
def test_the_settings_users_get_wrong_most_say_so_word_for_word(
    name: str, env: pytest.MonkeyPatch, measure
) -> None:
    """The mistakes a user makes most (a stage list, a backend, the report switch, a risk limit,
    a horizon, a notify URL, the archive URL, a Sentinel URL): the whole line, word for word."""
    variable, value, expected = EXACT[name]
    env.setenv(variable, value)
    res = run_cli(["config"])
    line = assert_one_error_line(res, 2)
    measure.figures(variable=variable, line=line[:200])
    assert line == expected
    for secret in (PG_PASSWORD, TOKEN, HOOK_TOKEN, REDIS_PASSWORD):
        assert secret not in res.stdout + res.stderr
