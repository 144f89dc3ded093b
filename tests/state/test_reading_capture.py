"""The state's per-event reading from the compiled scanner's kept fields against reading every event again with
orjson: the same entities, keys, values, refusals and wrong-key counts, for events of every shape a producer
may send (values of the wrong type, big integers, non-ASCII text, fields at the top level or in `features`)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from confluent_kafka import Message

from muse_stream.featurespec import StateSpec, entity_key
from muse_stream.scoring.columns import scan_values
from muse_stream.state.reading import capture_fields, read_rows
from muse_stream.state.windows import Plan

_native = pytest.importorskip("muse_stream.scoring._native", reason="the compiled scanner is not built here")

MAX_BYTES = 1 << 20
_ABSENT_FIELD = object()
ENTITIES = ["c1", "c2", "c2", "c1", 17, -4, 0, 17.0, True, None, "k\u00fc", 12345678901234567890, "", _ABSENT_FIELD]
AMOUNTS = [3, 2.5, -0.0, None, "7", True, 1e300, 123456789012345, 1.5e-7, _ABSENT_FIELD]
MERCHANTS = ["m1", "m2", 5, 5.0, -1, None, False, "m\u00e9", [1], _ABSENT_FIELD]
IN_FEATURES = [3, 5, 5.0, 2.25, None, _ABSENT_FIELD]


def _event(rng: random.Random, i: int, entity: tuple[str, ...]) -> tuple[bytes, bytes]:
    ev: dict = {"event_id": f"e{i}", "tenant_id": "acme", "event_time": 1_700_000_000_000 + i}
    feats: dict = {"f1": rng.random()}
    for name, choices in (("card_id", ENTITIES), ("region", ["eu", "us", 3, None, _ABSENT_FIELD]),
                          ("amount", AMOUNTS), ("merchant", MERCHANTS)):
        v = rng.choice(choices)
        if v is not _ABSENT_FIELD:
            ev[name] = v
    for name in ("amount", "merchant"):
        v = rng.choice(IN_FEATURES)
        if v is not _ABSENT_FIELD:
            feats[name] = v
    if rng.random() < 0.3:
        ev["note"] = rng.choice(["x", 1, None, 2.5])
    ev["features"] = feats
    card = ev.get("card_id")
    parts = [ev.get(f) for f in entity]
    right = entity_key(parts) if all(type(v) in (str, int) for v in parts) else str(parts)
    key = right.encode() if rng.random() < 0.8 else b"other"
    return key, _big(ev) if isinstance(card, int) and abs(card) >= 2**63 else orjson.dumps(ev)


def _big(ev: dict) -> bytes:
    """orjson refuses to write integers past 64 bits; a producer may still send them."""
    big = ev["card_id"]
    ev = {**ev, "card_id": 0}
    return orjson.dumps(ev).replace(b'"card_id":0', b'"card_id":%d' % big)


def _columns(msgs: list, capture: tuple[str, ...]):
    _, codes, _, _, names, x, present, captured = scan_values(_native, [m.value() for m in msgs], MAX_BYTES, capture)
    return SimpleNamespace(msgs=np.array(msgs + [None], dtype=object)[:-1],
                           tids=np.array(["acme"] * len(msgs), dtype=object), scanned=codes >= 0, names=names, x=x,
                           present=present, captured=captured)


@pytest.mark.parametrize(("entity", "seed"), [(("card_id",), 1), (("card_id",), 2), (("card_id", "region"), 3)])
def test_kept_fields_read_as_parsing_every_event_again(entity, seed):
    spec = StateSpec(entity=entity, windows=("10m",), aggregates=("count", "sum:amount", "max:amount",
                                                                  "distinct:merchant"))
    plan = Plan(spec)
    rng = random.Random(seed)
    msgs = [Message(topic="in", partition=0, offset=i, key=k, value=v)
            for i, (k, v) in enumerate(_event(rng, i, entity) for i in range(3000))]
    capture = capture_fields([plan])
    assert set(capture) == {*entity, "amount", "merchant"}
    cols = _columns(msgs, capture)
    assert 0.2 < cols.scanned.mean() < 0.95  # both readings are exercised
    rows = np.array(sorted(rng.sample(range(len(msgs)), 2500)), dtype=np.intp)
    fast = read_rows("card_fraud", plan, cols, rows, 1e30)
    slow = read_rows("card_fraud", plan, SimpleNamespace(**{**vars(cols), "captured": None}), rows, 1e30)
    assert fast.refused == slow.refused and fast.wrong == slow.wrong
    assert fast.entities == slow.entities
    for name in ("kept", "code", "offsets", "dists"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    assert np.array_equal(fast.nums, slow.nums, equal_nan=True)
    assert np.array_equal(np.signbit(fast.nums), np.signbit(slow.nums))
    reasons = {r[1] for r in slow.refused}
    assert {"missing_field", "wrong_type", "value_too_large", "wrong_partition_key"} <= reasons
    assert len(fast.kept) > 300


def test_at_most_sixteen_fields_are_kept_and_the_rest_are_read_from_the_event():
    plans = [Plan(StateSpec(entity=("card_id",), windows=("10m",), aggregates=[f"distinct:d{i}" for i in
                                                                             range(k, k + 10)]))
             for k in (0, 10)]
    got = capture_fields(plans)
    assert got == ("card_id", *(f"d{i}" for i in range(15)))
    msgs = [Message(topic="in", partition=0, offset=0, key=b"c1", value=orjson.dumps(
        {"event_id": "e", "tenant_id": "acme", "event_time": 1, "card_id": "c1", "d19": "x", "features": {}}))]
    cols = _columns(msgs, got)
    rows = read_rows("card_fraud", plans[1], cols, np.arange(1), 1e30)  # d19 was not kept: parsed again
    assert rows.entities == [("in", 0, b"card_fraud\0acme\0c1")] and rows.dists[-1, 0] != 0


def test_an_entity_the_contract_reads_itself_is_read_from_the_event():
    """tenant_id as the entity: the scanner keeps no copy of the contract's own fields, so read_rows parses."""
    from muse_stream.scoring.columns import admit_columns

    seen = []
    spy = SimpleNamespace(scan=lambda values, size, *rest: seen.append(rest[0]) or _native.scan(values, size, *rest))
    cols, _, _ = admit_columns([], SimpleNamespace(), MAX_BYTES, spy, ("tenant_id", "amount"))
    assert seen == [("amount",)] and set(cols.captured) == {"amount"}
    plan = Plan(StateSpec(entity=("tenant_id",), windows=("10m",), aggregates=("sum:amount",)))
    msgs = [Message(topic="in", partition=0, offset=0, key=b"acme", value=orjson.dumps(
        {"event_id": "e", "tenant_id": "acme", "event_time": 1, "amount": 4, "features": {}}))]
    rows = read_rows("card_fraud", plan, _columns(msgs, ("amount",)), np.arange(1), 1e30)
    assert rows.entities == [("in", 0, b"card_fraud\0acme\0acme")] and rows.nums.tolist() == [[4.0]]
