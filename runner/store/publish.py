"""The atomic, idempotent, fenced publish (``scripts.PUBLISH``), confirmed by a replica.

A document is published only while this run still holds its symbol's lock with exactly the
record it wrote (fencing), and only if its id was never published (idempotency): ``XADD`` to its
capped stream, ``PUBLISH`` to its channel, ``HSET`` of the latest document per symbol. A retry
whose first try's reply was lost finds its own marker and writes nothing twice.

Replication is asynchronous, so a master that fails over can lose what it acknowledged. Where
the master has replicas, the publisher's last step asks one to confirm every document the run
published: ``scripts.CONFIRM`` (are they still on the master?) and ``WAIT 1`` on the same
connection, within the cycle's time. A document no replica confirms is ``UNCONFIRMED``, never
counted as published.

``Publisher`` coalesces: documents are handed over as they are ready (``submit`` returns their
``Publication``) and flushed in batches, so a cycle costs a few round trips however many symbols
it has, and a crash loses only the batch in flight. A document can follow another (a score its
signal): it is published only if that one was, in the same batch or an earlier one, so a chain
need not wait for a publish before its next stage unless that stage costs a call.
``DryPublisher`` writes nothing and reports every document published: a dry run is a different
publisher, not a branch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from runner.errors import RedisUnavailable, TopologyChanged, ends_cycle, one_line
from runner.store import scripts
from runner.store.connection import Client, Script, changes_topology, exchange, redis_errors
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
    #: Written on the master, but no replica confirmed it (or it was gone from the master by the
    #: time the run asked): a failover may lose it.
    UNCONFIRMED = "unconfirmed"
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
    #: The document this one follows: it is published only if that one was.
    after: Publication | None = field(default=None, compare=False)


@dataclass(eq=False)
class Publication:
    """One document handed to the publisher: what the script did with it (``written``, which its
    chain waits for before the next stage), then whether a replica confirmed it."""

    pending: Pending
    written: asyncio.Future[PublishResult]
    #: None: not asked (nothing to ask, or not yet); then True or False.
    confirmed: bool | None = None
    #: Its batch's reply never came (a timeout, a dropped connection) but the script may have run:
    #: True once its marker shows it did, False once it shows it did not; None: not known.
    landed: bool | None = None
    #: Why it is unconfirmed, or why whether it landed is unknown.
    note: str = ""

    def fate(self) -> PublishResult:
        """What became of the document, confirmation included."""
        if not self.written.done() or self.written.cancelled():
            return PublishResult.ERROR
        result = self.written.result()
        if result is PublishResult.ERROR and self.landed:
            result = PublishResult.PUBLISHED
        if result is PublishResult.PUBLISHED and self.confirmed is False:
            return PublishResult.UNCONFIRMED
        return result


@dataclass(frozen=True)
class Confirmation:
    """How the end of a run asks a replica to acknowledge what it published."""

    #: How many replicas the master has (0: nothing to ask).
    replicas: Callable[[], Awaitable[int]]
    #: Seconds ``WAIT`` may block.
    timeout: float
    #: Seconds on top of ``timeout`` for the reply to arrive (the socket timeout).
    slack: float = 2.0


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
    """Publishes documents in coalesced batches, one script per batch, and confirms them."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        budget: Callable[[], float] | None = None,
        *,
        owner: str,
        confirmation: Confirmation | None = None,
        on_topology: Callable[[RedisUnavailable], None] | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        #: Seconds the next publish may take (what is left of the cycle's time); None: unbounded.
        self.budget = budget
        #: This run's cycle id: what its markers hold.
        self.owner = owner
        self.confirmation = confirmation
        self.on_topology = on_topology
        self._script = Script(client, scripts.PUBLISH)
        self._queue: list[Publication] = []
        self._sent: list[Publication] = []
        #: Documents of batches whose reply never came.
        self._unanswered: list[Publication] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.errors: list[str] = []

    def _seconds(self) -> float | None:
        return self.budget() if self.budget else None

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
                "owner": self.owner,
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
            async with redis_errors("publishing signals"), asyncio.timeout(self._seconds()):
                raw = await self._script(keys, args)
        except TimeoutError as exc:
            raise RedisUnavailable(
                "Redis did not answer the publish before the cycle's time ran out"
            ) from exc
        results, warnings = json.loads(raw)
        for warning in warnings or []:
            log.warning("%s", warning)
        return [PublishResult(str(x)) for x in results]

    def submit(self, pending: Pending) -> Publication:
        """Queue a document for the next batch; its ``written`` future gives what became of it."""
        publication = Publication(pending, asyncio.get_running_loop().create_future())
        self._queue.append(publication)
        self._wake.set()
        return publication

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="publisher")

    async def _flush(self) -> None:
        queued, self._queue = self._queue, []
        batch: list[Publication] = []
        for publication in queued:
            after = publication.pending.after
            if after is not None and after.written.done() and after.fate() is not PublishResult.PUBLISHED:
                publication.written.set_result(PublishResult.SKIPPED)  # what it follows is not published
            else:
                batch.append(publication)
        if not batch:
            return
        # What a document follows was published earlier (then it is done) or is in this batch:
        # the script checks that one first, in order.
        position = {id(p): i + 1 for i, p in enumerate(batch)}
        follows = [position.get(id(p.pending.after), 0) if p.pending.after else 0 for p in batch]
        try:
            results = await self.publish_batch([p.pending for p in batch], follows)
        except Exception as exc:  # reported per document; the cycle reports it
            self.errors.append(one_line(exc))
            results = [PublishResult.ERROR] * len(batch)
            self._topology(exc)
            if not isinstance(exc, TopologyChanged):  # refused outright: nothing ran
                self._unanswered += batch
        for publication, result in zip(batch, results, strict=True):
            if result is PublishResult.FENCED:
                log.warning(
                    "not publishing %s: this run no longer holds its lock", publication.pending.doc_id
                )
            if not publication.written.done():
                publication.written.set_result(result)
            self._sent.append(publication)

    def _topology(self, exc: BaseException) -> None:
        if isinstance(exc, RedisUnavailable) and ends_cycle(exc) and self.on_topology is not None:
            self.on_topology(exc)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()
            if self._closing and not self._queue:
                return

    async def close(self) -> None:
        """Publish everything still queued, confirm what was published, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._flush()
        await self.read_back()
        await self.confirm()

    async def read_back(self) -> None:
        """Whether the batches whose reply never came ran all the same. The script is all or
        nothing, and a document's marker names the run that published it: a marker naming this
        run means the document is in its stream. Read-only (it works while Redis refuses
        writes); when Redis cannot say, the document stays failed with a note that it may be
        published."""
        lost = [p for p in self._unanswered if p.landed is None]
        if not lost:
            return
        markers = [self.keys.published(p.pending.doc_id) for p in lost]
        try:
            async with redis_errors("reading back a publish"), asyncio.timeout(self._seconds()):
                values: list[Any] = list(await self.client.mget(markers))
        except Exception as exc:
            reason = "Redis did not answer in time" if isinstance(exc, TimeoutError) else one_line(exc)
            for publication in lost:
                publication.note = f"its publish got no answer and could not be read back ({reason})"
            log.warning(
                "%d document(s) may or may not be published (their publish got no answer, and "
                "reading it back failed: %s): %s",
                len(lost),
                reason,
                ", ".join(p.pending.doc_id for p in lost[:10]),
            )
            return
        for publication, value in zip(lost, values, strict=True):
            publication.landed = value == self.owner
        landed = [p for p in lost if p.landed]
        if landed:
            log.warning(
                "%d document(s) whose publish got no answer were published all the same: %s",
                len(landed),
                ", ".join(p.pending.doc_id for p in landed[:10]),
            )

    async def confirm(self) -> None:
        """Ask a replica to acknowledge every document this run published (where the master has
        replicas); each one gets ``confirmed`` True or False."""
        mine = [p for p in self._sent if p.confirmed is None and p.fate() is PublishResult.PUBLISHED]
        if not mine or self.confirmation is None:
            return
        try:
            async with asyncio.timeout(self._seconds()):
                if await self.confirmation.replicas() == 0:
                    return  # a master without replicas: what it has is all there is
                replies = await self._ask(mine)
        except Exception as exc:  # the cycle reports each document unconfirmed
            self._topology(exc)
            reason = "Redis did not answer in time" if isinstance(exc, TimeoutError) else one_line(exc)
            replies = [f"could not ask a replica ({reason})"] * len(mine)
        unconfirmed = []
        for publication, reply in zip(mine, replies, strict=True):
            publication.confirmed = reply is True
            if reply is not True:
                publication.note = str(reply)
                unconfirmed.append(publication)
        if unconfirmed:
            log.warning(
                "%d document(s) published but not confirmed by a replica (%s): %s",
                len(unconfirmed),
                unconfirmed[0].note,
                ", ".join(p.pending.doc_id for p in unconfirmed[:10]),
            )

    async def _ask(self, mine: list[Publication]) -> list[bool | str]:
        """CONFIRM and ``WAIT 1`` on one connection: True per document a replica acknowledged,
        else why not."""
        assert self.confirmation is not None
        left = self._seconds()
        # WAIT blocks on the server for at most ``wait``; the reply may take the socket timeout
        # more, which the caller's overall bound (what is left of the cycle) still cuts short.
        wait = min(self.confirmation.timeout, (left if left is not None else 1e9) - 0.1)
        if wait <= 0.01:
            return ["no time left to ask a replica"] * len(mine)
        markers = [self.keys.published(p.pending.doc_id) for p in mine]
        keys, args = scripts.pack(
            {}, {"markers": markers}, {"owner": self.owner, "ttl": SIGNAL_ID_TTL_SECONDS}
        )
        commands: list[tuple[Any, ...]] = [
            ("EVAL", scripts.CONFIRM, len(keys), *keys, *args),
            ("WAIT", 1, max(1, int(wait * 1000))),
        ]
        async with redis_errors("confirming what was published"):
            present, acked = await exchange(
                self.client, commands, slot_key=markers[0], reply_timeout=wait + self.confirmation.slack
            )
        if isinstance(present, Exception) or isinstance(acked, Exception):
            error = present if isinstance(present, Exception) else acked
            self._topology(_translated(error))
            return [f"the master refused ({one_line(error)})"] * len(mine)
        here = json.loads(present)
        here = here if isinstance(here, list) else []
        if len(here) != len(mine):
            return ["the master answered nonsense"] * len(mine)
        out: list[bool | str] = []
        for flag in here:
            if not flag:
                out.append("gone from the master (lost in a failover)")
            elif int(acked) >= 1:
                out.append(True)
            else:
                out.append(f"no replica acknowledged it within {wait:.1f}s")
        return out


def _translated(error: Exception) -> BaseException:
    """An error reply as the runner's error (a topology change or not)."""
    return TopologyChanged(one_line(error)) if changes_topology(error) else error


class DryPublisher:
    """A dry run's publisher: writes nothing, and says every document was published."""

    errors: list[str]

    def __init__(self) -> None:
        self.errors = []

    def submit(self, pending: Pending) -> Publication:
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(PublishResult.PUBLISHED)
        return Publication(pending, future)

    def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
