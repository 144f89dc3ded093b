"""Entity features by brute force, offline: the training side of the stream's state features.

For each row and each window w of a StateSpec, the rows of the same entity that came before it (row order,
which is arrival order) with an event time in [t - w, t] are gathered explicitly, pair by pair, and
aggregated: the worker's rule (muse_stream/state/windows.py), itself excluded, an equal time counting only
for an earlier row. Rows must be in non-decreasing time order (then no row is late and "earlier row" and
"earlier time, ties by row" agree). As in the worker: count counts every earlier row; sum, mean and max skip
missing (NaN) values, with sum 0 and mean/max NaN when none is left; distinct counts a missing value as one
value of its own; seconds_since_last is the time since the entity's previous row within the longest window.

Vectorised with numpy: rows sorted by (entity, row); one searchsorted per window finds each row's first
row in the window; the pairs are expanded a chunk at a time (np.repeat) and reduced with bincount,
maximum.reduceat and unique. No per-row Python.
"""

from __future__ import annotations

import numpy as np

from muse_stream.featurespec import StateSpec

_MAX_PAIRS = 4_000_000  # pairs expanded at once: 4M pairs is about 100 MB of temporaries


def _window_starts(key: np.ndarray, group_start: np.ndarray, w: int) -> np.ndarray:
    """First sorted position of each row's window: same entity, time >= t - w."""
    lo = np.searchsorted(key, key - w, side="left")
    # key - w may reach into the previous entity when t - w is before this entity's origin
    return np.maximum(lo, group_start)


def _chunks(lo: np.ndarray, hi: np.ndarray, max_pairs: int):
    """Consecutive query ranges [a, b) whose pairs (sum of hi - lo) stay under max_pairs (at least one query)."""
    sizes = np.cumsum(hi - lo)
    a = 0
    while a < lo.size:
        base = sizes[a - 1] if a else 0
        b = max(a + 1, int(np.searchsorted(sizes, base + max_pairs, side="right")))
        yield a, b
        a = b


def _aggregate(fn: str, vals: np.ndarray | None, lo: np.ndarray, hi: np.ndarray, max_pairs: int) -> np.ndarray:
    """One aggregate over the sorted positions [lo[i], hi[i]) of every query i."""
    n = lo.size
    cnt = hi - lo
    if fn == "count":
        return cnt.astype(np.float64)
    out = np.full(n, 0.0 if fn in ("sum", "distinct") else np.nan)
    for a, b in _chunks(lo, hi, max_pairs):
        c = cnt[a:b]
        seg = np.repeat(np.arange(b - a), c)
        if not seg.size:
            continue
        # Position of every pair: its query's lo plus its rank inside the query.
        starts = np.cumsum(c) - c
        idx = np.repeat(lo[a:b], c) + (np.arange(seg.size) - np.repeat(starts, c))
        v = vals[idx]
        if fn == "distinct":
            pairs = np.unique(np.stack([seg, v.astype(np.int64)], axis=1), axis=0)
            out[a:b] = np.bincount(pairs[:, 0], minlength=b - a)
            continue
        ok = ~np.isnan(v)
        total = np.bincount(seg[ok], weights=v[ok], minlength=b - a)
        if fn == "sum":
            out[a:b] = total
            continue
        k = np.bincount(seg[ok], minlength=b - a)
        if fn == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                out[a:b] = np.where(k > 0, total / np.maximum(k, 1), np.nan)
        else:  # max
            nonempty = c > 0
            m = np.maximum.reduceat(np.where(ok, v, -np.inf), starts[nonempty])
            got = np.full(b - a, np.nan)
            got[nonempty] = m
            out[a:b] = np.where(k > 0, got, np.nan)
    return out


def brute_force(spec: StateSpec, entity: np.ndarray, times_ms: np.ndarray, nums: dict[str, np.ndarray],
                dists: dict[str, np.ndarray], *, max_pairs: int = _MAX_PAIRS) -> np.ndarray:
    """Every feature of spec.feature_names() for every row, float64 [n, len(names)], rows in input order.

    entity: one value per row (any sortable dtype; a composite entity is one joined value). times_ms: int64
    event times, non-decreasing. nums: float64 per numeric field (NaN missing). dists: int64 codes per
    distinct field, a missing value given its own code.
    """
    times_ms = np.asarray(times_ms, dtype=np.int64)
    n = times_ms.size
    if n and (np.diff(times_ms) < 0).any():
        raise ValueError("rows must be in non-decreasing event-time order")
    names = spec.feature_names()
    out = np.empty((n, len(names)))
    if n == 0:
        return out
    _, ent = np.unique(entity, return_inverse=True)
    ent = ent.ravel().astype(np.int64)
    order = np.argsort(ent, kind="stable")  # by entity, then row (= time, then row)
    e_s = ent[order]
    rel = times_ms[order] - times_ms[0]
    if rel.max() >= 1 << 40 or e_s.max() >= 1 << 22:
        raise ValueError("times span more than 2^40 ms or more than 2^22 entities")
    key = (e_s << 40) | rel
    group_start = np.searchsorted(e_s, e_s, side="left")
    hi = np.arange(n)  # the row itself excluded; every earlier row of its entity has time <= t
    sorted_nums = {f: np.asarray(v, dtype=np.float64)[order] for f, v in nums.items()}
    sorted_dists = {f: np.asarray(v, dtype=np.int64)[order] for f, v in dists.items()}
    col = 0
    for w in spec.windows_ms:
        lo = _window_starts(key, group_start, w)
        for agg in spec.parsed:
            if agg.fn == "seconds_since_last":
                continue
            vals = None if agg.fn == "count" else (sorted_dists if agg.fn == "distinct" else sorted_nums)[agg.field]
            out[order, col] = _aggregate(agg.fn, vals, lo, hi, max_pairs)
            col += 1
    if any(a.fn == "seconds_since_last" for a in spec.parsed):
        lo = _window_starts(key, group_start, spec.longest_ms)
        prev = np.maximum(hi - 1, 0)
        has = lo < hi
        out[order, col] = np.where(has, (rel - rel[prev]) / 1000.0, np.nan)
    return out
