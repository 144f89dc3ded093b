"""One entity's state and the sliding-window arithmetic over it: no I/O, no Kafka.

An entity's record holds its recent events, sorted by (event time, arrival): per entry its event time, its
input offset, a 64-bit hash of its event id (de-duplication), whether it counts for features (0: a late
event, kept only so that its duplicates are caught), one float64 per numeric field and one 64-bit hash per
distinct field. Entries older than the retention behind the entity's newest event are dropped on each write:
max(longest window + lateness, dedup window), so the state is bounded and every non-late event still sees
all of its windows. The bytes are a 16-byte head (b"MSE2", numeric and distinct field counts, and the id of
the layout: a hash of those fields' names, in order) and then the entries as fixed-width rows (`entry_dtype`),
so a batch's records decode with one join and one frombuffer (state/batch.py) and encode as slices of one
buffer. A record of another layout (the spec's fields changed) is never read as this one: `adapt` rewrites it
by field name, given the names its layout id stands for. Records of the first format (b"MSE1", an 8-byte head
without a layout id) are read as the current layout when their field counts match.

The rule (docs/models.md): an event at time t sees, for a window w, the entries that arrived before it (lower
offset on its partition, already processed), count for features, and have t - w <= time <= t. The event
itself is excluded; an equal time counts only for an earlier arrival. Late events (t < newest - lateness)
are scored with the state as it is and never inserted as features; duplicates are neither scored nor inserted.
"""

from __future__ import annotations

import functools
import math
import struct

import numpy as np

from muse_stream.featurespec import StateSpec

_HEAD = struct.Struct("<4sHHq")  # magic, numeric fields, distinct fields, layout id
MAGIC = b"MSE2"
_LEGACY_HEAD, LEGACY_MAGIC = struct.Struct("<4sHH"), b"MSE1"
NAN = math.nan
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


@functools.lru_cache(maxsize=64)
def entry_dtype(n_num: int, n_dist: int) -> np.dtype:
    """One entry of a record, as stored (little-endian, packed). Cached: the sweep asks for every key it
    examines (a record of an older layout has its own row size), and building one costs about 1.6 µs."""
    return np.dtype([("t", "<i8"), ("off", "<i8"), ("id", "<i8"), ("live", "u1"), ("num", "<f8", (n_num,)),
                     ("dist", "<i8", (n_dist,))])


def layout_id(nums, dists) -> int:
    """The id of a record layout: its numeric and distinct fields' names, in order."""
    return id_hash("num:" + "\0".join(nums) + "\ndist:" + "\0".join(dists))


def head(nums, dists) -> bytes:
    """The head of a record of these numeric and distinct fields (names, in order)."""
    return _HEAD.pack(MAGIC, len(nums), len(dists), layout_id(nums, dists))


def shape(value: bytes) -> tuple[int, int, int] | None:
    """(head size, numeric fields, distinct fields) of a record of either format; None: not a record."""
    if value[:4] == MAGIC and len(value) >= _HEAD.size:
        _, k, d, _ = _HEAD.unpack_from(value)
        return _HEAD.size, k, d
    if value[:4] == LEGACY_MAGIC and len(value) >= _LEGACY_HEAD.size:
        _, k, d = _LEGACY_HEAD.unpack_from(value)
        return _LEGACY_HEAD.size, k, d
    return None


def adapt(raw: bytes, plan: Plan, names_of) -> bytes | None:
    """A record that is not of plan's layout, rewritten in it (None: unreadable, the entity starts afresh).
    Entries keep their times, offsets, ids and liveness (so counts, recency and duplicates carry over), the
    fields both layouts have keep their values, and a field the old layout lacked is missing (NaN, or the
    missing hash 0) in the old entries. `names_of(layout id)`: (numeric names, distinct names), or None when
    unknown."""
    got = shape(raw)
    if got is None:
        return None
    size, k, d = got
    if (len(raw) - size) % entry_dtype(k, d).itemsize:
        return None
    if size == _LEGACY_HEAD.size:  # the first format: no layout id; the same counts are taken for the same fields
        return plan.head + raw[size:] if (k, d) == (len(plan.nums), len(plan.dists)) else None
    names = names_of(_HEAD.unpack_from(raw)[3])
    if names is None or (len(names[0]), len(names[1])) != (k, d):
        return None
    old_nums, old_dists = names
    r = np.frombuffer(raw, entry_dtype(k, d), offset=size)
    out = np.empty(len(r), entry_dtype(len(plan.nums), len(plan.dists)))
    for f in ("t", "off", "id", "live"):
        out[f] = r[f]
    for j, name in enumerate(plan.nums):
        out["num"][:, j] = r["num"][:, old_nums.index(name)] if name in old_nums else NAN
    for j, name in enumerate(plan.dists):
        out["dist"][:, j] = r["dist"][:, old_dists.index(name)] if name in old_dists else 0
    return plan.head + out.tobytes()


