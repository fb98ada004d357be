"""The machine's local time zone, set for a test: POSIX ``TZ`` strings, which need no time-zone
database (``UTC0``, ``NPT-5:45`` for UTC+05:45, ``HST10`` for UTC-10:00)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator


@contextlib.contextmanager
def local_time_zone(tz: str) -> Iterator[str]:
    """Run the block with ``TZ=tz``, then put the previous zone back."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield tz
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()
