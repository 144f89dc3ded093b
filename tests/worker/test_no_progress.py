"""Workers that make no progress say why, and end when a new client would help.

- A partition whose committed offset an open transaction holds for ever (what a broker that dropped its
  markers leaves behind) is named in the log, and no other; once the transaction ends, the partition starts and
  every input has exactly one output.
- A consumer that takes nothing while the group's input waits ends its worker, for the supervisor to restart.
"""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import TopicPartition

from muse_stream.errors import StuckConsumerError
from muse_stream.kafka.starts import StartWatch
from muse_stream.worker.progress import ProgressWatch
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
        ready, checks = w.worker.telemetry.readiness()  # the worker says it is not ready meanwhile
        assert (ready, checks["offsets_readable"]) == (False, False)
        assert w.worker.telemetry.status()["offsets_unreadable"] == [f"{s.topics.events}[0]"]
        held.abort_transaction(30)
        recs = reader.until(lambda r: len(r) >= n, timeout=60)
        reader.poll_for(2.0)  # anything extra would be a duplicate
        assert w.worker.telemetry.readiness()[0] is True
    finally:
        w.close()
        reader.close()
    assert {source_of(m)[1] for m in recs} == {0, 1, 2, 3}
    assert_exactly_once(recs, n)


def test_a_worker_whose_consumer_takes_nothing_while_input_waits_ends_itself(stack, caplog):
    """A consumer that stops fetching (here: paused after its first batch) while the group's input waits and its
    committed offsets stand still: the worker logs consumer_stuck and ends with StuckConsumerError, for the
    supervisor to start it again with new clients."""
    s = stack
    publish_model(s, "card_fraud", seed=1)
    produce(s, [event(i, "acme") for i in range(3000)])
    caplog.set_level(logging.ERROR, logger="muse_stream.worker.runtime")

    def configure(wk):
        wk.progress = ProgressWatch(s, after_s=3.0, every_s=1.0)
        between = wk.between_batches

        def between_paused() -> None:
            c = wk.consumer
            if c is not None and wk.stats.events_in:  # after the first batch: fetch nothing more
                c.pause(c.assignment())
            between()

        wk.between_batches = between_paused

    w = ThreadWorker(s, configure=configure)
    w.thread.join(60)
    assert not w.thread.is_alive(), "the worker did not end within 60 s"
    assert isinstance(w.error, StuckConsumerError), w.error
    [line] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "consumer_stuck"]
    assert line.fields["worker"] == 0 and line.fields["partitions"]