def hash_many(texts: list[str]) -> np.ndarray:
    """Stable 64-bit hashes (FNV-1a over the UTF-8 bytes, then the length) of many strings at once, as int64:
    one numpy pass per byte column rather than a hash call per string (Python's own hash is salted per
    process, and the state outlives processes)."""
    raw = [t.encode() for t in texts]
    n = len(raw)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if not n:
        return h.view(np.int64)
    lens = np.fromiter(map(len, raw), dtype=np.int64, count=n)
    width = int(lens.max())
    if width:
        cols = np.array(raw, dtype=f"S{width}").view(np.uint8).reshape(n, width)
        with np.errstate(over="ignore"):
            for j in range(width):
                mixed = (h ^ cols[:, j]) * _FNV_PRIME
                h = np.where(lens > j, mixed, h) if j >= int(lens.min()) else mixed
    with np.errstate(over="ignore"):
        h = (h ^ lens.astype(np.uint64)) * _FNV_PRIME
    return h.view(np.int64)


def id_hash(text: str) -> int:
    """One string's hash_many."""
    return int(hash_many([text])[0])


class Entity:
    """One entity's entries as arrays (see the module docstring)."""

    __slots__ = ("dist", "ids", "live", "nums", "offsets", "times")

    def __init__(self, times, offsets, ids, live, nums, dist) -> None:
        self.times, self.offsets, self.ids, self.live, self.nums, self.dist = times, offsets, ids, live, nums, dist

    @classmethod
    def empty(cls, n_num: int, n_dist: int) -> Entity:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.bool_),
                   np.empty((n_num, 0)), np.empty((n_dist, 0), np.int64))

    @classmethod
    def decode(cls, raw: bytes | None, plan: Plan) -> Entity:
        """A record of plan's layout (the engine adapts others first); none, or not of it: empty."""
        n_num, n_dist = len(plan.nums), len(plan.dists)
        if not raw or raw[:_HEAD.size] != plan.head:
            return cls.empty(n_num, n_dist)
        r = np.frombuffer(raw, entry_dtype(n_num, n_dist), offset=_HEAD.size)
        return cls(r["t"], r["off"], r["id"], r["live"].astype(np.bool_), r["num"].T, r["dist"].T)

    def encode(self, plan: Plan) -> bytes:
        r = np.empty(len(self.times), entry_dtype(len(self.nums), len(self.dist)))
        r["t"], r["off"], r["id"], r["live"], r["num"], r["dist"] = (self.times, self.offsets, self.ids, self.live,
                                                                     self.nums.T, self.dist.T)
        return plan.head + r.tobytes()

    def newest(self) -> int | None:
        """The newest event time among the entries that count for features (None: none)."""
        if not self.live.any():
            return None
        return int(self.times[self.live].max())

    def insert(self, t: int, offset: int, ident: int, live: bool, nums: np.ndarray, dist: np.ndarray) -> None:
        """Add one entry after every entry of the same or earlier time (it arrived after them)."""
        at = int(np.searchsorted(self.times, t, side="right"))
        self.times = np.insert(self.times, at, t)
        self.offsets = np.insert(self.offsets, at, offset)
        self.ids = np.insert(self.ids, at, ident)
        self.live = np.insert(self.live, at, live)
        self.nums = np.insert(self.nums, at, nums, axis=1)
        self.dist = np.insert(self.dist, at, dist, axis=1)

    def trim(self, keep_ms: int) -> None:
        """Drop the entries older than keep_ms behind the newest entry (features' or late)."""
        if not len(self.times):
            return
        newest = self.newest()
        ref = newest if newest is not None else int(self.times.max())
        cut = int(np.searchsorted(self.times, ref - keep_ms, side="left"))
        if cut:
            self.times, self.offsets, self.ids = self.times[cut:], self.offsets[cut:], self.ids[cut:]
            self.live, self.nums, self.dist = self.live[cut:], self.nums[:, cut:], self.dist[:, cut:]


