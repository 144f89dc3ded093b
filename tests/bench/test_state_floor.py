"""The entity-state floor the bench runs beside the real state (bench/state_floor.py), and how the bench
compares the three kinds of run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from confluent_kafka import Message

from muse_stream.bench.state_floor import FloorEngine
from muse_stream.bench.state_runs import _compare
from muse_stream.state.store import PartitionStore
from tests.fixtures.state_engine import one_store_engine


def test_the_floor_reads_writes_and_logs_one_record_per_entity_and_computes_nothing(tmp_path):
    settings = one_store_engine(tmp_path / "unused").settings
    e = FloorEngine(settings, slot=0)
    e.stores[("in", 0)] = store = PartitionStore(tmp_path / "in-0", "in", 0)
    e._synced = float("inf")
    cards = [b"c1", b"c2", b"c1", b"c3"]
    msgs = [Message(topic="in", partition=0, offset=i, key=k, value=b"{}") for i, k in enumerate(cards)]
    cols = SimpleNamespace(msgs=np.array(msgs + [None], dtype=object)[:-1],
                           tids=np.array(["acme"] * 4, dtype=object))
    model = SimpleNamespace(intent="card_fraud", features=["card_id.count_1m"])
    groups = [(model, np.arange(4))]
    got, refused = e.compute(cols, groups)
    assert got is groups and refused == []
    keys = sorted({b"card_fraud\0acme\0" + k for k in cards})
    assert sorted(k for _, _, k, _ in e._batch) == sorted(b"card_fraud\0acme\0" + k for k in cards)
    assert {t for t, _, _, _ in e._batch} == {f"{settings.runtime.group_id}.in.state-changelog"}
    x = np.full((4, 1), np.nan, dtype=np.float32)
    e.fill(model, x, np.arange(4))
    assert np.isnan(x).all()  # nothing computed: the model's state columns stay missing
    e.committed()
    assert store.entity_keys() == keys
    plan = e.plans["card_fraud"]
    assert all(v[:len(plan.head)] == plan.head for v in store.get_many(keys))
    e.close()


def test_the_bench_reports_the_floor_beside_the_state():
    runs = [{"run": "state-off", "state": False, "events_per_s": 200, "cpu_s_per_1k_events": 0.005},
            {"run": "state-floor", "state": "floor", "events_per_s": 150, "cpu_s_per_1k_events": 0.007},
            {"run": "state-on", "state": True, "events_per_s": 100, "cpu_s_per_1k_events": 0.010},
            {"run": "state-on.ab2", "state": True, "error": "failed"}]
    got = _compare(runs)
    assert got["slowdown"] == 0.5 and got["floor_slowdown"] == 0.25
    assert got["events_per_s_floor"] == 150 and got["cpu_us_per_event_floor"] == 2.0
    assert got["cpu_us_per_event_state"] == 5.0
