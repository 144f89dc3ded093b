"""A batch's entity features at once: every entity of the batch merged with its stored entries into one array,
and each window's aggregates read from prefix sums, a sparse table (max) and sorted pairs (distinct), with no
per-event Python. The same rule as windows.step (the reference, and what this falls back to):

- fast: an entity whose batch events come in time order after everything it has stored (so none is late, and
  each one's insert is an append) and whose event ids meet no earlier id (no duplicate is possible);
- exact path (windows.step, event by event): the rest, i.e. entities with an out-of-order, late or duplicate
  event in this batch. tests/state/test_windows.py checks both against brute force.

Sums and means are differences of compensated prefix sums (_prefix_sums), or direct sums per window where the
batch's values span too many orders of magnitude for them (_window_sums): exact for integer-valued fields (as
brute force), otherwise equal to a direct sum up to float rounding relative to the window's own values, whatever
the magnitudes of the other entities' values or of this entity's values outside the window.
"""

from __future__ import annotations

import numpy as np

from muse_stream.state.windows import _HEAD, Entity, Plan, entry_dtype, step

OK, LATE, DUP = 0, 1, 2
_SPAN_BITS = 41  # an entity's merged times within 2^41 ms (69 years) of its oldest: one int64 sort key
_MAX_PAIRS = 2_000_000  # distinct: (event, earlier entry) pairs expanded per chunk


