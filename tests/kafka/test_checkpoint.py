"""Transaction error classification (pure: KafkaError objects built by hand)."""

import pytest
from confluent_kafka import KafkaError, KafkaException

from muse_stream.errors import FatalKafkaError
from muse_stream.kafka.checkpoint import AbortRequired, ErrorAction, call_with_retry, classify


def err(**flags) -> KafkaError:
    return KafkaError(KafkaError._STATE, "test", **flags)


def test_classify_each_flag():
    assert classify(err(fatal=True)) is ErrorAction.FATAL
    assert classify(err(fatal=True, txn_requires_abort=True)) is ErrorAction.FATAL  # fatal wins
    assert classify(err(txn_requires_abort=True)) is ErrorAction.ABORT
    assert classify(err(txn_requires_abort=True, retriable=True)) is ErrorAction.ABORT
    assert classify(err(retriable=True)) is ErrorAction.RETRY
    assert classify(err()) is ErrorAction.FATAL  # unclassified: not trusted


def _failing(*errors):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(errors):
            raise KafkaException(errors[len(calls) - 1])
        return "done"

    return fn, calls


def test_retriable_is_retried_then_succeeds():
    fn, calls = _failing(err(retriable=True), err(retriable=True))
    assert call_with_retry("x", fn, backoff=0) == "done" and len(calls) == 3


def test_retriable_past_its_bound_becomes_abort():
    fn, calls = _failing(*[err(retriable=True)] * 5)
    with pytest.raises(AbortRequired):
        call_with_retry("x", fn, attempts=3, backoff=0)
    assert len(calls) == 3


def test_abortable_and_fatal_are_not_retried():
    fn, calls = _failing(err(txn_requires_abort=True))
    with pytest.raises(AbortRequired):
        call_with_retry("x", fn, backoff=0)
    assert len(calls) == 1
    fn, calls = _failing(err(fatal=True))
    with pytest.raises(FatalKafkaError):
        call_with_retry("x", fn, backoff=0)
    assert len(calls) == 1
