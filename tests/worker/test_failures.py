"""The failure rule against the real broker: an exception injected at each step between consume and commit
stops the worker with the batch uncommitted; after a restart every input record has exactly one output."""

from __future__ import annotations

import orjson
import pytest

from muse_stream.kafka import checkpoint
from muse_stream.kafka.producer import OutputProducer
from muse_stream.models.transform import ScoreTransform
from muse_stream.scoring.scorer import BatchScorer
from tests.fixtures.helpers import TopicReader, decision_topics, event, produce, publish_model
from tests.fixtures.workers import ThreadWorker, assert_exactly_once

pytestmark = pytest.mark.kafka


class Injected(RuntimeError):
    pass


def _fail_on_call(n: int, original):
    """`original`, raising Injected on its n-th call (later calls pass)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Injected(f"injected on call {n}")
        return original(*args, **kwargs)

    return wrapper


def _fail_kafka_call(name: str, n: int):
    original = checkpoint.call_with_retry
    calls = {"n": 0}

    def wrapper(what, fn, *args, **kwargs):
        if what == name:
            calls["n"] += 1
            if calls["n"] == n:
                raise Injected(f"injected in {name}")
        return original(what, fn, *args, **kwargs)

    return wrapper


def _fail_midway(n: int):
    """OutputProducer.produce_all that, on its n-th call, produces half the batch's records and then raises:
    the open transaction holds outputs of a batch that must not commit."""
    original = OutputProducer.produce_all
    calls = {"n": 0}

    def wrapper(self, records):
        calls["n"] += 1
        records = list(records)
        if calls["n"] == n and records:
            original(self, records[: len(records) // 2])
            raise Injected("injected half-way through producing a batch")
        return original(self, records)

    return wrapper


STEPS = {
    "parse": lambda mp: mp.setattr(BatchScorer, "process", _fail_on_call(3, BatchScorer.process)),
    # In the transform: an exception from the booster itself is the model's, and becomes model_error dead
    # letters (tests/worker/test_model_errors.py), not an abort.
    "score": lambda mp: mp.setattr(ScoreTransform, "apply", _fail_on_call(4, ScoreTransform.apply)),
    "produce": lambda mp: mp.setattr(OutputProducer, "produce_all", _fail_midway(5)),
    "send_offsets": lambda mp: mp.setattr(checkpoint, "call_with_retry",
                                          _fail_kafka_call("send_offsets_to_transaction", 2)),
    "commit": lambda mp: mp.setattr(checkpoint, "call_with_retry", _fail_kafka_call("commit_transaction", 2)),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_injected_exception_loses_nothing_and_duplicates_nothing_after_restart(stack, step):
    # Small batches and a commit per batch, so the failure lands after earlier batches were committed.
    s = stack.with_overrides(batch={"max_events": 50}, runtime={"commit_interval_ms": 0})
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    n = 1500
    produce(s, [event(i, ["acme", "globex", "initech"][i % 3]) for i in range(n)])
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    try:
        with pytest.MonkeyPatch.context() as mp:
            STEPS[step](mp)
            w = ThreadWorker(s)
            w.thread.join(60)
            assert not w.thread.is_alive(), "the worker kept running after the injected failure"
            assert isinstance(w.error, Injected), w.error
        before = reader.poll_for(1.0)
        assert len(before) < n  # it stopped part-way: the failed batch and what follows are not committed
        w = ThreadWorker(s)  # the restart, same slot, nothing injected
        recs = reader.until(lambda r: len(r) >= n, timeout=120)
        reader.poll_for(2.0)  # anything extra would be a duplicate
        w.close()
    finally:
        reader.close()
    assert_exactly_once(recs, n)


def test_record_too_large_for_the_producer_ends_as_a_dead_letter_without_its_value(stack):
    """64.5 MiB: the broker takes it (65 MiB), the producer cannot write it back out (64 MiB)."""
    from muse_stream.kafka.clients import producer_config

    s = stack
    publish_model(s, "card_fraud", seed=1)
    big = b'{"event_id": "big", "pad": "' + b"x" * (64 * 1024 * 1024 + 512 * 1024) + b'"}'
    p = OutputProducer(producer_config(s, **{"message.max.bytes": 66 * 1024 * 1024, "compression.type": "none"}))
    p.produce(s.topics.events, orjson.dumps(event(0, "acme")), b"0")
    p.produce(s.topics.events, big, b"big")
    p.produce(s.topics.events, orjson.dumps(event(2, "acme")), b"2")
    p.flush(60)
    del big
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    w = ThreadWorker(s)
    try:
        recs = reader.until(lambda r: len(r) >= 3, timeout=90)
        reader.poll_for(1.0)
    finally:
        w.close()
        reader.close()
    assert_exactly_once(recs, 3)
    dead = [m for m in recs if m.topic() == s.topics.deadletter]
    assert len(dead) == 1
    h = dict(dead[0].headers())
    assert h["muse.reason"] == b"event_too_large" and dead[0].value() is None
    assert b"too large to copy" in h["muse.detail"]


def test_a_deleted_decision_topic_is_made_again_and_no_tenant_waits_on_it(stack, tmp_path):
    """An operator deletes a live tenant's decision topic: every transaction writing to it failed, other
    tenants' decisions with it, for as long as the worker ran. After the abort the worker checks its output
    topics again and makes the missing one anew (or, when the broker refuses the abort itself, the supervisor's
    restart does), so every input still ends as exactly one output."""
    import time

    from muse_stream.kafka.topics import existing_topics, make_admin
    from tests.worker.test_supervisor import RunCommand

    s = stack
    publish_model(s, "card_fraud", seed=1)
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    run = RunCommand(s, tmp_path, workers=1)
    again = None
    try:
        produce(s, [event(i, "acme") for i in range(30)])
        reader.until(lambda r: len(r) >= 30, timeout=90)
        topic = s.output_topic(next(t for t in s.tenants if t.tenant_id == "acme"))
        admin = make_admin(s)
        admin.delete_topics([topic])[topic].result(30)
        reader.close()
        time.sleep(2)
        produce(s, [event(i, "globex") for i in range(30, 60)] + [event(60, "acme")])
        reader = TopicReader(s, [t for t in decision_topics(s) if t != topic] + [s.topics.deadletter])
        reader.until(lambda r: len(r) >= 30, timeout=120)
        end = time.monotonic() + 60
        while topic not in existing_topics(s) and time.monotonic() < end:
            time.sleep(0.5)
        again = TopicReader(s, [topic])  # made again
        again.until(lambda r: len(r) >= 1, timeout=60)
        reader.poll_for(1.0)  # anything more would be a duplicate
        again.poll_for(1.0)
        recs = reader.records + again.records
    finally:
        run.close()
        reader.close()
        if again is not None:
            again.close()
    got = sorted(orjson.loads(m.value())["event_id"] for m in recs if m.topic() != s.topics.deadletter)
    assert got == sorted(f"e-{i}" for i in range(30, 61))  # globex's 30 and acme's one, each once