def run(plan: Plan, raws: list, code: np.ndarray, t: np.ndarray, off: np.ndarray, ids: np.ndarray,
        nums: np.ndarray, dist: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    """One batch of one intent. raws[c]: entity c's stored record (or None); per event (arrival order): its
    entity code, event time, offset, id hash, numeric values (k, n), distinct hashes (d, n). Fills out (n,
    features) and returns (kind per event: OK | LATE | DUP, the first occurrence's offset for a DUP else -1,
    each entity's new record)."""
    k, d, m = len(plan.nums), len(plan.dists), len(raws)
    dt = entry_dtype(k, d)
    hd = plan.head
    good = [r is not None and r[:_HEAD.size] == hd for r in raws]
    counts = np.fromiter(((len(r) - _HEAD.size) // dt.itemsize if g else 0 for r, g in zip(raws, good)),
                         dtype=np.int64, count=m)
    stored = np.frombuffer(b"".join(r[_HEAD.size:] for r, g in zip(raws, good) if g), dt)
    scode = np.repeat(np.arange(m), counts)
    batch = np.empty(len(t), dt)
    batch["t"], batch["off"], batch["id"], batch["live"], batch["num"], batch["dist"] = t, off, ids, 1, nums.T, dist.T
    # Merged: per entity its stored entries (already in time order), then its batch events in arrival order.
    mcode = np.concatenate([scode, code])
    merged = np.concatenate([stored, batch])
    order = np.argsort(mcode, kind="stable")
    mcode, merged = mcode[order], merged[order]
    slow = _slow_entities(m, mcode, merged, order >= len(stored))
    kind = np.zeros(len(t), dtype=np.int8)
    first = np.full(len(t), -1, dtype=np.int64)
    values: list = [None] * m
    fast_rows = ~slow[mcode]
    if fast_rows.any():
        _fast(plan, mcode[fast_rows], merged[fast_rows], order[fast_rows] - len(stored), out, values, hd)
    if slow.any():
        rows = np.flatnonzero(slow[code])
        rows = rows[np.argsort(code[rows], kind="stable")]  # each slow entity's events, in arrival order
        cut = np.flatnonzero(np.diff(code[rows])) + 1
        for evs in np.split(rows, cut):
            c = int(code[evs[0]])
            values[c] = _exact(plan, raws[c], evs, t, off, ids, nums, dist, out, kind, first)
    return kind, first, values


def _slow_entities(m: int, mcode: np.ndarray, merged: np.ndarray, is_batch: np.ndarray) -> np.ndarray:
    """Entities that need the exact path: an event older than an entry before it, an event id met twice, or a
    span too wide for the sort key."""
    slow = np.zeros(m, dtype=np.bool_)
    same = mcode[1:] == mcode[:-1]
    times = merged["t"]
    back = same & (times[1:] < times[:-1]) & is_batch[1:]
    slow[mcode[1:][back]] = True
    o = np.lexsort((merged["id"], mcode))
    c, i = mcode[o], merged["id"][o]
    twice = (c[1:] == c[:-1]) & (i[1:] == i[:-1])
    slow[c[1:][twice]] = True
    if len(mcode):  # every entity has a batch event, so a segment per entity
        starts = np.flatnonzero(np.r_[True, ~same])
        span = np.maximum.reduceat(times, starts).astype(np.float64) - np.minimum.reduceat(times, starts)
        slow[mcode[starts][span >= float(1 << _SPAN_BITS)]] = True
    return slow


def _fast(plan: Plan, mcode: np.ndarray, merged: np.ndarray, bpos: np.ndarray, out: np.ndarray, values: list,
          hd: bytes) -> None:
    """Entities whose batch events all append in time order: features from the merged array at once."""
    n = len(mcode)
    times = merged["t"]
    live = merged["live"].astype(np.bool_)
    starts = np.flatnonzero(np.r_[True, mcode[1:] != mcode[:-1]])
    segidx = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    seg = starts[segidx]  # each row's segment (entity) start
    key = (mcode.astype(np.int64) << _SPAN_BITS) + (times - times[seg])
    q = np.flatnonzero(bpos >= 0)  # the batch events' rows in merged
    ev = bpos[q]
    tq, sq, cq = times[q], seg[q], mcode[q].astype(np.int64) << _SPAN_BITS
    lows = [np.searchsorted(key, cq + np.maximum(tq - w - times[sq], 0), side="left") for w in plan.windows.tolist()]
    n_live = np.r_[0, np.cumsum(live)]
    n_a = len(plan.per_window)
    cols: dict[tuple[str, int], list[np.ndarray]] = {}
    sums_of: dict[int, list[np.ndarray]] = {}  # per numeric field: its window sums, for its sum and its mean
    for fn, col in plan.per_window:
        if (fn, col) in cols or fn == "count":
            continue
        if fn == "distinct":
            cols[(fn, col)] = _distinct(merged["dist"][:, col], live, times, q, lows, tq, plan.windows)
            continue
        v = merged["num"][:, col]
        ok = live & ~np.isnan(v)
        if fn == "max":
            cols[(fn, col)] = _window_max(np.where(ok, v, -np.inf), q, lows)
            continue
        if col not in sums_of:
            sums_of[col] = _window_sums(np.where(ok, v, 0.0), q, lows)
        sums = sums_of[col]
        if fn == "sum":
            cols[(fn, col)] = sums
        else:  # mean
            cnt = np.r_[0, np.cumsum(ok)]
            with np.errstate(invalid="ignore", divide="ignore"):
                cols[(fn, col)] = [np.where(cnt[q] > cnt[lo], s / (cnt[q] - cnt[lo]), np.nan)
                                   for s, lo in zip(sums, lows)]
    for w, lo in enumerate(lows):
        for j, (fn, col) in enumerate(plan.per_window):
            out[ev, w * n_a + j] = (n_live[q] - n_live[lo]) if fn == "count" else cols[(fn, col)][w]
    if plan.since:
        last = np.maximum.accumulate(np.where(live, np.arange(n), -1))
        prev = np.where(q > sq, last[np.maximum(q - 1, 0)], -1)
        prev = np.where(prev >= sq, prev, -1)
        gap = tq - times[np.maximum(prev, 0)]
        out[ev, -1] = np.where((prev >= 0) & (gap <= plan.longest_ms), gap / 1000.0, np.nan)
    # The new records: each entity's merged rows within the retention behind its newest (its last) event.
    # (The last row of each entity is a batch event: live, the newest, so always kept.)
    newest = times[np.r_[starts[1:], n] - 1]
    keep = times >= newest[segidx] - plan.keep_ms
    kcode = mcode[keep]
    buf = merged[keep].tobytes()
    size = merged.dtype.itemsize
    ks = np.flatnonzero(np.r_[True, kcode[1:] != kcode[:-1]])
    for c, a, b in zip(kcode[ks].tolist(), (ks * size).tolist(), (np.r_[ks[1:], len(kcode)] * size).tolist()):
        values[c] = hd + buf[a:b]


_EPS = 2.0 ** -53
_REL = 1e-13  # a window sum's error, at most, relative to the smallest value it may hold


def _window_sums(v: np.ndarray, q: np.ndarray, lows: list[np.ndarray]) -> list[np.ndarray]:
    """sum(v[lo:q]) per query and window, to float rounding relative to the window's own values, whatever
    the magnitudes elsewhere in v (other entities of the batch, or this one outside the window).

    Prefix sums in two parts (_prefix_sums) leave an error of at most about 4 n^2 eps^2 sum|v| (the rounding
    of the running sum of what the first sum rounded away). Where that could reach _REL of the smallest
    non-zero |v| (values spanning some 11 orders of magnitude within a batch, e.g. a 1e20 beside cents),
    each window is summed directly instead: as exact, and linear in the windows' lengths."""
    a = np.abs(v)
    nonzero = a[a > 0]
    if not nonzero.size:
        return [np.zeros(len(q)) for _ in lows]
    n = len(v)
    if 4.0 * n * n * _EPS * _EPS * float(a.sum()) <= _REL * float(nonzero.min()):
        hi, lo_part = _prefix_sums(v)
        return [(hi[q] - hi[lo]) + (lo_part[q] - lo_part[lo]) for lo in lows]
    padded = np.append(v, 0.0)  # a window may end at len(v)
    out = []
    for lo in lows:
        res = np.zeros(len(q))
        some = q > lo
        if some.any():
            idx = np.empty(2 * int(some.sum()), dtype=np.intp)
            idx[0::2], idx[1::2] = lo[some], q[some]
            res[some] = np.add.reduceat(padded, idx)[0::2]  # [lo, q) at even places; odd ones are between
        out.append(res)
    return out


def _prefix_sums(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prefix sums of v as two parts, hi + lo: hi the running float sums, lo the running sum of what each of
    hi's additions rounded away (exactly, by Knuth's two-sum). A window's sum, (hi[b] - hi[a]) + (lo[b] - lo[a]),
    then loses nothing to the size of the running total itself (1e20 then 5 and 6: 11, not 0); what lo's own
    running sum rounds away is bounded in _window_sums."""
    hi = np.cumsum(v)
    prev = np.r_[0.0, hi[:-1]]
    back = hi - prev
    lost = (prev - (hi - back)) + (v - back)
    return np.r_[0.0, hi], np.r_[0.0, np.cumsum(lost)]


def _window_max(vals: np.ndarray, q: np.ndarray, lows: list[np.ndarray]) -> list[np.ndarray]:
    """max(vals[lo:q]) per query and window (NaN when empty or all -inf), from one sparse table."""
    longest = int(max((q - lo).max() for lo in lows)) if len(q) else 0
    table = [vals]
    step = 1
    while step * 2 <= longest:
        prev = table[-1]
        table.append(np.maximum(prev[:-step], prev[step:]))
        step *= 2
    res = []
    for lo in lows:
        length = q - lo
        nz = length > 0
        lvl = np.frexp(length)[1].astype(np.int64) - 1  # floor(log2(length)), exactly
        best = np.full(len(q), -np.inf)
        for k in np.unique(lvl[nz]).tolist():
            sel = nz & (lvl == k)
            tk = table[k]
            best[sel] = np.maximum(tk[lo[sel]], tk[q[sel] - (1 << k)])
        res.append(np.where(best == -np.inf, np.nan, best))
    return res


def _distinct(vals: np.ndarray, live: np.ndarray, times: np.ndarray, q: np.ndarray, lows: list[np.ndarray],
              tq: np.ndarray, windows: np.ndarray) -> list[np.ndarray]:
    """Distinct live values in each window: the (event, earlier entry) pairs of the longest window, the newest
    time of each (event, value), then per window the values whose newest time is inside it."""
    widest = int(np.argmax(windows))
    lo = lows[widest]
    res = [np.zeros(len(q)) for _ in windows]
    sizes = q - lo
    a = 0
    while a < len(q):  # chunks of queries, so the expanded pairs stay bounded
        b = a + max(1, int(np.searchsorted(np.cumsum(sizes[a:]), _MAX_PAIRS, side="right")))
        ln = sizes[a:b]
        qi = np.repeat(np.arange(a, b), ln)
        j = np.repeat(lo[a:b] - np.r_[0, np.cumsum(ln)[:-1]], ln) + np.arange(int(ln.sum()))
        keep = live[j]
        qi, j = qi[keep], j[keep]
        o = np.lexsort((times[j], vals[j], qi))
        qi, v, tj = qi[o], vals[j][o], times[j][o]
        last = np.ones(len(qi), dtype=np.bool_)  # the newest pair of each (event, value)
        last[:-1] = (qi[1:] != qi[:-1]) | (v[1:] != v[:-1])
        qi, tj = qi[last], tj[last]
        for w, width in enumerate(windows.tolist()):
            inside = tj >= tq[qi] - width
            res[w][a:b] = np.bincount(qi[inside] - a, minlength=b - a)
        a = b
    return res


def _exact(plan: Plan, raw, evs: np.ndarray, t, off, ids, nums, dist, out, kind, first) -> bytes:
    """One entity's events (rows `evs`, arrival order) by the reference rule (windows.step); its new record."""
    e = Entity.decode(raw, plan)
    for i in evs.tolist():
        what, f = step(plan, e, int(t[i]), int(off[i]), int(ids[i]), nums[:, i], dist[:, i], out[i])
        kind[i] = DUP if what == "dup" else LATE if what == "late" else OK
        first[i] = f
    e.trim(plan.keep_ms)
    return e.encode(plan)
