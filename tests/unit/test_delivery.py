"""Delivery through Apprise to a real local HTTP receiver, and the flow that makes a notification
arrive once: claim, send to every URL at once within the timeout, settle, retry later."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from runner import delivery, notify
from runner.config import Settings, load_settings
from runner.delivery import Sent, Target, announce, check_url, send, settle_plan
from runner.store.keys import Keys
from runner.store.outbox import Entry, Outbox
from tests.support.receiver import Receiver

NOW = 1_795_000_000.0
SECRET = "T0KEN-s3cr3t"
PASSWORD = "pa55w0rd"


def settings_for(*urls: str, **notify_settings: Any) -> Settings:
    return load_settings(
        None, {"instance_id": "unit-runner", "notify": {"urls": list(urls), **notify_settings}}, environ={}
    )


def notice(event: notify.Event = notify.Event.KILL_SWITCH_ON, at: float = NOW) -> notify.Notice:
    seen = notify.Seen(now=at, instance_id="ops", command="runner kill-switch on")
    return notify.kill_switch_on({"on": "1", "at": f"{at:.3f}", "reason": "maintenance", "by": "ops"}, seen)


def secret_url(receiver: Receiver) -> str:
    return receiver.url(f"hook/{SECRET}", auth=f"user:{PASSWORD}")


# URLs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "json://127.0.0.1:8080/hook",
        "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general",
        "discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js",
        "ntfy://alerts-topic",
        "mailto://user:password@example.com",
    ],
)
def test_apprise_urls_of_the_common_services_are_accepted(url: str) -> None:
    assert check_url(url) is None


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("slak://T1JJ3T3L2/A1BRTD4JD/s3cr3t-token", "Apprise has no service slak:// (slak://***)"),
        ("json://", "Apprise cannot parse this json:// URL"),
        ("just-a-s3cr3t-token", "must be an Apprise URL"),
    ],
)
def test_a_url_apprise_cannot_use_is_named_by_its_service_only(url: str, said: str) -> None:
    problem = check_url(url)

    assert problem is not None
    assert said in problem
    assert "s3cr3t" not in problem


def test_a_target_is_shown_and_remembered_without_its_secret() -> None:
    target = Target(1, f"json://user:{PASSWORD}@127.0.0.1:8080/hook/{SECRET}")

    assert target.label == "notify.urls[1] (json://127.0.0.1:8080/***)"
    assert SECRET not in target.key
    assert PASSWORD not in target.key
    assert target.key == Target(5, target.url).key
    assert SECRET not in repr(target)


# Sending ---------------------------------------------------------------------------------------------


async def test_a_message_reaches_the_receiver_as_apprise_json(receiver: Receiver) -> None:
    (sent,) = await send([Target(0, secret_url(receiver))], "the title", "line one\nline two", "warning", 2)

    assert sent.ok, sent.error
    (got,) = receiver.accepted
    assert got.path == f"/hook/{SECRET}"
    assert got.title == "the title"
    assert got.message == "line one\nline two"
    assert got.body["type"] == "warning"


@pytest.mark.parametrize("mode", ["error", "down", "slow"])
async def test_a_receiver_that_refuses_is_one_masked_error(receiver: Receiver, mode: str) -> None:
    if mode == "down":
        receiver.down()
    elif mode == "slow":
        receiver.slow()
    else:
        receiver.mode = "error"

    (sent,) = await send([Target(0, secret_url(receiver))], "t", "b", "info", 0.5, [SECRET, PASSWORD])
    receiver.gate.set()

    assert not sent.ok
    assert sent.error
    assert "\n" not in sent.error
    assert SECRET not in sent.error
    assert PASSWORD not in sent.error
    assert receiver.accepted == []


async def test_every_url_is_sent_to_at_once(receiver: Receiver) -> None:
    # The first receiver answers only once the other two have the message: sent one after the
    # other, it would hold the send until the timeout and fail.
    held = Receiver(delivery_port())
    held.start()
    held.slow(answer=True)
    release = threading.Thread(
        target=lambda: wait_until(lambda: len(receiver.accepted) == 2) and held.gate.set(), daemon=True
    )
    release.start()
    try:
        sent = await send(
            [Target(0, held.url("held")), Target(1, receiver.url("a")), Target(2, receiver.url("b"))],
            "t",
            "b",
            "info",
            30.0,
        )
    finally:
        held.stop()

    assert [s.ok for s in sent] == [True, True, True]
    assert sorted(r.path for r in receiver.accepted) == ["/a", "/b"]
    assert [r.path for r in held.accepted] == ["/held"]


def wait_until(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def delivery_port() -> int:
    from tests.support.receiver import free_port

    return free_port()


# What is written back after sending -------------------------------------------------------------------


def test_settling_counts_each_send_and_keeps_what_some_url_refused() -> None:
    a, b = Target(0, "json://a/x"), Target(1, "json://b/y")
    ok = Entry("e1", "kill_switch_on", "t", "b", "warning", NOW, attempts=1)
    half = Entry("e2", "symbol_paused", "t", "b", "warning", NOW, attempts=2)
    last = Entry("e3", "breaker_opened", "t", "b", "failure", NOW, attempts=5)
    old = Entry("e4", "recovered", "t", "b", "success", NOW - 90000, attempts=1)

    items, counters, report = settle_plan(
        [
            (ok, [Sent(a, True), Sent(b, True)]),
            (half, [Sent(a, True), Sent(b, False, "HTTP 500")]),
            (last, [Sent(a, False, "refused")]),
        ],
        [old],
        max_attempts=5,
    )

    assert [(i.id, i.remove) for i in items] == [("e1", True), ("e2", False), ("e3", True)]
    assert items[1].done == (a.key,)
    assert items[1].error == "HTTP 500"
    assert counters == {
        'notifications_total{event="kill_switch_on",result="sent"}': 1.0,
        'notifications_total{event="symbol_paused",result="failed"}': 1.0,
        'notifications_total{event="breaker_opened",result="dropped"}': 1.0,
        'notifications_total{event="recovered",result="dropped"}': 1.0,
    }
    assert report.sent == ["e1"]
    assert report.failed == ["e2", "e3", "e4"]
    assert report.warnings == [
        "notification symbol_paused not delivered to notify.urls[1] (json://b/***): HTTP 500; "
        "the next run retries it (attempt 2 of 5)",
        "notification breaker_opened not delivered to notify.urls[0] (json://a/***): refused; "
        "given up after 5 attempts",
        "notification recovered dropped: still not delivered a day later",
    ]


# The whole flow --------------------------------------------------------------------------------------


async def test_a_notice_seen_twice_is_sent_once(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(receiver.url())

    first = await announce(any_redis, settings, [notice()], shard_key="0-1", now=NOW)
    second = await announce(any_redis, settings, [notice()], shard_key="0-1", now=NOW + 1)

    assert first.sent == [notice().id]
    assert second.sent == []
    assert receiver.events() == ["kill_switch_on"]
    counters = await any_redis.hgetall(Keys().counters("0-1"))
    assert counters == {'notifications_total{event="kill_switch_on",result="sent"}': "1"}


async def test_a_failed_notice_arrives_on_a_later_run_once(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(secret_url(receiver))
    receiver.mode = "error"

    failed = await announce(any_redis, settings, [notice()], shard_key="0-1", now=NOW)
    receiver.up()
    retried = await announce(any_redis, settings, [], shard_key="0-1", now=NOW + 60)
    idle = await announce(any_redis, settings, [notice()], shard_key="0-1", now=NOW + 120)

    assert failed.failed == [notice().id]
    (warning,) = failed.warnings
    assert warning.startswith("notification kill_switch_on not delivered to notify.urls[0] (json://127.0.0.1")
    assert SECRET not in warning
    assert PASSWORD not in warning
    assert retried.sent == [notice().id]
    assert idle.sent == []
    assert idle.warnings == []
    assert receiver.events() == ["kill_switch_on"]
    stored = str(await any_redis.hgetall(Keys().notify_outbox)) + str(await any_redis.keys("*"))
    assert SECRET not in stored
    assert PASSWORD not in stored


async def test_a_url_that_took_it_does_not_get_it_again(any_redis: Any, receiver: Receiver) -> None:
    failing = Receiver(delivery_port())
    failing.start()
    failing.mode = "error"
    settings = settings_for(receiver.url("good"), failing.url("bad"))
    try:
        await announce(any_redis, settings, [notice()], shard_key="0-1", now=NOW)
        failing.up()
        await announce(any_redis, settings, [], shard_key="0-1", now=NOW + 60)
        assert failing.events() == ["kill_switch_on"]
    finally:
        failing.stop()

    assert [r.path for r in receiver.accepted] == ["/good"]


async def test_after_max_attempts_a_notice_is_given_up(any_redis: Any, receiver: Receiver) -> None:
    settings = settings_for(receiver.url(), max_attempts=2)
    receiver.mode = "error"

    reports = [
        await announce(any_redis, settings, [notice()], shard_key="0-1", now=NOW + 60 * i) for i in range(3)
    ]

    assert [len(r.failed) for r in reports] == [1, 1, 0]
    assert "given up after 2 attempts" in reports[1].warnings[0]
    assert await Outbox(any_redis, Keys()).pending() == []
    counters = await any_redis.hgetall(Keys().counters("0-1"))
    assert counters == {
        'notifications_total{event="kill_switch_on",result="failed"}': "1",
        'notifications_total{event="kill_switch_on",result="dropped"}': "1",
    }


async def test_without_urls_nothing_is_claimed(any_redis: Any) -> None:
    report = await announce(any_redis, settings_for(), [notice()], shard_key="0-1", now=NOW)

    assert report == delivery.Report()
    assert await any_redis.keys("*") == []


async def test_redis_failing_is_a_warning_not_an_error(receiver: Receiver) -> None:
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = aioredis.Redis(port=delivery_port(), retry=Retry(NoBackoff(), 0), decode_responses=True)
    try:
        report = await announce(dead, settings_for(receiver.url()), [notice()], shard_key="0-1", now=NOW)
    finally:
        await dead.aclose()

    (warning,) = report.warnings
    assert warning.startswith("notifications not sent: Redis unavailable")
    assert receiver.accepted == []
