"""The state engine's bounds, with a real RocksDB store and no broker: idle entities swept (a bounded number of
keys per batch, each delete a changelog tombstone in the batch's writes), the wall clock capping the event-time
front, and an entity record over its size limit keeping its newest entries (counted, the batch not failed)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import orjson
from confluent_kafka import Message
from prometheus_client import generate_latest

from muse_stream.config import Settings
from muse_stream.state.engine import StateEngine
from muse_stream.state.store import PartitionStore
from muse_stream.state.windows import _HEAD, entry_dtype
from muse_stream.telemetry.metrics import MetricsHub
from muse_stream.telemetry.state import register_state_metrics, state_status
from tests.fixtures.state_engine import one_store_engine

T0 = 1_700_000_000_000
MIN = 60_000
MODEL = SimpleNamespace(intent="card_fraud")


def _engine(tmp_path) -> StateEngine:
    return one_store_engine(tmp_path)


class Feed:
    def __init__(self, engine: StateEngine) -> None:
        self.engine, self.offset = engine, 0

    def batch(self, events: list[tuple[str, int]]) -> tuple[np.ndarray, list]:
        """(card, event time) per event: one batch through compute and a commit; (features, changelog writes)."""
        msgs, eids = [], []
        for card, t, *eid in events:  # (card, event time[, event id: else its own])
            ev = {"event_id": eid[0] if eid else f"e{self.offset}", "tenant_id": "acme", "event_time": t, "card_id": card,
                  "features": {"amount": 2}}
            msgs.append(Message(topic="in", partition=0, offset=self.offset, key=card.encode(),
                                value=orjson.dumps(ev)))
            eids.append(ev["event_id"])
            self.offset += 1
        cols = SimpleNamespace(msgs=np.array(msgs, dtype=object), eids=np.array(eids, dtype=object),
                               tids=np.array(["acme"] * len(msgs), dtype=object),
                               times=np.array([ev[1] for ev in events], dtype=np.int64))
        self.engine.compute(cols, [(MODEL, np.arange(len(msgs)))])
        writes, self.engine._batch = self.engine._batch, []
        self.engine.committed()
        return self.engine._cols["card_fraud"][1], writes


def _cards(engine: StateEngine) -> set[str]:
    return {k.rsplit(b"\0", 1)[1].decode() for k in engine.stores[("in", 0)].entity_keys()}


def test_idle_entities_are_swept_a_few_keys_per_batch(tmp_path):
    e = _engine(tmp_path)
    e.sweep_per_batch = 3
    feed = Feed(e)
    feed.batch([(f"c{i}", T0 + i) for i in range(10)])
    assert len(_cards(e)) == 10
    # 12 minutes on (retention 11 m: the 10 m dedup window and 1 m lateness, plus 1 m lateness): c0..c9 expire
    tombstones = []
    for n in range(6):  # 16 events a batch: the front (the 16th newest event time) is set from the first on
        _, writes = feed.batch([("x", T0 + 30 * MIN + 100 * n + j) for j in range(16)])
        gone = [k for _, _, k, v in writes if v is None]
        assert len(gone) <= 3  # bounded per batch
        tombstones += gone
    assert _cards(e) == {"x"} and len(tombstones) == 10 and e.stats["swept"] == 10
    # A swept entity that comes back starts afresh, as its windows said anyway.
    feats, _ = feed.batch([("c0", T0 + 31 * MIN), ("c0", T0 + 31 * MIN + 5)])
    assert feats[:, 0].tolist() == [0.0, 1.0]
    # An entity inside its retention is kept however many passes run.
    for n in range(5):
        feed.batch([("x", T0 + 32 * MIN + 100 * n + j) for j in range(16)])
    assert _cards(e) == {"x", "c0"}
    # The totals as metrics (read at collection) and in /status.
    hub = MetricsHub({"service.name": "test"})
    register_state_metrics(hub, e.stats)
    e.stats["late"] += 2
    text = generate_latest(hub.registry).decode()
    assert "muse_state_swept_entities_total 10.0" in text and "muse_state_late_events_total 2.0" in text
    assert state_status(e)["state"]["swept"] == 10 and state_status(None) == {}
    e.close()


def test_the_wall_clock_caps_the_front(tmp_path):
    e = _engine(tmp_path)
    feed = Feed(e)
    now = time.time_ns() // 1_000_000
    feed.batch([("y", now - MIN)])
    for n in range(3):  # a stream 30 days ahead of the clock: the sweep still judges by the clock
        feed.batch([("z", now + 30 * 86_400_000 + 100 * n + j) for j in range(16)])
    assert _cards(e) == {"y", "z"} and e.stats["swept"] == 0
    e.close()


def test_a_few_events_stamped_far_ahead_do_not_expire_a_historical_stream(tmp_path):
    """Event times years behind the clock (a backfill, a replay) and 15 events stamped years ahead, in one
    batch and then one by one: the front stays the historical stream's, so no entity in its retention is swept
    and every later event sees its entity's entries."""
    e = _engine(tmp_path)
    e.sweep_per_batch = 1000
    feed = Feed(e)
    feed.batch([(f"c{i % 20}", T0 + i * 1000) for i in range(100)])
    ahead = T0 + 5 * 365 * 86_400_000
    feed.batch([("far", ahead + j) for j in range(10)])
    for j in range(5):
        feed.batch([("far", ahead + 100 + j)])
    feats, _ = feed.batch([(f"c{i}", T0 + 101_000 + i) for i in range(20)])
    assert e.stats["swept"] == 0 and len(_cards(e)) == 21
    assert e.plans["card_fraud"].names[2] == "card_id.count_10m"
    assert feats[:, 2].tolist() == [5.0] * 20  # each card's 5 earlier events, none forgotten
    e.close()


