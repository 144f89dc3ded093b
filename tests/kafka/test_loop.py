"""The engine's step order, without a broker: the stream loop, the checkpoint and the output producer against
in-memory fakes that log every call (tests/fixtures/fake_kafka.py). The same sequences run against the real
broker in tests/worker/test_failures.py."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError

from muse_stream.errors import AbortRequired, FatalKafkaError
from muse_stream.kafka.loop import LoopSettings, StreamLoop
from muse_stream.kafka.producer import OutputProducer
from tests.fixtures.fake_kafka import FakeConsumer, FakeProducerClient


def make_loop(*, exactly_once=True, process=None, batches_then_stop=1, max_events=100, per_partition=5,
              commit_interval_s=0.0, max_aborts=10):
    log: list = []
    consumer = FakeConsumer(log, per_partition=per_partition)
    client = FakeProducerClient(log, consumer)
    producer = OutputProducer({}, name="fake", client=client)
    stop = threading.Event()
    turns = {"n": 0}

    def between():
        turns["n"] += 1
        if turns["n"] > batches_then_stop:
            stop.set()

    def copy(msgs):
        for m in msgs:
            producer.produce("out", m.value(), m.key())

    loop = StreamLoop(LoopSettings(("in",), exactly_once, max_events, 0.0, commit_interval_s,
                                   max_aborts_in_a_row=max_aborts, max_backoff_s=0.0),
                      consumer_config={}, producer=producer, process=process or copy, between_batches=between,
                      stop=stop, consumer=consumer)
    return loop, log, consumer, client, stop


def names(log):
    return [e[0] for e in log]


def test_exactly_once_commit_reads_top_to_bottom():
    loop, log, consumer, client, _ = make_loop()
    loop.run()
    seq = names(log)
    # init before joining the group; one transaction around the batch; positions read after its outputs
    assert seq.index("init_transactions") < seq.index("subscribe")
    b, p = seq.index("begin_transaction"), seq.index("position")
    assert b < seq.index("produce") < p < seq.index("send_offsets_to_transaction") < seq.index("commit_transaction")
    assert ("send_offsets_to_transaction", ((0, 5), (1, 5))) in log
    assert consumer.committed_offsets == {0: 5, 1: 5}
    assert len(client.produced) == 10
    assert "abort_transaction" not in seq


def test_at_least_once_flushes_before_committing_offsets():
    loop, log, consumer, _client, _ = make_loop(exactly_once=False)
    loop.run()
    seq = names(log)
    assert "begin_transaction" not in seq and "send_offsets_to_transaction" not in seq
    assert seq.index("produce") < seq.index("flush") < seq.index("consumer.commit")
    assert consumer.committed_offsets == {0: 5, 1: 5}


def test_unexpected_error_in_process_aborts_and_commits_nothing_even_on_close():
    def boom(msgs):
        raise ValueError("model misbehaved")

    loop, log, consumer, _client, _ = make_loop(process=boom)
    with pytest.raises(ValueError):
        loop.run()
    seq = names(log)
    assert "abort_transaction" in seq
    assert "send_offsets_to_transaction" not in seq and "commit_transaction" not in seq
    assert "close" in seq  # the consumer closed (its revoke callback ran) and still nothing was committed
    assert consumer.committed_offsets == {}


def test_error_after_some_outputs_were_produced_commits_none_of_them():
    def half(msgs):
        loop.producer.produce("out", b"x", b"k")
        raise RuntimeError("after the first output")

    loop, _log, consumer, client, _ = make_loop(process=half)
    with pytest.raises(RuntimeError):
        loop.run()
    assert client.produced == [] and consumer.committed_offsets == {}


@pytest.mark.parametrize("call", ["send_offsets_to_transaction", "commit_transaction"])
def test_abortable_commit_error_aborts_rewinds_and_the_batch_is_done_again(call):
    loop, log, consumer, client, _ = make_loop(batches_then_stop=3)
    client.fail[call] = KafkaError(KafkaError._STATE, "abortable", txn_requires_abort=True)
    loop.run()
    seq = names(log)
    assert "abort_transaction" in seq and "seek" in seq
    # after the rewind the same records were processed again and committed once
    assert consumer.committed_offsets == {0: 5, 1: 5}
    assert len(client.produced) == 10
    assert loop.stats.aborts == 1


def test_retriable_commit_error_is_retried_without_abort():
    loop, log, consumer, client, _ = make_loop()
    client.fail["commit_transaction"] = KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True)
    loop.run()
    assert "abort_transaction" not in names(log)
    assert consumer.committed_offsets == {0: 5, 1: 5}


def test_fatal_error_stops_without_abort_or_commit():
    loop, log, consumer, client, _ = make_loop()
    client.fail["commit_transaction"] = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    with pytest.raises(FatalKafkaError):
        loop.run()
    assert "abort_transaction" not in names(log)
    assert consumer.committed_offsets == {}


def test_failed_delivery_is_raised_before_commit_and_the_batch_is_redone():
    loop, log, consumer, _client, _ = make_loop(batches_then_stop=3)
    original = loop.process

    def process_with_one_failed_delivery(msgs):
        original(msgs)
        if loop.stats.aborts == 0:
            loop.producer._on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT, "timed out"), msgs[0])

    loop.process = process_with_one_failed_delivery
    loop.run()
    seq = names(log)
    first_abort = seq.index("abort_transaction")
    assert "send_offsets_to_transaction" not in seq[:first_abort]  # nothing committed over the lost write
    assert consumer.committed_offsets == {0: 5, 1: 5}
    assert loop.stats.aborts == 1


def test_aborts_are_bounded():
    loop, _log, consumer, _client, _ = make_loop(batches_then_stop=100, max_aborts=3)

    def always_abort(msgs):
        raise AbortRequired("always")

    loop.process = always_abort
    with pytest.raises(FatalKafkaError, match="4 transactions in a row"):
        loop.run()
    assert consumer.committed_offsets == {}


def test_revoke_inside_the_next_poll_commits_only_processed_records():
    """A rebalance callback runs inside poll or consume: what it commits must be the processed batch, never a
    message that poll has already returned but nobody has processed."""
    loop, _log, consumer, _client, _stop = make_loop(batches_then_stop=2, max_events=3, per_partition=5,
                                                  commit_interval_s=3600.0)
    committed_at_revoke = {}

    def revoke_then_take(c):
        # the revoke callback, as librdkafka would run it inside this poll
        c.callbacks["revoke"](c, c.assignment())
        committed_at_revoke.update(c.committed_offsets)

    original = loop.process

    def process_then_arm(msgs):
        original(msgs)
        if not committed_at_revoke:
            consumer.before_consume = revoke_then_take

    loop.process = process_then_arm
    loop.run()
    # the first batch (3 records of partition 0) was processed; the revoke committed exactly that
    assert committed_at_revoke == {0: 3}


def test_a_fatal_consumer_error_stops_the_loop_even_without_the_fatal_flag():
    """librdkafka hands a fenced static member's error as code _FATAL with fatal() False."""
    from muse_stream.kafka.loop import drop_errors

    class Failed:
        def __init__(self, err):
            self._err = err

        def error(self):
            return self._err

    with pytest.raises(FatalKafkaError):
        drop_errors([Failed(KafkaError(KafkaError._FATAL, "Static consumer fenced"))])
    assert drop_errors([Failed(KafkaError(KafkaError._TRANSPORT, "broker down"))]) == []


