"""The per-event part of a batch's state step, as list comprehensions over the batch (no statement loop): each
row's entity value, its Kafka key checked against it, its store key and the values the aggregates read.

Where fields are read (featurespec.py): the entity at the event's top level; the numeric and `distinct` fields
at the top level first, then in `features`. Nothing is coerced, as in the event contract: an entity value that
is not a string or integer, a numeric value that is not a number, or a distinct value that is not a string or
number refuses the event (wrong_type), and a numeric value beyond max_abs_feature too (value_too_large). A
missing (absent or null) distinct value hashes to 0 (one value of its own); a missing numeric value is NaN."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import orjson

from muse_stream.featurespec import entity_key
from muse_stream.state.windows import Plan, hash_many

_value, _key = operator.methodcaller("value"), operator.methodcaller("key")
_offset, _partition, _topic = (operator.methodcaller("offset"), operator.methodcaller("partition"),
                               operator.methodcaller("topic"))
_NAN = math.nan
_NUMBER = (int, float)  # bool is neither here: `type(True) is bool`
MAX_CAPTURE = 16  # _native.c's limit


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()  # in Columns.captured (scoring/columns.py): the event does not carry the field


@dataclass(slots=True)
class Rows:
    kept: np.ndarray  # positions (into the intent's rows) of the rows scored with state
    code: np.ndarray  # their entity codes, in order of first appearance
    entities: list  # per code: (topic, partition, store key)
    offsets: np.ndarray  # int64
    nums: np.ndarray  # (numeric fields, kept) float64
    dists: np.ndarray  # (distinct fields, kept) int64 hashes
    refused: list  # (row, reason, detail, None): missing_field, wrong_partition_key
    wrong: int  # events whose key is not their entity (refused or only counted, per wrong_key)


def capture_fields(plans) -> tuple[str, ...]:
    """The fields the state reads that the compiled scanner may keep for it (Columns.captured; admit_columns
    leaves out the contract's own): ASCII names, at most MAX_CAPTURE. read_rows parses the events again when
    a field it reads was not kept."""
    wanted = dict.fromkeys(f for p in plans for f in (*p.spec.entity, *p.nums, *p.dists))
    return tuple(f for f in wanted if f.isascii())[:MAX_CAPTURE]


def read_rows(intent: str, plan: Plan, cols, rows: np.ndarray, max_abs: float = 1e30) -> Rows:
    spec = plan.spec
    fields = spec.entity
    idx = rows.tolist()
    ms = cols.msgs[rows].tolist()
    ent_in, nums_in, dist_in = _values(plan, cols, rows, ms)
    names = "+".join(fields)
    if len(fields) == 1:
        given = ent_in[0]
        ekeys = [v if type(v) is str else str(v) if type(v) is int else None for v in given]
        absent = [v is None for v in given]
    else:
        given = list(zip(*ent_in))
        ekeys = [entity_key(e) if all(type(v) in (str, int) for v in e) else None for e in given]
        absent = [any(v is None for v in e) for e in given]
    # Nothing is coerced (as in the event contract): a value of the wrong type is refused, never read as missing.
    why: dict[int, tuple[str, str]] = {}
    for j in [j for j, k in enumerate(ekeys) if k is None]:
        why[j] = (("missing_field", f"entity field(s) {names} missing") if absent[j] else
                  ("wrong_type", f"entity field(s) {names} must be a string or integer"
                   + (" without the '|' that joins them" if len(fields) > 1 else "")))
    for k, vals in zip(plan.nums, nums_in):
        for j in [j for j, x in enumerate(vals) if x is not None and not (type(x) in _NUMBER and abs(x) <= max_abs)]:
            x = vals[j]
            why.setdefault(j, ("value_too_large", f"{k} {x!r} is beyond max_abs_feature {max_abs:g}")
                           if type(x) in _NUMBER else ("wrong_type", f"{k} must be a number or null"))
    for k, vals in zip(plan.dists, dist_in):
        for j in [j for j, x in enumerate(vals) if x is not None and type(x) not in (str, *_NUMBER)]:
            why.setdefault(j, ("wrong_type", f"{k} must be a string, a number or null"))
    bkeys = [None if k is None else k.encode() for k in ekeys]
    mkeys = list(map(_key, ms))
    refused = [(idx[j], reason, detail, None) for j, (reason, detail) in sorted(why.items())]
    bad = set(why)
    wrong = [j for j, (a, b) in enumerate(zip(mkeys, bkeys)) if j not in bad and a != b]
    if spec.wrong_key == "dead_letter":
        for j in wrong:
            refused.append((idx[j], "wrong_partition_key", (f"key {mkeys[j]!r} is not the entity {ekeys[j]!r} "
                            f"({names}): its state would be on another partition"), None))
            bad.add(j)
    kept = [j for j in range(len(ms)) if j not in bad] if bad else list(range(len(ms)))
    if bad:
        ms, bkeys = [ms[j] for j in kept], [bkeys[j] for j in kept]
        nums_in = [[vals[j] for j in kept] for vals in nums_in]
        dist_in = [[vals[j] for j in kept] for vals in dist_in]
    tids = cols.tids[rows[kept]].tolist() if bad else cols.tids[rows].tolist()
    head = intent.encode() + b"\0"
    pre = {t: head + str(t).encode() + b"\0" for t in set(tids)}
    ents: dict[tuple, int] = {}
    code = [ents.setdefault(k, len(ents)) for k in zip(map(_topic, ms), map(_partition, ms),
                                                         [pre[t] + b for t, b in zip(tids, bkeys)])]
    n = len(ms)
    nums = np.empty((len(plan.nums), n))
    for r, vals in enumerate(nums_in):
        nums[r] = [_NAN if x is None else x for x in vals]
    dists = np.zeros((len(plan.dists), n), dtype=np.int64)
    for r, vals in enumerate(dist_in):
        there = [j for j, x in enumerate(vals) if x is not None]
        if there:
            dists[r, there] = hash_many([str(vals[j]) for j in there])
    return Rows(np.array(kept, dtype=np.intp), np.array(code, dtype=np.int64), list(ents),
                np.fromiter(map(_offset, ms), dtype=np.int64, count=n), nums, dists, refused, len(wrong))


def _values(plan: Plan, cols, rows: np.ndarray, ms: list) -> tuple[list, list, list]:
    """Per entity field, numeric field and distinct field: its value in each row (None: absent or null). From
    what the scanner kept (Columns.captured) where it read the row, else from the event parsed again: the rows
    it left to the Python contract, and a distinct field read from `features`, where the scanner's float64
    matrix no longer tells 5 from 5.0 (they hash apart, as str() writes them)."""
    cap = getattr(cols, "captured", None)
    if cap is None or any(f not in cap for f in (*plan.spec.entity, *plan.nums, *plan.dists)):
        evs = list(map(orjson.loads, map(_value, ms)))
        return ([[ev.get(f) for ev in evs] for f in plan.spec.entity], [[_field(ev, k) for ev in evs] for k in
                plan.nums], [[_field(ev, k) for ev in evs] for k in plan.dists])
    redo = ~cols.scanned[rows]
    ent = [[None if v is ABSENT else v for v in cap[f][rows].tolist()] for f in plan.spec.entity]
    nums = [_top_then_features(cols, rows, cap[k], k) for k in plan.nums]
    dists = []
    for k in plan.dists:
        top = cap[k][rows].tolist()
        j = cols.names.get(k)
        if j is not None:  # a distinct value in `features`: the event says whether it is 5 or 5.0
            gone = np.fromiter([v is ABSENT for v in top], dtype=np.bool_, count=len(top))
            redo |= gone & cols.present[rows, j] & ~np.isnan(cols.x[rows, j])
        dists.append([None if v is ABSENT else v for v in top])
    for j in np.flatnonzero(redo).tolist():
        ev = orjson.loads(ms[j].value())
        for vals, f in zip(ent, plan.spec.entity):
            vals[j] = ev.get(f)
        for vals, k in zip(nums, plan.nums):
            vals[j] = _field(ev, k)
        for vals, k in zip(dists, plan.dists):
            vals[j] = _field(ev, k)
    return ent, nums, dists


def _top_then_features(cols, rows: np.ndarray, top: np.ndarray, k: str) -> list:
    """A numeric field: its top-level value, else its value in `features` (the scanner's matrix; NaN there
    is null or absent)."""
    got = top[rows].tolist()
    j = cols.names.get(k)
    if j is None:
        return [None if v is ABSENT else v for v in got]
    xs = cols.x[rows, j]
    feat = np.where(np.isnan(xs), None, xs).tolist()
    return [f if v is ABSENT else v for v, f in zip(got, feat)]


def _field(ev: dict, k: str):
    """A state field's value: at the event's top level, else in `features` (None: absent or null)."""
    return ev[k] if k in ev else (ev.get("features") or {}).get(k)