def test_an_oversized_record_keeps_its_newest_entries(tmp_path):
    e = _engine(tmp_path)
    size = entry_dtype(1, 0).itemsize
    e.max_record_bytes = _HEAD.size + 5 * size
    feed = Feed(e)
    feats, writes = feed.batch([("c", T0 + i * 1000) for i in range(12)])
    assert feats[:, 0].tolist() == list(range(12))  # this batch saw every entry
    (value,) = [v for _, _, k, v in writes if k.endswith(b"\0c")]
    assert len(value) == _HEAD.size + 5 * size and e.stats["capped"] == 1
    feats, _ = feed.batch([("c", T0 + 13_000)])
    assert feats[0, 0] == 5.0  # the newest five remain (the 1 m window holds all twelve otherwise)
    e.close()


def test_debug_features_go_to_their_own_decision_when_event_ids_repeat_in_a_batch(tmp_path):
    """The debug "state" of a decision is its own input record's, even when another tenant's event in the same
    batch has the same event id (it used to be looked up by event id, so one of them showed the other's)."""
    e = _engine(tmp_path)
    e.plans["card_fraud"].spec = e.plans["card_fraud"].spec.model_copy(update={"debug": True})
    rows = [("acme", "c1", T0, "a0"), ("acme", "c1", T0 + 1, "h1"), ("beta", "c2", T0 + 2, "h1")]
    msgs = [Message(topic="in", partition=0, offset=k, key=card.encode(), value=orjson.dumps({
        "event_id": eid, "tenant_id": tid, "event_time": t, "card_id": card, "features": {"amount": 2}}))
        for k, (tid, card, t, eid) in enumerate(rows)]
    cols = SimpleNamespace(msgs=np.array(msgs, dtype=object), eids=np.array([r[3] for r in rows], dtype=object),
                           tids=np.array([r[0] for r in rows], dtype=object), times=np.array([r[2] for r in rows]))
    e.compute(cols, [(MODEL, np.arange(3))])
    decisions = [(f"out.{tid}", eid.encode(), orjson.dumps({"event_id": eid, "source": {
        "topic": "in", "partition": 0, "offset": k}})) for k, (tid, _, _, eid) in enumerate(rows)]
    e.decorate(decisions)
    counts = [orjson.loads(v)["state"]["card_id.count_1m"] for _, _, v in decisions]
    assert counts == [0, 1, 0]  # acme's h1 sees acme's a0; beta's h1, another card, sees nothing


