"""Entity state through real workers on the real broker: every feature of every event against brute force,
across SIGKILLs, a rebalance from 2 to 3 workers and a deleted state folder; duplicates 1 ms and 23 h later."""

from __future__ import annotations

import multiprocessing as mp
import random
import shutil
from collections import Counter, defaultdict

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from muse_stream.config import Settings
from muse_stream.kafka.clients import consumer_config
from muse_stream.state.engine import changelog_topic, state_folder
from muse_stream.worker.supervisor import _child
from tests.fixtures.helpers import FEATURES, TopicReader, decision_topics, produce, publish_model
from tests.fixtures.state_brute import brute_features, same
from tests.fixtures.workers import assert_exactly_once

pytestmark = pytest.mark.kafka
T0 = 1_700_000_000_000
HOUR = 3_600_000


def _stateful(stack: Settings, tmp_path) -> Settings:
    data = stack.model_dump()
    data["intents"] = [{"name": "card_fraud", "unknown_features": "ignore", "state": {
        "entity": ["card_id"], "windows": ["1m", "10m", "1h"], "lateness": "5m", "debug": True,
        "aggregates": ["count", "sum:amount", "max:amount", "distinct:merchant", "seconds_since_last"]}},
        {"name": "account_takeover"}]
    data["batch"] = {**data["batch"], "max_events": 150}
    data["runtime"] = {**data["runtime"], "state_dir": str(tmp_path / "state")}
    return Settings.model_validate(data)


