"""A state spec that changes under a store that already holds records, with a real RocksDB store and no broker:
records written under other fields are read by field name (never one field's values as another's), counts,
recency and duplicates carry over, the change is logged once, the sweep keeps them, and records of the first
format still read."""

from __future__ import annotations

import logging
import struct
from types import SimpleNamespace

import numpy as np
import orjson
from confluent_kafka import Message

from muse_stream.state.engine import StateEngine
from muse_stream.state.windows import _HEAD, entry_dtype
from tests.fixtures.state_engine import one_store_engine

T0 = 1_700_000_000_000
MODEL = SimpleNamespace(intent="card_fraud")


def _engine(folder, aggregates, windows=("1m", "10m")) -> StateEngine:
    return one_store_engine(folder, aggregates, windows)


def _batch(e: StateEngine, events: list[dict], first_offset: int) -> tuple[dict, list]:
    """One batch (each event: card, t, eid, and its feature values); per event its features by name (or "dup"),
    and the changelog writes."""
    msgs = [Message(topic="in", partition=0, offset=first_offset + k, key=ev["card"].encode(), value=orjson.dumps(
        {"event_id": ev["eid"], "tenant_id": "acme", "event_time": ev["t"], "card_id": ev["card"],
         "features": ev["features"]})) for k, ev in enumerate(events)]
    cols = SimpleNamespace(msgs=np.array(msgs, dtype=object), eids=np.array([ev["eid"] for ev in events], dtype=object),
                           tids=np.array(["acme"] * len(events), dtype=object),
                           times=np.array([ev["t"] for ev in events], dtype=np.int64))
    _, refused = e.compute(cols, [(MODEL, np.arange(len(events)))])
    writes, e._batch = e._batch, []
    e.committed()
    names = e.plans["card_fraud"].names
    feats = e._cols["card_fraud"][1]
    dup = {r[0] for r in refused if r[1] == "duplicate_event"}
    return [("dup" if i in dup else dict(zip(names, feats[i].tolist()))) for i in range(len(events))], writes


def _old_events() -> list[dict]:
    return [{"card": "c", "t": T0 + i * 1000, "eid": f"e{i}", "features": {"amount": 10.0 * (i + 1), "fee": 1.0}}
            for i in range(5)]


def test_a_field_swapped_for_another_is_missing_in_old_entries_never_read_as_it(tmp_path, caplog):
    e = _engine(tmp_path, ["count", "sum:amount"])
    _batch(e, _old_events(), 0)
    e.close()
    # The same number of numeric fields, another field: the old layout's head would have matched.
    e = _engine(tmp_path, ["count", "sum:fee", "max:fee"])
    with caplog.at_level(logging.WARNING, logger="muse_stream.state.engine"):
        got, writes = _batch(e, [{"card": "c", "t": T0 + 5000, "eid": "n1", "features": {"amount": 1.0, "fee": 2.0}},
                                 {"card": "c", "t": T0 + 6000, "eid": "e2", "features": {"amount": 1.0, "fee": 2.0}}],
                             5)
    first = got[0]
    assert first["card_id.count_1m"] == 5.0  # the old entries still count
    assert first["card_id.sum_fee_1m"] == 0.0 and np.isnan(first["card_id.max_fee_1m"])  # fee unknown in them
    assert got[1] == "dup"  # e2 was seen before the change
    assert e.stats["adapted"] == 1 and e.stats["unreadable"] == 0
    [line] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "state_spec_changed"]
    assert line.fields["changed"] == ["aggregates"] and "in[0]" in line.getMessage()
    # Written back in the new layout, with the spec and layout records beside it in the changelog.
    keys = [k for _, _, k, _ in writes]
    assert any(k.startswith(b"\x00spec\x00") for k in keys) and any(k.startswith(b"\x00layout\x00") for k in keys)
    got, _ = _batch(e, [{"card": "c", "t": T0 + 7000, "eid": "n3", "features": {"amount": 1.0, "fee": 3.0}}], 7)
    assert got[0]["card_id.count_1m"] == 6.0 and got[0]["card_id.sum_fee_1m"] == 2.0
    e.close()


