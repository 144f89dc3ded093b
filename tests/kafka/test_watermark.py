"""The input topics' event-time watermark against the real broker: last records, markers, fallbacks."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Producer

from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.topics import TopicSpec, create_topics, ensure_all
from muse_stream.kafka.watermark import event_time_of, input_watermark, last_records

pytestmark = pytest.mark.kafka
T0 = 1_700_000_000_000


def _produce(s, topic, rows, *, transactional_id=None, commit=True):
    """rows: (partition, value bytes, timestamp ms)."""
    p = Producer(producer_config(s, transactional_id=transactional_id))
    if transactional_id:
        p.init_transactions(30)
        p.begin_transaction()
    for part, value, ts in rows:
        p.produce(topic, value, partition=part, timestamp=ts)
    if transactional_id:
        p.commit_transaction(30) if commit else p.abort_transaction(30)
    assert p.flush(30) == 0


def _ev(t: int) -> bytes:
    return orjson.dumps({"event_id": "e", "tenant_id": "acme", "event_time": t, "features": {}})


def test_event_time_of_falls_back_to_the_record_timestamp():
    assert event_time_of(_ev(T0), 5) == T0
    assert event_time_of(b"not json", 5) == 5
    assert event_time_of(b"[1, 2]", 5) == 5
    assert event_time_of(orjson.dumps({"event_time": "soon"}), 5) == 5
    assert event_time_of(orjson.dumps({"event_time": True}), 5) == 5
    assert event_time_of(orjson.dumps({"event_time": 2**63}), 5) == 5
    assert event_time_of(None, 5) == 5


def test_a_far_future_event_time_cannot_push_the_watermark_years_ahead():
    import time

    from muse_stream.kafka.watermark import MAX_AHEAD_MS

    year_2100 = 4_102_444_800_000
    now = int(time.time() * 1000)
    assert now + MAX_AHEAD_MS - 5_000 <= event_time_of(_ev(year_2100), 5) <= int(time.time() * 1000) + MAX_AHEAD_MS


def test_a_change_made_now_starts_the_lead_past_the_watermark(settings_for, unique):
    from muse_stream.kafka.watermark import effective_time

    s = settings_for(unique).with_overrides(runtime={"change_lead_ms": 5000})
    ensure_all(s)
    assert effective_time(s) == 0  # nothing on the input yet: from the start of time
    _produce(s, s.topics.events, [(0, _ev(T0 + 10), 1)])
    assert effective_time(s) == T0 + 11 + 5000


def test_an_event_stamped_ahead_of_the_clock_is_named_when_it_delays_a_change(settings_for, unique, caplog):
    """A producer stamping events in the future (or in microseconds) pushes every change made now up to an
    hour on: the operator is told why, at the change and at a refused --at."""
    import time

    from muse_stream.errors import ModelError
    from muse_stream.kafka.watermark import effective_time
    from muse_stream.models.store import _from_time

    s = settings_for(unique)
    ensure_all(s)
    now = int(time.time() * 1000)
    _produce(s, s.topics.events, [(0, _ev(now * 1000), now)])  # microseconds by mistake
    with caplog.at_level("WARNING", logger="muse_stream.kafka.watermark"):
        at = effective_time(s)
    assert now + 3_500_000 < at < now + 3_700_000 + s.runtime.change_lead_ms
    assert "stamped 60 min ahead of this machine's clock" in caplog.text and f"from event time {at}" in caplog.text
    with pytest.raises(ModelError, match="an event there is stamped 60 min ahead of this machine's clock"):
        _from_time(s, now)
    caplog.clear()
    _produce(s, s.topics.events, [(0, _ev(now), now)])  # fixed: the last record is on time again
    with caplog.at_level("WARNING", logger="muse_stream.kafka.watermark"):
        assert effective_time(s) == now + 1 + s.runtime.change_lead_ms
    assert "ahead" not in caplog.text


def test_empty_or_missing_topics_are_the_start_of_time(settings_for, unique):
    s = settings_for(unique)
    assert input_watermark(s) == 0  # the input topic does not exist yet
    ensure_all(s)
    assert input_watermark(s) == 0


def test_watermark_is_past_the_largest_last_record(settings_for, unique):
    s = settings_for(unique)
    ensure_all(s)  # 4 input partitions
    topic = s.topics.events
    # Partition 0 ends with an earlier event time than it holds: only the last record of a partition counts.
    _produce(s, topic, [(0, _ev(T0 + 500), 1), (0, _ev(T0 + 10), 1), (1, _ev(T0 + 20), 1), (2, b"raw bytes", T0 + 30)])
    assert input_watermark(s) == T0 + 31  # partition 2's record has no event_time: its timestamp counts
    assert sorted(m.partition() for m in last_records(s)) == [0, 1, 2]
    # The last committed record counts, behind commit markers and an aborted transaction's records.
    _produce(s, topic, [(3, _ev(T0 + 40), 1)], transactional_id=f"wm-{unique}")
    _produce(s, topic, [(3, _ev(T0 + 9000), 1)] * 3, transactional_id=f"wm-{unique}", commit=False)
    assert input_watermark(s) == T0 + 41
    # Every input topic counts (extra_inputs too).
    extra = f"t{unique}.more"
    create_topics(s, [TopicSpec(extra, 2)])
    _produce(s, extra, [(1, _ev(T0 + 70), 1)])
    s2 = s.with_overrides(topics={"extra_inputs": [extra]})
    assert input_watermark(s2) == T0 + 71
    assert input_watermark(s, [extra]) == T0 + 71