def test_state_fields_of_the_wrong_type_are_refused_not_read_as_missing(tmp_path):
    """Nothing is coerced, as in the event contract: an entity value that is not a string or integer, a
    numeric field that is not a number (or beyond max_abs_feature), a distinct value that is a list or a
    flag: each refuses its event with the reason the contract would give (they were scored as missing)."""
    s = Settings.model_validate({
        "intents": [{"name": "card_fraud", "state": {"entity": ["card_id"], "windows": ["1m"],
                                                     "aggregates": ["count", "sum:amount", "distinct:merchant"]}}],
        "tenants": [{"tenant_id": "acme", "intents": ["card_fraud"], "bands": {"review": 0.9}}],
        "runtime": {"state_dir": str(tmp_path)}})
    e = StateEngine(s, slot=0)
    e.stores[("in", 0)] = PartitionStore(e.folder / "in-0", "in", 0)
    cases = [({"card_id": "c1", "amount": 5, "merchant": "m"}, None),
             ({"card_id": "c1", "amount": 2.5, "merchant": 7}, None),
             ({"card_id": "c2"}, None),  # absent numeric and distinct values: missing, as before
             ({"amount": 5}, "missing_field"),
             ({"card_id": 1.5}, "wrong_type"),
             ({"card_id": True}, "wrong_type"),
             ({"card_id": "c1", "amount": "12"}, "wrong_type"),
             ({"card_id": "c1", "amount": True}, "wrong_type"),
             ({"card_id": "c1", "amount": 1e300}, "value_too_large"),
             ({"card_id": "c1", "merchant": ["a"]}, "wrong_type"),
             ({"card_id": "c1", "merchant": False}, "wrong_type")]
    msgs = []
    for k, (fields, _) in enumerate(cases):
        ev = {"event_id": f"e{k}", "tenant_id": "acme", "event_time": T0 + k, **fields, "features": {}}
        key = str(fields.get("card_id", "")).encode()
        msgs.append(Message(topic="in", partition=0, offset=k, key=key, value=orjson.dumps(ev)))
    cols = SimpleNamespace(msgs=np.array(msgs, dtype=object), eids=np.array([f"e{k}" for k in range(len(cases))],
                                                                              dtype=object),
                           tids=np.array(["acme"] * len(cases), dtype=object), times=T0 + np.arange(len(cases)))
    groups, refused = e.compute(cols, [(MODEL, np.arange(len(cases)))])
    assert {i: reason for i, reason, _, _ in refused} == {k: r for k, (_, r) in enumerate(cases) if r}
    assert groups[0][1].tolist() == [0, 1, 2]
    details = {i: d for i, _, d, _ in refused}
    assert details[4] == "entity field(s) card_id must be a string or integer"
    assert details[6] == "amount must be a number or null" and "beyond max_abs_feature" in details[8]
    e.close()


def test_retries_of_one_event_ahead_and_a_minority_of_events_ahead_do_not_move_the_front(tmp_path):
    """20 retries of one event stamped years ahead (duplicates: one event, not 20), then 50 distinct events
    ahead, a few in each batch of a historical stream: no entity in its retention is swept."""
    e = _engine(tmp_path)
    e.sweep_per_batch = 1000
    feed = Feed(e)
    feed.batch([(f"c{i % 20}", T0 + i * 1000) for i in range(100)])
    ahead = T0 + 5 * 365 * 86_400_000
    feed.batch([("far", ahead, "once")] * 20)  # one event's retries: 19 duplicates
    for b in range(10):
        feed.batch([(f"c{i}", T0 + 100_000 + b * 100 + i) for i in range(15)] + [(f"f{b}{j}", ahead + j) for j in range(5)])
    assert e.stats["swept"] == 0 and len(_cards(e)) >= 20
    assert e.stores[("in", 0)].front < T0 + 200_000
    e.close()
