"""The per-event part of a batch's state step, as list comprehensions over the batch (no statement loop): each
row's entity value, its Kafka key checked against it, its store key and the values the aggregates read.

Where fields are read (featurespec.py): the entity and `distinct` fields at the event's top level; the numeric
fields at the top level first, then in `features`. A missing distinct value hashes to 0 (one value of its
own); a missing or non-numeric numeric value is NaN."""

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


def read_rows(intent: str, plan: Plan, cols, rows: np.ndarray) -> Rows:
    spec = plan.spec
    fields = spec.entity
    idx = rows.tolist()
    ms = cols.msgs[rows].tolist()
    evs = list(map(orjson.loads, map(_value, ms)))
    if len(fields) == 1:
        f0 = fields[0]
        ekeys = [v if type(v) is str else str(v) if type(v) is int else None for v in (ev.get(f0) for ev in evs)]
    else:
        ekeys = [entity_key(e) if all(type(v) in (str, int) for v in e) else None
                 for e in ([ev.get(f) for f in fields] for ev in evs)]
    bkeys = [None if k is None else k.encode() for k in ekeys]
    mkeys = list(map(_key, ms))
    refused, bad = [], set()
    for j in [j for j, k in enumerate(bkeys) if k is None]:
        refused.append((idx[j], "missing_field",
                        f"entity field(s) {'+'.join(fields)} missing or not a string or integer"
                        + (", or holding the '|' that joins them" if len(fields) > 1 else ""), None))
        bad.add(j)
    wrong = [j for j, (a, b) in enumerate(zip(mkeys, bkeys)) if b is not None and a != b]
    if spec.wrong_key == "dead_letter":
        for j in wrong:
            refused.append((idx[j], "wrong_partition_key", (f"key {mkeys[j]!r} is not the entity {ekeys[j]!r} "
                            f"({'+'.join(fields)}): its state would be on another partition"), None))
            bad.add(j)
    kept = [j for j in range(len(ms)) if j not in bad] if bad else list(range(len(ms)))
    if bad:
        ms, evs, bkeys = [ms[j] for j in kept], [evs[j] for j in kept], [bkeys[j] for j in kept]
    tids = cols.tids[rows[kept]].tolist() if bad else cols.tids[rows].tolist()
    head = intent.encode() + b"\0"
    pre = {t: head + str(t).encode() + b"\0" for t in set(tids)}
    ents: dict[tuple, int] = {}
    code = [ents.setdefault(k, len(ents)) for k in zip(map(_topic, ms), map(_partition, ms),
                                                         [pre[t] + b for t, b in zip(tids, bkeys)])]
    n = len(ms)
    nums = np.empty((len(plan.nums), n))
    for r, k in enumerate(plan.nums):
        vals = [ev[k] if k in ev else (ev.get("features") or {}).get(k) for ev in evs]
        nums[r] = [x if type(x) is float else float(x) if type(x) is int else _NAN for x in vals]
    dists = np.zeros((len(plan.dists), n), dtype=np.int64)
    for r, k in enumerate(plan.dists):
        vals = [ev[k] if k in ev else (ev.get("features") or {}).get(k) for ev in evs]
        there = [j for j, x in enumerate(vals) if x is not None]
        if there:
            dists[r, there] = hash_many([str(vals[j]) for j in there])
    return Rows(np.array(kept, dtype=np.intp), np.array(code, dtype=np.int64), list(ents),
                np.fromiter(map(_offset, ms), dtype=np.int64, count=n), nums, dists, refused, len(wrong))