class Plan:
    """A spec turned into index arrays: which column of the output each aggregate writes."""

    def __init__(self, spec: StateSpec) -> None:
        self.spec = spec
        self.names = spec.feature_names()
        self.windows = np.array(spec.windows_ms, dtype=np.int64)
        self.nums, self.dists = spec.numeric_fields, spec.distinct_fields
        self.head = head(self.nums, self.dists)
        self.layout_id = layout_id(self.nums, self.dists)
        # The durations parsed once (the spec's properties parse their text on every access).
        self.longest_ms, self.lateness_ms, self.dedup_ms = spec.longest_ms, spec.lateness_ms, spec.dedup_ms
        self.keep_ms = max(self.longest_ms + self.lateness_ms, self.dedup_ms)
        per_window = [a for a in spec.parsed if a.fn != "seconds_since_last"]
        self.per_window = [(a.fn, self.nums.index(a.field) if a.fn in ("sum", "mean", "max")
                            else self.dists.index(a.field) if a.fn == "distinct" else -1) for a in per_window]
        self.since = any(a.fn == "seconds_since_last" for a in spec.parsed)

    def features(self, e: Entity, t: int, out: np.ndarray) -> None:
        """Fill `out` (one row, len(names)) with the features of an event at time t, from `e` as it stands."""
        live = e.live
        times = e.times
        n_w, n_a = len(self.windows), len(self.per_window)
        if not len(times):
            for w in range(n_w):
                for j, (fn, _) in enumerate(self.per_window):
                    out[w * n_a + j] = 0.0 if fn in ("count", "sum", "distinct") else NAN
            if self.since:
                out[-1] = NAN
            return
        upto = int(np.searchsorted(times, t, side="right"))  # entries at or before t: all arrived earlier
        for w in range(n_w):
            lo = int(np.searchsorted(times, t - int(self.windows[w]), side="left"))
            sel = live[lo:upto]
            cnt = int(sel.sum())
            for j, (fn, col) in enumerate(self.per_window):
                if fn == "count":
                    v = float(cnt)
                elif fn == "distinct":
                    v = float(len(np.unique(e.dist[col, lo:upto][sel]))) if cnt else 0.0
                else:
                    vals = e.nums[col, lo:upto][sel]
                    vals = vals[~np.isnan(vals)]
                    if fn == "sum":
                        v = float(vals.sum()) if len(vals) else 0.0
                    elif not len(vals):
                        v = NAN
                    else:
                        v = float(vals.mean()) if fn == "mean" else float(vals.max())
                out[w * n_a + j] = v
        if self.since:
            lo = int(np.searchsorted(times, t - self.longest_ms, side="left"))
            hit = np.flatnonzero(live[lo:upto])
            out[-1] = (t - int(times[lo + hit[-1]])) / 1000.0 if len(hit) else NAN


def step(plan: Plan, e: Entity, t: int, offset: int, ident: int, nums: np.ndarray, dist: np.ndarray,
         out: np.ndarray) -> tuple[str, int]:
    """One event of the entity, in arrival order: ("dup", first offset) for a duplicate (nothing written to
    `out` or the entity), else ("late" | "ok", -1) with its features in `out` and the entity updated."""
    if len(e.ids):
        same = np.flatnonzero(e.ids == ident)
        if len(same):
            same = same[np.abs(t - e.times[same]) < plan.dedup_ms]
            if len(same):
                return "dup", int(e.offsets[same].min())
    newest = e.newest()
    late = newest is not None and t < newest - plan.lateness_ms
    plan.features(e, t, out)
    e.insert(t, offset, ident, not late, nums, dist)
    return ("late" if late else "ok"), -1
