"""The window arithmetic against brute force, across batches (records encoded and decoded in between), with
events out of order, late events, ties in time, duplicates and missing values."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from muse_stream.featurespec import StateSpec
from muse_stream.state import batch
from muse_stream.state.windows import Entity, Plan, hash_many, id_hash, step
from tests.fixtures.state_brute import brute_features, same

SPEC = StateSpec(entity=("card_id",), windows=("1m", "10m", "1h"),
                 aggregates=("count", "sum:amount", "mean:amount", "max:amount", "distinct:merchant",
                             "seconds_since_last"), lateness="5m", dedup_window="24h")


# Two numeric and two distinct fields, windows from 1 minute to 30 days: the batch path's column bookkeeping.
WIDE = StateSpec(entity=("card_id",), windows=("1m", "1h", "30d"),
                 aggregates=("count", "sum:amount", "max:fee", "mean:fee", "distinct:merchant", "distinct:device",
                             "seconds_since_last"), lateness="10m", dedup_window="1h")


def _events(seed: int, n: int = 600, entities: int = 8, disorder: float = 0.5, dups: float = 0.05) -> list[dict]:
    rng = random.Random(seed)
    out, t = [], 1_700_000_000_000
    for off in range(n):
        t += rng.choice([0, 0, 500, 3_000, 40_000, 200_000])
        jitter = rng.choice([-30_000, -400_000, -3_000_000]) if rng.random() < disorder else 0  # some late
        amount = None if rng.random() < 0.1 else rng.randint(1, 500)
        ev = {"offset": off, "eid": f"e{off}", "entity": f"c{rng.randint(0, entities - 1)}", "t": t + jitter,
              "nums": {"amount": amount, "fee": None if rng.random() < 0.3 else rng.randint(-50, 50)},
              "dist": {"merchant": f"m{rng.randint(0, 5)}", "device": f"d{rng.randint(0, 2)}"}}
        if off > 10 and rng.random() < dups:  # a producer's retry: the same event again, maybe retimed
            ev = {**out[rng.randint(off - 10, off - 1)], "offset": off}
        out.append(ev)
    return out


def _columns(spec: StateSpec, evs: list[dict]):
    nums = np.array([[math.nan if ev["nums"][f] is None else float(ev["nums"][f]) for ev in evs]
                     for f in spec.numeric_fields]).reshape(len(spec.numeric_fields), len(evs))
    dist = np.array([hash_many([str(ev["dist"][f]) for ev in evs]) for f in spec.distinct_fields],
                    dtype=np.int64).reshape(len(spec.distinct_fields), len(evs))
    return nums, dist


@pytest.mark.parametrize(("spec", "seed", "kw"), [
    (SPEC, 1, {}), (SPEC, 2, {"disorder": 0.0, "dups": 0.0, "entities": 40}),
    (SPEC, 3, {"disorder": 0.02, "entities": 60}), (WIDE, 4, {"disorder": 0.05, "entities": 30}),
    (WIDE, 5, {"disorder": 0.0, "dups": 0.0, "entities": 3})])
def test_batch_path_matches_brute_force(spec, seed, kw, monkeypatch):
    """The vectorised batch (state/batch.py), fast and exact paths mixed, against brute force across batches
    of varying size (each entity's record through bytes in between)."""
    exact = []
    real = batch._exact
    monkeypatch.setattr(batch, "_exact", lambda plan, raw, evs, *a: exact.append(len(evs)) or real(plan, raw, evs, *a))
    events = _events(seed, n=900, **kw)
    want = brute_features(events, spec)
    plan, stored, rng = Plan(spec), {}, random.Random(seed)
    kinds = {batch.OK: 0, batch.LATE: 0, batch.DUP: 0}
    b = 0
    while b < len(events):
        evs = events[b:b + rng.choice([1, 7, 50, 200])]
        b += len(evs)
        names = list(dict.fromkeys(ev["entity"] for ev in evs))
        code = np.array([names.index(ev["entity"]) for ev in evs])
        nums, dist = _columns(spec, evs)
        out = np.full((len(evs), len(plan.names)), np.nan)
        kind, first, values = batch.run(plan, [stored.get(n) for n in names], code,
                                        np.array([ev["t"] for ev in evs], dtype=np.int64),
                                        np.array([ev["offset"] for ev in evs], dtype=np.int64),
                                        hash_many([ev["eid"] for ev in evs]), nums, dist, out)
        stored.update(zip(names, values))
        for ev, k, f, row in zip(evs, kind.tolist(), first.tolist(), out):
            kinds[k] += 1
            if want[ev["offset"]] == "dup":
                assert k == batch.DUP and events[f]["eid"] == ev["eid"] and f < ev["offset"], ev
                continue
            assert k != batch.DUP, ev
            got = dict(zip(plan.names, row.tolist()))
            bad = {n: (got[n], v) for n, v in want[ev["offset"]].items() if not same(got[n], v)}
            assert not bad, (ev, bad)
    if kw.get("dups", 0.05):
        assert kinds[batch.DUP] > 5 and kinds[batch.LATE] > 0, kinds  # the data exercised the exact path
        assert 0 < sum(exact) < len(events), sum(exact)  # and both paths
    else:
        assert not exact  # in order, no retries: every event took the vectorised path


def test_hash_many_is_stable_and_matches_one_at_a_time():
    texts = ["", "a", "e-1", "é€", "x" * 70, "a\x00", "a"]
    h = hash_many(texts)
    assert h.dtype == np.int64 and [id_hash(x) for x in texts] == h.tolist()
    assert len(set(h.tolist())) == 6 and h[1] == h[6]
    assert id_hash("e-1") == -5640279826667192637  # fixed across processes: stored state depends on it


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
            e = entities.get(ev["entity"]) or Entity.decode(stored.get(ev["entity"]), plan)
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
            stored[k] = e.encode(plan)
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


def test_a_huge_value_rounds_no_other_window_away(monkeypatch):
    """One entity's 1e20, in the same batch, used to round the other entities' sums (and its own later ones,
    once it left the window) to 0: the prefix sums ran through it."""
    monkeypatch.setattr(batch, "_exact", lambda *a: pytest.fail("this batch is the fast path's"))
    plan = Plan(StateSpec(entity=("card_id",), windows=("1m",), aggregates=("sum:amount", "mean:amount")))
    t0 = 1_700_000_000_000
    evs = [(0, 0, 1e20), (1, 1_000, 5.0), (1, 2_000, 6.0), (1, 3_000, 7.0), (0, 120_000, 5.0), (0, 121_000, 6.0),
           (0, 122_000, 1.0), (2, 122_500, 12.34), (2, 122_600, 0.56), (2, 122_700, 0.0)]
    out = np.full((len(evs), len(plan.names)), np.nan)
    batch.run(plan, [None, None, None], np.array([c for c, _, _ in evs]), np.array([t0 + dt for _, dt, _ in evs]),
              np.arange(len(evs), dtype=np.int64), hash_many([f"e{i}" for i in range(len(evs))]),
              np.array([[a for _, _, a in evs]]), np.zeros((0, len(evs)), dtype=np.int64), out)
    sums, means = out[:, plan.names.index("card_id.sum_amount_1m")], out[:, plan.names.index("card_id.mean_amount_1m")]
    # Up to rounding relative to the windows' own values (before: 0.0 from the third event on).
    assert np.allclose(sums, [0.0, 0.0, 5.0, 11.0, 0.0, 5.0, 11.0, 0.0, 12.34, 12.9], rtol=1e-13, atol=0)
    assert np.allclose(means, [np.nan, np.nan, 5.0, 5.5, np.nan, 5.0, 5.5, np.nan, 12.34, 6.45], equal_nan=True,
                       rtol=1e-13, atol=0)


@pytest.mark.parametrize("big", [[1e30, 7.565469048855986e29], [float(10**29 + k * 10**27) for k in range(401)]])
def test_what_the_compensation_itself_rounds_away_stays_out_of_small_windows(big, monkeypatch):
    """Two-part prefix sums still lost small values when the parts that they carry grow large (a tester's
    1e30 and 7.6e29 made 0.1 + 0.2 read 0.28125, and 401 values near 1e29 made 1 + 2 + 5 read 0): such a
    batch is summed window by window."""
    monkeypatch.setattr(batch, "_exact", lambda *a: pytest.fail("this batch is the fast path's"))
    plan = Plan(StateSpec(entity=("card_id",), windows=("1m",), aggregates=("sum:amount", "mean:amount")))
    t0 = 1_700_000_000_000
    small = [0.1, 0.2, 0.3, 1.0, 2.0, 5.0, 6.0, 7.0]
    evs = [(0, k, a) for k, a in enumerate(big)] + [(1, 1_000 + k, a) for k, a in enumerate(small)]
    out = np.full((len(evs), len(plan.names)), np.nan)
    batch.run(plan, [None, None], np.array([c for c, _, _ in evs]), np.array([t0 + dt for _, dt, _ in evs]),
              np.arange(len(evs), dtype=np.int64), hash_many([f"e{i}" for i in range(len(evs))]),
              np.array([[a for _, _, a in evs]]), np.zeros((0, len(evs)), dtype=np.int64), out)
    sums = out[len(big):, plan.names.index("card_id.sum_amount_1m")]
    want = [math.fsum(small[:k]) for k in range(len(small))]
    assert np.allclose(sums, want, rtol=1e-13, atol=0), sums.tolist()
