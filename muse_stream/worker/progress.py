"""A worker whose consumer stopped taking part: noticed from outside the consumer, and ended so that the
supervisor starts it again with new clients.

After a broker restart, a librdkafka consumer has been seen to never reach the restarted broker again: no
heartbeat, its partitions lost, no rejoin, and no error, while its loop keeps turning (so the supervisor's stall
check is satisfied) and the input piles up. A new consumer reaches the same broker at once.

ProgressWatch notices it without trusting the stuck client: once the worker has taken no event for `after_s`,
it reads the group's lag on the events topic with a client of its own, every `every_s`. When a partition has
events waiting and its committed offset has not moved between two such reads, no member of the group is making
progress on it, so the worker reports it. Nothing is decided while the broker does not answer, or while the group's
committed offsets cannot be read (an open transaction holds them: kafka/starts.py names that, and a new client
would not help).
"""

from __future__ import annotations

import time

from muse_stream.config import Settings
from muse_stream.telemetry.status import group_lag


class ProgressWatch:
    def __init__(self, settings: Settings, *, after_s: float, every_s: float | None = None,
                 clock=time.monotonic, lag=group_lag) -> None:
        self.settings = settings
        self.after_s = after_s
        self.every_s = every_s if every_s is not None else max(5.0, after_s / 4)
        self.clock, self.lag = clock, lag
        self.last_event = clock()
        self._before: dict[int, int | None] | None = None  # partition -> committed, at the last read
        self._next = 0.0

    def consumed(self) -> None:
        """The worker has just taken events."""
        self.last_event = self.clock()
        self._before = None

    def check(self) -> list[int]:
        """Input partitions with events waiting whose committed offset stood still between two reads of the
        group's lag, made while this worker took no event; [] otherwise. Reads at most every `every_s`."""
        now = self.clock()
        if now - self.last_event < self.after_s or now < self._next:
            return []
        self._next = now + self.every_s
        lag = self.lag(self.settings, timeout=5.0)
        if lag.get("error"):
            self._before = None
            return []
        waiting = {r["partition"]: r["committed"] for r in lag["partitions"] if r["lag"] > 0}
        before, self._before = self._before, waiting
        if before is None:
            return []
        return sorted(p for p, c in waiting.items() if p in before and before[p] == c)
