"""Pure helpers: percentiles and the derived figures of a run."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LATENCY_QUANTILES = (50.0, 99.0, 99.9)


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q% of the values at or below it."""
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    rank = max(1, math.ceil(q / 100.0 * a.size))
    return float(np.partition(a, rank - 1)[rank - 1])


def latency_summary(ms: Sequence[float] | np.ndarray) -> dict:
    """p50, p99, p99.9, max and mean of latencies in ms (NaN = never seen: counted apart, not summarised)."""
    a = np.asarray(ms, dtype=np.float64)
    seen = a[~np.isnan(a)]
    out = {"count": int(seen.size), "unseen": int(a.size - seen.size)}
    for q in LATENCY_QUANTILES:
        out[f"p{q:g}"] = _round(percentile(seen, q))
    out["max"] = _round(float(seen.max())) if seen.size else None
    out["mean"] = _round(float(seen.mean())) if seen.size else None
    return out


def _round(x: float, digits: int = 2) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


def per_thousand(cpu_seconds: float | None, events: int) -> float | None:
    """CPU seconds per 1,000 events."""
    if cpu_seconds is None or events <= 0:
        return None
    return cpu_seconds * 1000.0 / events


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def versions_never_go_back(rows: Sequence[tuple[int, int, int]]) -> int:
    """rows: (partition, offset, version). Count records scored by an older version than an earlier offset."""
    by_part: dict[int, list[tuple[int, int]]] = {}
    for p, o, v in rows:
        by_part.setdefault(p, []).append((o, v))
    back = 0
    for items in by_part.values():
        items.sort()
        high = 0
        for _, v in items:
            if v < high:
                back += 1
            high = max(high, v)
    return back
