"""Count vectors summed over a sliding time window: per-batch adds, O(slots) reads, no per-event work."""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import numpy as np


class _Series:
    __slots__ = ("counts", "last")

    def __init__(self, slots: int, width: int, slot: int) -> None:
        self.counts = np.zeros((slots, width), dtype=np.int64)
        self.last = slot


class SlidingCounts:
    """Per key, a vector of counts over the last `window_s` seconds, kept in `slots` time slots.

    A read covers the current slot and the slots-1 before it, so the effective window is between
    window_s - window_s/slots and window_s long. A key's vector width is fixed by its first add; adding a
    vector of another width starts the key afresh (a tenant's bands changed, say).
    """

    def __init__(self, window_s: float, *, slots: int = 30) -> None:
        if window_s <= 0 or slots < 1:
            raise ValueError("window_s must be > 0 and slots >= 1")
        self.window_s = float(window_s)
        self._slots = slots
        self._slot_s = self.window_s / slots
        self._series: dict[Hashable, _Series] = {}

    def _slot(self, now: float) -> int:
        return int(now // self._slot_s)

    def _advance(self, s: _Series, slot: int) -> None:
        gap = slot - s.last
        if gap <= 0:
            return
        if gap >= self._slots:
            s.counts[:] = 0
        else:
            for k in range(s.last + 1, slot + 1):
                s.counts[k % self._slots] = 0
        s.last = slot

    def add(self, key: Hashable, counts: np.ndarray, now: float) -> None:
        slot = self._slot(now)
        s = self._series.get(key)
        if s is None or s.counts.shape[1] != counts.size:
            s = self._series[key] = _Series(self._slots, counts.size, slot)
        self._advance(s, slot)
        s.counts[slot % self._slots] += counts

    def reset(self, key: Hashable) -> None:
        self._series.pop(key, None)

    def totals(self, now: float) -> Iterator[tuple[Hashable, np.ndarray]]:
        """(key, summed counts) for every key with anything left in the window; empty keys are dropped."""
        slot = self._slot(now)
        for key in list(self._series):
            s = self._series[key]
            self._advance(s, slot)
            total = s.counts.sum(axis=0)
            if total.any():
                yield key, total
            else:
                del self._series[key]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._series
