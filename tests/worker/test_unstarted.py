"""A worker whose input partition waits on a transaction that never ends (what a broker that dropped its markers
leaves behind) says so in its log, naming that partition and no other; once the transaction ends, the partition
starts and every input has exactly one output."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import TopicPartition

from muse_stream.kafka.starts import StartWatch
from tests.fixtures.helpers import (
    TopicReader,
    decision_topics,
    event,
    hold_offset,
    produce,
    publish_model,
    source_of,
)
from tests.fixtures.workers import ThreadWorker, assert_exactly_once

pytestmark = pytest.mark.kafka


def _not_started(caplog) -> list:
    return [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "partitions_not_started"]


def test_a_partition_held_by_an_open_transaction_is_named_in_the_log(stack, unique, caplog):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    n = 200
    produce(s, [event(i, "acme") for i in range(n)])
    holder = s.with_overrides(runtime={"transaction_timeout_ms": 300_000})  # outlives the test
    held = hold_offset(holder, s.runtime.group_id, TopicPartition(s.topics.events, 0, 0), f"hold{unique}")
    caplog.set_level(logging.ERROR, logger="muse_stream.worker.runtime")
    w = ThreadWorker(s, configure=lambda wk: setattr(wk, "starts", StartWatch(after_s=2.0, every_s=1.0)))
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    try:
        deadline = time.monotonic() + 60
        while not _not_started(caplog) and time.monotonic() < deadline:
            reader.poll_for(0.5)
        [first, *_] = _not_started(caplog) or [None]
        assert first is not None, "no partitions_not_started error within 60 s"
        assert first.fields["partitions"] == [f"{s.topics.events}[0]"]
        assert "Brokers that leave a transaction open" in first.getMessage()
        reader.poll_for(2.0)
        assert 0 not in {source_of(m)[1] for m in reader.records}  # partition 0 waits
        held.abort_transaction(30)
        recs = reader.until(lambda r: len(r) >= n, timeout=60)
        reader.poll_for(2.0)  # anything extra would be a duplicate
    finally:
        w.close()
        reader.close()
    assert {source_of(m)[1] for m in recs} == {0, 1, 2, 3}
    assert_exactly_once(recs, n)
