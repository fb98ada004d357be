"""The notify settings and the masking of notification URLs, which carry their services' tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config import load_settings, public_view
from runner.errors import ConfigError
from runner.redact import mask, masked_url, secret_values, url_secrets

TOKEN = "T0KEN-s3cr3t"
PASSWORD = "pa55w0rd"
JSON_URL = f"json://user:{PASSWORD}@127.0.0.1:8080/hook/{TOKEN}"
SLACK_URL = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general"


def error_of(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(None, None)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults() -> None:
    n = load_settings(None, None, environ={}).notify

    assert n.urls == []
    assert (n.timeout_seconds, n.max_attempts, n.failing_cycles) == (3, 5, 3)


def test_the_environment_takes_comma_separated_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    mail = "mailto://user:password@example.com?to=a@example.com,b@example.com"
    monkeypatch.setenv("RUNNER_NOTIFY__URLS", f"{JSON_URL}, {SLACK_URL},{mail},")

    urls = [u.get_secret_value() for u in load_settings(None, None).notify.urls]

    assert urls == [JSON_URL, SLACK_URL, mail]


def test_the_environment_takes_a_json_list_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_NOTIFY__URLS", f'["{JSON_URL}", "{SLACK_URL}"]')

    assert len(load_settings(None, None).notify.urls) == 2


def test_a_yaml_file_takes_a_list(tmp_path: Path) -> None:
    path = tmp_path / "runner.yaml"
    path.write_text(
        f"autonomous_runner:\n  notify:\n    urls: ['{SLACK_URL}']\n    failing_cycles: 5\n", encoding="utf-8"
    )

    n = load_settings(path, None, environ={}).notify

    assert [u.get_secret_value() for u in n.urls] == [SLACK_URL]
    assert n.failing_cycles == 5


def test_a_url_apprise_cannot_parse_names_the_field_and_hides_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = error_of(monkeypatch, RUNNER_NOTIFY__URLS=f"{JSON_URL},slak://{TOKEN}/{PASSWORD}")

    assert message == "autonomous_runner.notify.urls[1]: Apprise has no service slak:// (slak://***)"


def test_a_url_of_the_wrong_type_hides_the_value(tmp_path: Path) -> None:
    path = tmp_path / "runner.yaml"
    path.write_text(f"autonomous_runner:\n  notify:\n    urls: [{{token: {TOKEN}}}]\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_settings(path, None, environ={})

    assert str(info.value).startswith("autonomous_runner.notify.urls[0]:")
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("RUNNER_NOTIFY__TIMEOUT_SECONDS", "-1", "autonomous_runner.notify.timeout_seconds"),
        ("RUNNER_NOTIFY__TIMEOUT_SECONDS", "0", "autonomous_runner.notify.timeout_seconds"),
        ("RUNNER_NOTIFY__MAX_ATTEMPTS", "0", "autonomous_runner.notify.max_attempts"),
        ("RUNNER_NOTIFY__FAILING_CYCLES", "none", "autonomous_runner.notify.failing_cycles"),
    ],
)
def test_bad_numbers_name_their_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    assert error_of(monkeypatch, **{name: value}).startswith(f"{field}: ")


def test_runner_config_shows_the_urls_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_NOTIFY__URLS", f"{JSON_URL},{SLACK_URL}")

    view = public_view(load_settings(None, None))

    assert view["notify"]["urls"] == ["json://127.0.0.1:8080/***", "slack://***"]
    assert TOKEN not in str(view)
    assert PASSWORD not in str(view)


# Masking ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (JSON_URL, "json://127.0.0.1:8080/***"),
        ("jsons://hooks.example.com/x?token=abc", "jsons://hooks.example.com/***"),
        (SLACK_URL, "slack://***"),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://***"),
        ("ntfy://alerts-topic", "ntfy://***"),
        ("mailto://user:password@example.com", "mailto://***"),
        (
            "https://discord.com/api/webhooks/4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js",
            "https://discord.com/***",
        ),
        ("no-scheme-token", "***"),
    ],
)
def test_a_url_is_shown_by_its_service_and_a_web_hook_by_its_host(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_the_secret_parts_of_a_url_are_masked_in_free_text() -> None:
    text = (
        f"POST to 127.0.0.1:8080/hook/{TOKEN} as user:{PASSWORD} failed; "
        "slack T1JJ3T3L2 A1BRTD4JD TIiajkdnlazkcOXrIdevi7FQ; ntfy alerts-topic"
    )
    secrets = sorted(
        {s for u in (JSON_URL, SLACK_URL, "ntfy://alerts-topic") for s in url_secrets(u)},
        key=len,
        reverse=True,
    )

    masked = mask(text, secrets)

    for secret in (TOKEN, PASSWORD, "T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ", "alerts-topic"):
        assert secret not in masked
    assert "127.0.0.1:8080" in masked  # a web hook's host is an address, not a secret


def test_secret_values_cover_every_secret_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_NOTIFY__URLS", JSON_URL)
    settings = load_settings(
        None,
        {"analyzer": {"api_key": "sk-or-v1-key-0123456789", "opencode_password": "oc-pass-0123"}},
        environ={"REDIS_URL": "redis://:redis-pass-0123@127.0.0.1:6379/0"},
    )

    values = secret_values(settings)

    for secret in ("sk-or-v1-key-0123456789", "oc-pass-0123", "redis-pass-0123", TOKEN, PASSWORD, JSON_URL):
        assert secret in values
    assert values == sorted(values, key=len, reverse=True)
