"""Which symbols this run works on: configured (or ``--symbols``), minus paused, this shard's share.

The split is a pure function of the symbol and the shard count (a stable hash), so every symbol
lands on exactly one shard and stays there while the count is unchanged.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from runner.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0/1`` is everything)."""

    index: int
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def key(self) -> str:
        """Form used in Redis key names and metric groups."""
        return f"{self.index}-{self.count}"

    def owns(self, symbol: str) -> bool:
        return self.count == 1 or zlib.crc32(symbol.encode()) % self.count == self.index


def parse_shard(text: str) -> Shard:
    """``I/N`` with 0 <= I < N; raises ``ConfigError``."""
    try:
        left, right = text.split("/")
        index, count = int(left), int(right)
    except ValueError as exc:
        raise ConfigError(f"--shard: must look like I/N, e.g. 0/3 (got {text!r})") from exc
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard: need 0 <= I < N (got {text!r})")
    return Shard(index, count)


def from_environment(flag: str | None, shards: int, environ: Mapping[str, str]) -> Shard:
    """``--shard I/N`` if given; else ``JOB_COMPLETION_INDEX`` of ``shards`` (an Indexed Job);
    else everything. Raises ``ConfigError``."""
    if flag:
        return parse_shard(flag)
    index = environ.get("JOB_COMPLETION_INDEX")
    if index is not None and index != "":
        if not index.isdigit():
            raise ConfigError(f"JOB_COMPLETION_INDEX: must be a whole number (got {index!r})")
        if int(index) >= shards:
            raise ConfigError(
                f"JOB_COMPLETION_INDEX: {index} is not below RUNNER_SHARDS={shards}; "
                "set RUNNER_SHARDS to the Job's completions"
            )
        return Shard(int(index), shards)
    if shards > 1:
        raise ConfigError(
            f"RUNNER_SHARDS: {shards} shards need --shard I/N or JOB_COMPLETION_INDEX (got neither)"
        )
    return Shard(0, 1)


def select(
    candidates: list[str],
    paused: Mapping[str, str],
    shard: Shard,
    cap: int | None = None,
) -> tuple[list[str], list[str]]:
    """(symbols to run, paused symbols of this shard), order kept."""
    mine = [s for s in candidates if shard.owns(s)]
    if cap:
        mine = mine[:cap]
    return [s for s in mine if s not in paused], [s for s in mine if s in paused]