def test_a_field_added_keeps_the_others_and_the_change_is_said_once(tmp_path, caplog):
    e = _engine(tmp_path, ["count", "sum:amount"])
    _batch(e, _old_events(), 0)
    e.close()
    e = _engine(tmp_path, ["count", "sum:amount", "distinct:fee", "max:fee"], windows=("1m", "1h"))
    with caplog.at_level(logging.WARNING, logger="muse_stream.state.engine"):
        got, _ = _batch(e, [{"card": "c", "t": T0 + 5000, "eid": "n1", "features": {"amount": 1.0, "fee": 2.0}},
                            {"card": "d", "t": T0 + 5000, "eid": "n2", "features": {"amount": 1.0, "fee": 2.0}}], 5)
        _batch(e, [{"card": "c", "t": T0 + 6000, "eid": "n3", "features": {"amount": 1.0, "fee": 2.0}}], 7)
    assert got[0]["card_id.sum_amount_1m"] == 150.0 and got[0]["card_id.count_1h"] == 5.0
    assert got[0]["card_id.distinct_fee_1m"] == 1.0  # the old entries' fee is one value: missing
    assert np.isnan(got[0]["card_id.max_fee_1m"])
    changes = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "state_spec_changed"]
    assert len(changes) == 1 and changes[0].fields["changed"] == ["aggregates", "windows"]
    e.close()


def test_records_of_another_layout_are_swept_by_their_own_age_only(tmp_path):
    e = _engine(tmp_path, ["count", "sum:amount"])
    _batch(e, _old_events(), 0)
    e.close()
    e = _engine(tmp_path, ["count", "max:fee"])
    e.sweep_per_batch = 100
    # Another card 5 minutes on (inside the 12 min retention of c's entries): c stays, in its old layout.
    _batch(e, [{"card": f"x{i}", "t": T0 + 300_000 + i, "eid": f"x{i}", "features": {"fee": 1.0}} for i in range(16)], 5)
    assert e.stats["swept"] == 0 and b"card_fraud\x00acme\x00c" in e.stores[("in", 0)].entity_keys()
    # 30 minutes on (most of the recent events, so the front moves there): past it; swept.
    _batch(e, [{"card": f"y{i}", "t": T0 + 1_800_000 + i, "eid": f"y{i}", "features": {"fee": 1.0}}
               for i in range(40)], 21)
    assert b"card_fraud\x00acme\x00c" not in e.stores[("in", 0)].entity_keys()
    e.close()


def test_a_record_of_the_first_format_reads_when_its_field_counts_match(tmp_path):
    e = _engine(tmp_path, ["count", "sum:amount"])
    dt = entry_dtype(1, 0)
    rows = np.zeros(3, dt)
    rows["t"], rows["off"], rows["live"], rows["num"][:, 0] = [T0, T0 + 1, T0 + 2], [0, 1, 2], 1, [1.0, 2.0, 4.0]
    rows["id"] = [11, 12, 13]
    store = e.stores[("in", 0)]
    store.db[b"card_fraud\x00acme\x00c"] = struct.pack("<4sHH", b"MSE1", 1, 0) + rows.tobytes()
    store.db[b"card_fraud\x00acme\x00d"] = struct.pack("<4sHH", b"MSE1", 2, 0) + np.zeros(1, entry_dtype(2, 0)).tobytes()
    got, writes = _batch(e, [{"card": "c", "t": T0 + 3, "eid": "n", "features": {"amount": 1.0}},
                             {"card": "d", "t": T0 + 3, "eid": "n", "features": {"amount": 1.0}}], 3)
    assert got[0]["card_id.count_1m"] == 3.0 and got[0]["card_id.sum_amount_1m"] == 7.0
    assert got[1]["card_id.count_1m"] == 0.0  # another field count: unreadable, afresh
    assert e.stats["adapted"] == 1 and e.stats["unreadable"] == 1
    (value,) = [v for _, _, k, v in writes if k == b"card_fraud\x00acme\x00c"]
    assert value[:4] == b"MSE2" and len(value) == _HEAD.size + 4 * dt.itemsize
    e.close()