def test_commit_pacer_commits_at_once_when_caught_up_and_on_the_interval_when_behind():
    from muse_stream.kafka.loop import CommitPacer

    p = CommitPacer(0.1, early=True, share=0.8)
    assert p.due_at(caught_up=True) == p.last  # no commit measured yet: at once
    p.committed(0.02)
    assert p.due_at(caught_up=True) == pytest.approx(p.last + 0.005)  # commits at most 80% of the time
    assert p.due_at(caught_up=False) == pytest.approx(p.last + 0.1)  # full batches: the interval
    alo = CommitPacer(0.1, early=False)
    assert alo.due_at(caught_up=True) == alo.last + 0.1


@pytest.mark.parametrize(("max_events", "early"), [(100, 1), (3, 0)])
def test_exactly_once_commits_a_batch_that_left_it_caught_up_before_the_interval(max_events, early):
    loop, log, consumer, _client, _ = make_loop(max_events=max_events, commit_interval_s=3600.0)
    loop.run()
    # caught up (a batch smaller than max_events): committed inside the loop; behind: only at the final commit
    assert loop.stats.early_commits == early
    assert names(log).count("commit_transaction") == 1
    assert consumer.committed_offsets


def test_at_least_once_caught_up_commits_offsets_once_outputs_are_delivered_without_blocking():
    import time

    def slow_copy(msgs):  # past the interval (0.05 s), not yet past twice it, when the batch is done
        for m in msgs:
            loop.producer.produce("out", m.value(), m.key())
        time.sleep(0.06)

    loop, log, consumer, client, _ = make_loop(exactly_once=False, batches_then_stop=3, process=slow_copy,
                                               commit_interval_s=0.05)
    in_flight = [1]  # the first look finds one output still in flight
    flushes = []
    real_flush = client.flush

    def flush(timeout=None):
        flushes.append(timeout)
        real_flush(timeout)
        return in_flight.pop() if in_flight and timeout == 0 else 0

    client.flush = flush
    loop.run()
    seq = names(log)
    assert seq.index("flush") < seq.index("consumer.commit")
    assert flushes[:2] == [0, 0]  # deferred once, then committed, never waiting in the loop
    assert consumer.committed_offsets == {0: 5, 1: 5}
