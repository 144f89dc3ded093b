"""Transaction error classification and the exactly-once commit step."""

from __future__ import annotations

import logging
import time
from enum import Enum

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from muse_stream.errors import FatalKafkaError, KafkaOpError

logger = logging.getLogger(__name__)


class ErrorAction(Enum):
    RETRY = "retry"
    ABORT = "abort"
    FATAL = "fatal"


def classify(err: KafkaError) -> ErrorAction:
    """What to do about a transactional error: retry the same call, abort and rewind, or stop."""
    if err.fatal():
        return ErrorAction.FATAL
    if err.txn_requires_abort():
        return ErrorAction.ABORT
    if err.retriable():
        return ErrorAction.RETRY
    # Anything unclassified in a transaction cannot be trusted to have left it usable.
    return ErrorAction.FATAL


class AbortRequired(KafkaOpError):
    """The open transaction must be aborted and the batch re-read from the committed offsets."""


def call_with_retry(what: str, fn, *args, attempts: int = 5, backoff: float = 0.2):
    """Run one transactional call; retry retriable errors (bounded), raise AbortRequired or FatalKafkaError."""
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args)
        except KafkaException as e:
            err: KafkaError = e.args[0]
            action = classify(err)
            if action is ErrorAction.RETRY and attempt < attempts:
                logger.warning("%s: retriable error (%s), attempt %d/%d", what, err.str(), attempt, attempts)
                time.sleep(backoff * attempt)
                continue
            if action is ErrorAction.FATAL:
                raise FatalKafkaError(f"{what}: {err.str()}", code=err.code(), description=err.str()) from None
            # Abortable, or retriable past its bound: give the batch back to the committed offsets.
            raise AbortRequired(f"{what}: {err.str()}", code=err.code(), description=err.str()) from None
    raise AssertionError("unreachable")


def commit_transaction(producer: Producer, offsets: list[TopicPartition], group_metadata, *, timeout: float = 30.0):
    """Commit what the open transaction produced together with the consumed offsets.

    1. send_offsets_to_transaction: the next offsets to read (last processed + 1) join the transaction, with
       the group metadata so that a fenced zombie of this member cannot commit them;
    2. commit_transaction: flushes every produced record first; any failed delivery makes it fail (abortable),
       so no transaction commits over a lost write.
    """
    if offsets:
        call_with_retry("send_offsets_to_transaction", producer.send_offsets_to_transaction, offsets,
                        group_metadata, timeout)
    call_with_retry("commit_transaction", producer.commit_transaction, timeout)
