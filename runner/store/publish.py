"""The atomic, idempotent, fenced publish (``scripts.PUBLISH``).

A document is published only while this run still holds its symbol's lock with exactly the
record it wrote (fencing), and only if its id was never published (idempotency): ``XADD`` to its
capped stream, ``PUBLISH`` to its channel, ``HSET`` of the latest document per symbol.

``Publisher`` coalesces: documents are handed over as they are ready (``submit`` returns a future
of their ``PublishResult``) and flushed in batches, so a cycle costs a few round trips however
many symbols it has, and a crash loses only the batch in flight. A document can follow another
(a score its signal): it is published only if that one was, in the same batch or an earlier one,
so a chain need not wait for a publish before its next stage unless that stage costs a call.
``DryPublisher`` writes nothing and reports every document published: a dry run is a different
publisher, not a branch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import redis.asyncio as aioredis

from runner.errors import RedisUnavailable, one_line
from runner.store import scripts
from runner.store.connection import redis_errors
from runner.store.keys import SIGNAL_ID_TTL_SECONDS, Keys

log = logging.getLogger(__name__)

#: Reports kept in the stream: a week of one-minute cycles of one shard.
REPORTS_MAXLEN = 10080


class PublishResult(StrEnum):
    """What became of one submitted document."""

    PUBLISHED = "published"
    #: Its id was published before (a re-run in the same minute): nothing written.
    DUPLICATE = "duplicate"
    #: This run no longer holds the symbol's lock: nothing written.
    FENCED = "fenced"
    #: Redis did not take the batch.
    ERROR = "error"
    #: The document it follows (its chain's earlier stage) was not published: nothing written.
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Target:
    """Where documents of one kind go: a capped stream, the latest-per-symbol hash, a channel."""

    stream: str
    latest: str
    channel: str
    maxlen: int
    #: The stream entry's field holding the document.
    field: str = "doc"
    #: The stream entry's field naming what the document is about.
    key_field: str = "symbol"
    #: ``hash``: the latest document per symbol; ``string``: the latest document of all.
    latest_kind: str = "hash"


@dataclass(frozen=True)
class Pending:
    """A document waiting to be published, with the lock record that entitles us to."""

    doc_id: str
    symbol: str
    doc: str
    lock_key: str
    lock_value: str
    target: Target
    #: Release the symbol's lock once the document is published (its chain is over).
    release: bool = True
    #: The publish of the document this one follows: it is published only if that one was.
    after: asyncio.Future[PublishResult] | None = field(default=None, compare=False)


def signal_target(keys: Keys, maxlen: int) -> Target:
    """The signal stream, latest hash and channel (stream field ``signal``)."""
    return Target(keys.stream, keys.latest, keys.channel, maxlen, field="signal")


@dataclass(frozen=True)
class Targets:
    """Where each stage's documents go."""

    signal: Target
    score: Target
    advice: Target
    report: Target


def targets(keys: Keys, maxlen: int) -> Targets:
    """The targets of every stage; stage streams are capped like the signal stream."""
    return Targets(
        signal=signal_target(keys, maxlen),
        score=Target(keys.scored_stream, keys.scored_latest, keys.scored_channel, maxlen),
        advice=Target(keys.advised_stream, keys.advised_latest, keys.advised_channel, maxlen),
        report=Target(
            keys.reports_stream,
            keys.reports_latest,
            keys.reports_channel,
            REPORTS_MAXLEN,
            key_field="shard",
            latest_kind="string",
        ),
    )


class Publisher:
    """Publishes documents in coalesced batches, one script per batch."""

    def __init__(self, client: aioredis.Redis, keys: Keys, budget: Callable[[], float] | None = None) -> None:
        self.keys = keys
        #: Seconds the next publish may take (what is left of the cycle's time); None: unbounded.
        self.budget = budget
        self._script = client.register_script(scripts.PUBLISH)
        self._queue: list[tuple[Pending, asyncio.Future[PublishResult]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.errors: list[str] = []

    async def publish_batch(
        self, batch: list[Pending], follows: list[int] | None = None
    ) -> list[PublishResult]:
        """Publish ``batch`` in one script; returns the result per document. ``follows[i]`` is the
        1-based position in the batch of the document item i follows (0: none)."""
        targets = list(dict.fromkeys(p.target for p in batch))
        index = {t: i + 1 for i, t in enumerate(targets)}
        follows = follows or [0] * len(batch)
        keys, args = scripts.pack(
            {},
            {
                "streams": [t.stream for t in targets],
                "latests": [t.latest for t in targets],
                "locks": [p.lock_key for p in batch],
                "markers": [self.keys.published(p.doc_id) for p in batch],
            },
            {
                "targets": [
                    {
                        "channel": t.channel,
                        "field": t.field,
                        "key_field": t.key_field,
                        "maxlen": t.maxlen,
                        "string": t.latest_kind == "string",
                    }
                    for t in targets
                ],
                "marker_ttl": SIGNAL_ID_TTL_SECONDS,
                "items": [
                    {
                        "t": index[p.target],
                        "record": p.lock_value,
                        "symbol": p.symbol,
                        "doc": p.doc,
                        "release": p.release,
                        "after": after,
                    }
                    for p, after in zip(batch, follows, strict=True)
                ],
            },
        )
        try:
            async with (
                redis_errors("publishing signals"),
                asyncio.timeout(self.budget() if self.budget else None),
            ):
                raw = await self._script(keys=keys, args=args)
        except TimeoutError as exc:
            raise RedisUnavailable(
                "Redis did not answer the publish before the cycle's time ran out"
            ) from exc
        results, warnings = json.loads(raw)
        for warning in warnings or []:
            log.warning("%s", warning)
        return [PublishResult(str(x)) for x in results]

    def submit(self, pending: Pending) -> asyncio.Future[PublishResult]:
        """Queue a document for the next batch; the future gives what became of it."""
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        self._queue.append((pending, future))
        self._wake.set()
        return future

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="publisher")

    async def _flush(self) -> None:
        queued, self._queue = self._queue, []
        batch: list[tuple[Pending, asyncio.Future[PublishResult]]] = []
        for p, future in queued:
            if p.after is not None and p.after.done() and p.after.result() is not PublishResult.PUBLISHED:
                future.set_result(PublishResult.SKIPPED)  # what it follows is not published: neither is it
            else:
                batch.append((p, future))
        if not batch:
            return
        # What a document follows was published earlier (then it is done) or is in this batch:
        # the script checks that one first, in order.
        position = {id(future): i + 1 for i, (_, future) in enumerate(batch)}
        follows = [position.get(id(p.after), 0) if p.after is not None else 0 for p, _ in batch]
        try:
            results = await self.publish_batch([p for p, _ in batch], follows)
        except Exception as exc:  # reported per document; the cycle reports it
            self.errors.append(one_line(exc))
            results = [PublishResult.ERROR] * len(batch)
        for (p, future), result in zip(batch, results, strict=True):
            if result is PublishResult.FENCED:
                log.warning("not publishing %s: this run no longer holds its lock", p.doc_id)
            if not future.done():
                future.set_result(result)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()
            if self._closing and not self._queue:
                return

    async def close(self) -> None:
        """Publish everything still queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._flush()


class DryPublisher:
    """A dry run's publisher: writes nothing, and says every document was published."""

    errors: list[str]

    def __init__(self) -> None:
        self.errors = []

    def submit(self, pending: Pending) -> asyncio.Future[PublishResult]:
        del pending
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(PublishResult.PUBLISHED)
        return future

    def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
