"""What the routes check: the bearer token, integer parameters, JSON bodies."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from runner.web.requests import BadRequest, CycleBody, KillSwitchBody, int_param, parse, token_problem

TOKEN = SecretStr("s3cret-token")


@pytest.mark.parametrize(
    ("configured", "header", "expected"),
    [
        (None, "Bearer s3cret-token", 403),
        (SecretStr(""), "Bearer s3cret-token", 403),
        (TOKEN, None, 401),
        (TOKEN, "", 401),
        (TOKEN, "Bearer", 401),
        (TOKEN, "Bearer ", 401),
        (TOKEN, "Basic s3cret-token", 401),
        (TOKEN, "s3cret-token", 401),
        (TOKEN, "Bearer s3cret-tokeN", 401),
        (TOKEN, "Bearer s3cret-token-and-more", 401),
        (TOKEN, "Bearer s3cret-token", None),
        (TOKEN, "bearer   s3cret-token  ", None),
    ],
)
def test_a_write_needs_a_configured_token_sent_as_a_bearer(
    configured: SecretStr | None, header: str | None, expected: int | None
) -> None:
    problem = token_problem(configured, header)

    assert (problem[0] if problem else None) == expected
    if problem:
        assert "s3cret" not in problem[1]  # no answer repeats the token


def test_without_a_configured_token_the_answer_says_how_to_configure_one() -> None:
    assert token_problem(None, None) == (
        403,
        "writes are disabled: no API token is configured (set RUNNER_API_TOKEN)",
    )


@pytest.mark.parametrize("raw", ["0", "1001", "-1", "1.0", "1e3", "", " ", "abc", "٣"])
def test_an_integer_parameter_out_of_bounds_or_not_an_integer_is_refused(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        int_param({"limit": raw}, "limit", 50, 1, 1000)

    assert info.value.status == 422
    assert str(info.value).startswith("limit: must be an integer from 1 to 1000")


def test_an_integer_parameter_in_bounds_or_absent() -> None:
    assert int_param({"limit": "1000"}, "limit", 50, 1, 1000) == 1000
    assert int_param({"limit": " 7 "}, "limit", 50, 1, 1000) == 7
    assert int_param({}, "limit", 50, 1, 1000) == 50


def test_bodies_are_validated_strictly_and_explained_in_one_line() -> None:
    assert parse(KillSwitchBody, {"on": True, "reason": "maintenance"}).reason == "maintenance"
    assert parse(KillSwitchBody, {"on": False}).on is False
    assert parse(CycleBody, {}).symbols is None
    assert parse(CycleBody, {"symbols": ["ETH/USD"]}).symbols == ["ETH/USD"]
    for model, body, message in [
        (KillSwitchBody, {"on": 1}, "body.on: Input should be a valid boolean (got 1)"),
        (KillSwitchBody, {"on": True}, "body: reason is required when on is true"),
        (KillSwitchBody, {}, "body.on: required"),
        (KillSwitchBody, {"on": False, "x": 1}, "body.x: unknown field"),
        (CycleBody, {"symbols": ["ETH/USD", "btc"]}, "body.symbols.1: symbol must look like BASE/QUOTE"),
    ]:
        with pytest.raises(BadRequest) as info:
            parse(model, body)
        assert str(info.value).startswith(message), str(info.value)
        assert "\n" not in str(info.value)
