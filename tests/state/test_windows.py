"""The window arithmetic against brute force, across batches (records encoded and decoded in between), with
events out of order, late events, ties in time, duplicates and missing values."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from muse_stream.featurespec import StateSpec
from muse_stream.state.windows import Entity, Plan, id_hash, step
from tests.fixtures.state_brute import brute_features, same

SPEC = StateSpec(entity=("card_id",), windows=("1m", "10m", "1h"),
                 aggregates=("count", "sum:amount", "mean:amount", "max:amount", "distinct:merchant",
                             "seconds_since_last"), lateness="5m", dedup_window="24h")


def _events(seed: int, n: int = 600) -> list[dict]:
    rng = random.Random(seed)
    out, t = [], 1_700_000_000_000
    for off in range(n):
        t += rng.choice([0, 0, 500, 3_000, 40_000, 200_000])
        jitter = rng.choice([0, 0, 0, -30_000, -400_000, -3_000_000])  # out of order, some late
        amount = None if rng.random() < 0.1 else rng.randint(1, 500)
        ev = {"offset": off, "eid": f"e{off}", "entity": f"c{rng.randint(0, 7)}", "t": t + jitter,
              "nums": {"amount": amount}, "dist": {"merchant": f"m{rng.randint(0, 5)}"}}
        if off > 10 and rng.random() < 0.05:  # a producer's retry: the same event again, maybe retimed
            ev = {**out[rng.randint(off - 10, off - 1)], "offset": off}
        out.append(ev)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_step_matches_brute_force_across_batches(seed):
    events = _events(seed)
    want = brute_features(events, SPEC)
    plan = Plan(SPEC)
    stored: dict[str, bytes] = {}
    late = dups = 0
    for b in range(0, len(events), 37):  # batches; each entity's record goes through bytes in between
        entities: dict[str, Entity] = {}
        for ev in events[b:b + 37]:
            e = entities.get(ev["entity"]) or Entity.decode(stored.get(ev["entity"]), 1, 1)
            entities[ev["entity"]] = e
            out = np.full(len(plan.names), np.nan)
            amt = ev["nums"]["amount"]
            kind, first = step(plan, e, ev["t"], ev["offset"], id_hash(ev["eid"]),
                               np.array([math.nan if amt is None else float(amt)]),
                               np.array([id_hash(ev["dist"]["merchant"])], dtype=np.int64), out)
            if want[ev["offset"]] == "dup":
                assert kind == "dup", ev
                assert events[first]["eid"] == ev["eid"] and first < ev["offset"]
                dups += 1
                continue
            assert kind != "dup", ev
            late += kind == "late"
            got = dict(zip(plan.names, out.tolist()))
            bad = {k: (got[k], v) for k, v in want[ev["offset"]].items() if not same(got[k], v)}
            assert not bad, (ev, bad)
        for k, e in entities.items():
            e.trim(plan.keep_ms)
            stored[k] = e.encode()
    assert late > 5 and dups > 5  # the data exercised both rules


def test_trim_keeps_state_bounded():
    plan = Plan(SPEC)
    e = Entity.empty(1, 1)
    for i in range(500):
        step(plan, e, i * 3_600_000, i, id_hash(f"x{i}"), np.array([1.0]), np.array([0], dtype=np.int64),
             np.empty(len(plan.names)))
        e.trim(plan.keep_ms)
    assert len(e.times) <= 25  # 24 h of dedup ids at one event an hour, not 500


def test_spec_names_and_refusals():
    assert SPEC.feature_names()[:3] == ("card_id.count_1m", "card_id.sum_amount_1m", "card_id.mean_amount_1m")
    assert SPEC.feature_names()[-1] == "card_id.seconds_since_last"
    for bad in ({"windows": ("30s",)}, {"windows": ("31d",)}, {"aggregates": ("sum",)}, {"aggregates": ("p99:x",)},
                {"aggregates": ("count:x",)}):
        with pytest.raises(ValueError):
            StateSpec(entity=("card_id",), **bad)
