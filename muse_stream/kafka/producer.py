"""The one output producer: every path that writes to Kafka (workers, replay, tenants, model store, demo,
bench, scripts) writes through it.

What it adds to librdkafka's Producer:
- a full queue is waited out (delivery reports are served meanwhile), never dropped or crashed on;
- the first failed delivery is kept and raised at `flush` or `raise_delivery_error` (which the checkpoint calls
  before every commit), so nothing is committed over a lost write: `Producer.flush` alone returns 0 for
  records that failed;
- a record larger than the producer may write is a RecordTooLarge, so the caller can dead-letter it;
- client errors go through the rate-limited, secret-free error callback of clients.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, Producer

from muse_stream.errors import DeliveryError, FatalKafkaError, KafkaOpError, RecordTooLarge
from muse_stream.kafka.checkpoint import call_with_retry
from muse_stream.kafka.clients import ClientErrors, make_client

logger = logging.getLogger(__name__)
# Delivery errors that the same record meets again however often it is sent.
_REFUSALS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD,
                       KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.RECORD_LIST_TOO_LARGE,
                       KafkaError.POLICY_VIOLATION})


class OutputProducer:
    """A Producer that never loses a write silently. `client` is the underlying Producer, for transactions."""

    def __init__(self, config: dict, *, name: str = "producer", queue_wait_s: float = 300.0, client=None) -> None:
        self.name = name
        if client is None:
            self.client, self.errors = make_client(Producer, {**config, "on_delivery": self._on_delivery}, name)
        else:  # tests of the step order hand in a fake client
            self.client, self.errors = client, ClientErrors(name, config)
        self._queue_wait_s = queue_wait_s  # a queue that stays full this long means Kafka is not taking writes
        self._failed: tuple[KafkaError, str] | None = None
        self.failures = 0
        # Topics that failed a record with an error no retry mends (worker/refusals.py reads and clears it).
        self.refusing: dict[str, str] = {}

    # ---- delivery reports -----------------------------------------------------------------------

    def _on_delivery(self, err, msg) -> None:
        # Configured with delivery.report.only.error, so this runs for failures only.
        if err is not None:
            self.failures += 1
            if self._failed is None:
                self._failed = (err, msg.topic() or "?")
            if err.code() in _REFUSALS and msg.topic():
                self.refusing.setdefault(msg.topic(), err.str())

    def raise_delivery_error(self) -> None:
        """Raise DeliveryError (an abort signal) if any record failed since the last call."""
        fatal = self.errors.fatal
        if fatal is not None:
            raise FatalKafkaError.wrap(f"{self.name}", fatal)
        if self._failed is not None:
            (err, topic), self._failed = self._failed, None
            n, self.failures = self.failures, 0
            raise DeliveryError(f"{n} record(s) not delivered; first, to {topic}: {err.str()}", error=err)

    def discard_delivery_errors(self) -> None:
        """After an abort: the failed records belonged to the aborted transaction."""
        self._failed, self.failures = None, 0

    # ---- writing --------------------------------------------------------------------------------

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, headers=None) -> None:
        """Produce one record, waiting for room while the client's queue is full."""
        try:
            self.client.produce(topic, value, key, headers=headers)
        except BufferError:
            self._produce_waiting(topic, value, key, headers)
        except KafkaException as e:
            raise self._produce_error(topic, e.args[0]) from None

    def produce_all(self, records: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Produce (topic, key, value) records: the hot path, one C call per record while the queue has room."""
        produce = self.client.produce
        for topic, key, value in records:
            try:
                produce(topic, value, key)
            except BufferError:
                self._produce_waiting(topic, value, key, None)
            except KafkaException as e:
                raise self._produce_error(topic, e.args[0]) from None
        self.client.poll(0)

    def _produce_waiting(self, topic, value, key, headers) -> None:
        deadline = time.monotonic() + self._queue_wait_s
        while True:
            self.client.poll(0.05)  # serves delivery reports, which is what frees the queue
            if self.errors.fatal is not None:
                self.raise_delivery_error()
            try:
                self.client.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise DeliveryError(f"{self.name}: the producer queue stayed full for {self._queue_wait_s:.0f}s "
                                        "(is Kafka taking writes?)") from None
            except KafkaException as e:
                raise self._produce_error(topic, e.args[0]) from None

    def _produce_error(self, topic: str, err: KafkaError) -> KafkaOpError:
        if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            return RecordTooLarge.wrap(f"producing to {topic}", err)
        if err.fatal():
            return FatalKafkaError.wrap(f"producing to {topic}", err)
        return DeliveryError.wrap(f"producing to {topic}", err)

    def poll(self, timeout: float = 0) -> int:
        return self.client.poll(timeout)

    def in_flight(self) -> int:
        """Records not yet delivered (or failed), without waiting: a flush with no timeout serves the delivery
        reports, sends what lingers, and returns how many are left."""
        return self.client.flush(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record is delivered; DeliveryError if any is left or failed."""
        left = self.client.flush(timeout)
        if left:
            raise DeliveryError(f"{self.name}: {left} record(s) not delivered within {timeout:.0f}s")
        self.raise_delivery_error()

    def close(self, timeout: float = 10.0) -> None:
        """Best-effort flush on the way out of a clean run (never part of a commit; errors are logged)."""
        try:
            self.flush(timeout)
        except KafkaOpError as e:
            logger.warning("%s: closing: %s", self.name, e)

    # ---- a one-shot transaction (model store) ----------------------------------------------------

    def write_transaction(self, records: Iterable[tuple[str, bytes, bytes | None]], *, timeout: float = 60.0) -> None:
        """Write (topic, key, value) records in one transaction of this transactional producer: all become
        visible, or none. init_transactions must have been called (see checkpoint.init_transactions)."""
        call_with_retry("begin_transaction", self.client.begin_transaction)
        try:
            for topic, key, value in records:
                self.produce(topic, value, key)
            self.raise_delivery_error()
            call_with_retry("commit_transaction", self.client.commit_transaction, timeout)
        except BaseException:
            try:
                self.client.abort_transaction(timeout)
            except KafkaException:
                pass  # the transaction times out on the broker; nothing of it becomes visible
            raise