def _events(start: int, n: int, rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    values, keys = [], []
    t = T0 + start * 2_000
    for i in range(start, start + n):
        t += rng.choice([0, 500, 2_000, 9_000])
        card = f"c{rng.randint(0, 29)}"
        ev = {"event_id": f"e-{i}", "tenant_id": "acme", "event_time": t + rng.choice([0, 0, 0, -20_000, -900_000]),
              "card_id": card, "merchant": f"m{rng.randint(0, 4)}",
              "features": {**{f: rng.random() for f in FEATURES}, "amount": rng.randint(1, 900)}}
        if rng.random() < 0.01:  # refused by the model's matrix (value_too_large): it never enters the state
            ev["features"][FEATURES[0]] = 1e31
        key = card if rng.random() > 0.01 else "wrong"
        values.append(orjson.dumps(ev))
        keys.append(key.encode())
    return values, keys


def _spawn(s, slot):
    p = mp.get_context("spawn").Process(target=_child, args=(s, slot, False), daemon=True)
    p.start()
    return p


def _inputs(s: Settings) -> dict[int, list[dict]]:
    """Each partition's events in offset order, as the brute force reads them (wrong keys left out)."""
    c = Consumer(consumer_config(s, group_id="test-brute"))
    t = s.topics.events
    out: dict[int, list[dict]] = defaultdict(list)
    for p in c.list_topics(t, timeout=10).topics[t].partitions:
        lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
        c.assign([TopicPartition(t, p, lo)])
        while not out[p] or out[p][-1]["offset"] < hi - 1:
            for m in c.consume(1000, 1.0):
                ev = orjson.loads(m.value())
                if m.key() != ev["card_id"].encode() or ev["features"][FEATURES[0]] > 1e30:
                    out[p].append({"offset": m.offset(), "skip": True})
                    continue
                out[p].append({"offset": m.offset(), "eid": ev["event_id"], "entity": ev["card_id"],
                               "t": ev["event_time"], "nums": {"amount": ev["features"]["amount"]},
                               "dist": {"merchant": ev["merchant"]}})
    c.close()
    return out


def _check(s: Settings, recs: list) -> Counter:
    spec = s.intents[0].state
    want = {}
    for p, evs in _inputs(s).items():
        for off, f in brute_features([e for e in evs if not e.get("skip")], spec).items():
            want[(p, off)] = f
    kinds: Counter = Counter()
    for m in recs:
        if m.topic() == s.topics.deadletter:
            h = dict(m.headers())
            reason, key = h["muse.reason"].decode(), (int(h["muse.source.partition"]), int(h["muse.source.offset"]))
            kinds[reason] += 1
            if reason == "duplicate_event":
                assert want[key] == "dup", key
                assert int(h["muse.first.offset"]) < key[1]
            continue
        d = orjson.loads(m.value())
        key = (d["source"]["partition"], d["source"]["offset"])
        assert want[key] != "dup", key
        bad = {k: (d["state"].get(k), v) for k, v in want[key].items() if not same(d["state"].get(k), v)}
        assert not bad, (key, bad)
        kinds["decision"] += 1
    return kinds


def test_features_equal_brute_force_across_kills_rebalance_and_lost_folder(stack, tmp_path):
    s = _stateful(stack, tmp_path)
    publish_model(s, "card_fraud", seed=1)
    rng = random.Random(5)
    values, keys = _events(0, 4000, rng)
    # Duplicates: a retry 1 ms later and one 23 h later (event time), with the original's key.
    for i, lag in ((100, 1), (200, 23 * HOUR)):
        ev = orjson.loads(values[i])
        values.append(orjson.dumps({**ev, "event_time": ev["event_time"] + lag}))
        keys.append(keys[i] if keys[i] != b"wrong" else ev["card_id"].encode())
    # A refused event sent again, corrected, with its event id: scored as the first occurrence, not a duplicate.
    refused = [orjson.loads(v) for v in values if orjson.loads(v)["features"][FEATURES[0]] > 1e30]
    fixed = refused[0]
    values.append(orjson.dumps({**fixed, "event_time": fixed["event_time"] + 5,
                                "features": {**fixed["features"], FEATURES[0]: 0.5}}))
    keys.append(fixed["card_id"].encode())
    produce(s, values, keys=keys)
    n = len(values)
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    procs = {0: _spawn(s, 0), 1: _spawn(s, 1)}
    try:
        reader.until(lambda r: len(r) >= 1500, timeout=90)
        procs[1].kill()  # SIGKILL mid-stream: its open transaction (state included) is aborted
        procs[1].join(10)
        procs[1], procs[2] = _spawn(s, 1), _spawn(s, 2)  # and a rebalance to three workers
        recs = reader.until(lambda r: len(r) >= n, timeout=120)
        reader.poll_for(1.0)
        procs[0].kill()
        procs[0].join(10)
    finally:
        for p in procs.values():
            p.terminate()
            p.join(30)
    assert_exactly_once(recs, n)
    kinds = _check(s, recs)
    assert kinds["duplicate_event"] >= 2 and kinds["wrong_partition_key"] > 20 and kinds["value_too_large"] > 20, kinds
    # Every worker's folder gone: a restart restores each partition from the changelog, and the next
    # decisions are what brute force over the whole history (a run that never lost it) gives.
    for slot in range(3):
        shutil.rmtree(state_folder(s, slot), ignore_errors=True)
    more, more_keys = _events(4000, 1500, rng)
    produce(s, more, keys=more_keys)
    procs = {slot: _spawn(s, slot) for slot in range(3)}  # static members: each slot takes its partitions back
    try:
        recs = reader.until(lambda r: len(r) >= n + len(more), timeout=120)
        reader.poll_for(1.0)
    finally:
        for p in procs.values():
            p.terminate()
            p.join(30)
        reader.close()
    assert [p.exitcode for p in procs.values()] == [0, 0, 0]
    assert_exactly_once(recs, n + len(more))
    kinds = _check(s, recs)
    assert kinds["decision"] > 5000
    _replay_equals_live(s, recs)
    assert changelog_topic(s, s.topics.events) in Consumer(consumer_config(s, group_id="x")).list_topics(
        timeout=10).topics


def _replay_equals_live(s: Settings, live: list) -> None:
    """A replay of the later part of each partition builds the entity state from the partition's start, so
    every replayed decision (state features, score, band) and dead letter (duplicates too) is live's."""
    from muse_stream.analysis.replay import run_replay
    from muse_stream.kafka.ranges import Bound

    def by_source(recs):
        out = {}
        for m in recs:
            if m.topic().endswith("deadletter"):
                h = dict(m.headers())
                out[(int(h["muse.source.partition"]), int(h["muse.source.offset"]))] = h["muse.reason"].decode()
            else:
                d = orjson.loads(m.value())
                out[(d["source"]["partition"], d["source"]["offset"])] = (
                    d["score"], d["raw_score"], d["band"], d["model_version"], d["state"])
        return out

    res = run_replay(s, start=Bound("offset", 300), end=Bound("end"), run_id="r1", prefix=f"{s.topics.events}.rp.")
    reader = TopicReader(s, res.topics)
    try:
        replayed = by_source(reader.until(lambda r: len(r) >= res.events, timeout=60))
    finally:
        reader.close()
    want = {k: v for k, v in by_source(live).items() if k[1] >= 300}
    assert res.events == len(want) == len(replayed) and replayed == want
    assert "duplicate_event" in replayed.values()  # the retries of events before the range, caught as live did
