"""librdkafka client configurations, built from validated settings in one place, and the clients made from them.

Security settings in `[kafka.client]` pass through to librdkafka untouched and are never logged: client errors
name the property, never its value, and authentication failures name the mechanism and user, never the secret.
"""

from __future__ import annotations

import logging
import re
import time

from confluent_kafka import Consumer, KafkaError, KafkaException

from muse_stream.config import Settings
from muse_stream.errors import ConfigError, KafkaOpError

logger = logging.getLogger(__name__)
_rdlog = logging.getLogger("muse_stream.librdkafka")
MAX_RECORD_BYTES = 64 * 1024 * 1024
ERROR_LOG_INTERVAL_S = 30.0
_AUTH_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_AUTHZ_CODES = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}


def describe_error(err: KafkaError, conf: dict) -> str:
    """librdkafka's text, with what a person needs to act on an authentication or authorization failure."""
    text = redact(err.str(), conf)
    if is_auth_error(err):
        return (f"authentication failed (mechanism {conf.get('sasl.mechanism') or conf.get('sasl.mechanisms', '?')},"
                f" user {conf.get('sasl.username', '?')!r}; check the credentials in [kafka.client]): {text}")
    if err.code() in _AUTHZ_CODES:
        return f"not authorized (user {conf.get('sasl.username', '?')!r}; check the ACLs): {text}"
    return text


def is_auth_error(err: KafkaError) -> bool:
    """The cluster refused the client's credentials (no retry or restart can fix that)."""
    text = err.str()
    return err.code() in _AUTH_CODES or "SASL authentication" in text or "Authentication failed" in text


_SECRET_KEY = re.compile(r"password|secret|jaas|token|credential|ssl\.key\.pem|ssl_key|private", re.IGNORECASE)


def redact(text: str, conf: dict) -> str:
    """`text` with every secret setting's value blanked (librdkafka may quote a value in its messages), and
    any value quoted in an invalid-value error dropped. Names of topics, users and hosts stay readable."""
    text = re.sub(r'Invalid value "[^"]*"', "Invalid value", text)
    for k, v in conf.items():
        if isinstance(v, str) and v and _SECRET_KEY.search(k) and v in text:
            text = text.replace(v, "***")
    return text


class ClientErrors:
    """error_cb for every client: a fatal error is kept for the caller to raise; the same error repeated
    (a broker outage gives thousands of `Connection refused`) is logged once per interval with a count."""

    def __init__(self, name: str, conf: dict, *, interval: float = ERROR_LOG_INTERVAL_S) -> None:
        self.name = name
        self.fatal: KafkaError | None = None
        self.last: KafkaError | None = None
        self.auth: KafkaError | None = None  # the latest authentication failure
        self.quiet = False  # record, log nothing: the caller reports the error itself (check_reachable)
        self._conf = conf
        self._interval = interval
        self._seen: dict[int, tuple[float, int]] = {}  # code -> (last logged, suppressed since)

    def __call__(self, err: KafkaError) -> None:
        self.last = err
        if is_auth_error(err):
            self.auth = err
        if err.fatal():
            self.fatal = err
            if not self.quiet:
                logger.error("%s: fatal client error: %s", self.name, describe_error(err, self._conf))
            return
        if self.quiet:
            return
        now = time.monotonic()
        logged, suppressed = self._seen.get(err.code(), (None, 0))
        if logged is not None and now - logged < self._interval:
            self._seen[err.code()] = (logged, suppressed + 1)
            return
        more = f" ({suppressed} more like it in the last {now - logged:.0f}s)" if suppressed else ""
        logger.warning("%s: %s%s", self.name, describe_error(err, self._conf), more)
        self._seen[err.code()] = (now, 0)


def make_client(cls, conf: dict, name: str):
    """Construct a librdkafka client (Producer, Consumer, AdminClient) with an error callback; an invalid
    setting is a ConfigError naming the property, never its value."""
    errors = ClientErrors(name, conf)
    try:
        client = cls({**conf, "error_cb": errors})
    except KafkaException as e:
        raise ConfigError(f"[kafka.client]: {_as_written(redact(e.args[0].str(), conf), conf)}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[kafka.client]: {_as_written(redact(str(e), conf), conf)}") from None
    return client, errors


# librdkafka names a property by its canonical name; these aliases are what people write in [kafka.client].
_ALIASES = {"queue.buffering.max.ms": "linger.ms", "request.required.acks": "acks", "sasl.mechanisms": "sasl.mechanism",
            "max.in.flight.requests.per.connection": "max.in.flight", "message.timeout.ms": "delivery.timeout.ms",
            "compression.codec": "compression.type", "metadata.broker.list": "bootstrap.servers"}


def _as_written(text: str, conf: dict) -> str:
    """`text`, also naming the property as the configuration spells it when librdkafka names its alias."""
    m = re.search(r'property "([^"]+)"', text)
    alias = _ALIASES.get(m[1]) if m and m[1] not in conf else None
    return f'{text} (set as "{alias}")' if alias in conf else text


def _compose(settings: Settings, tuning: dict, required: dict) -> dict:
    """A client config: muse-stream's tuning, then what the operator set in [kafka.client] (which wins over the
    tuning), then what correctness requires (which nothing overrides: idempotence, acks, read_committed...)."""
    return {"bootstrap.servers": settings.kafka.bootstrap_servers,
            # librdkafka 2.x re-bootstraps when every broker is down, and then can block in
            # send_offsets_to_transaction past its timeout (a coordinator handle left on a decommissioned broker;
            # seen on 4 of 4 kill -9 restarts of a single broker). Reconnecting to the known brokers instead
            # stopped it in 10 of 10; the supervisor still restarts a worker that stalls anyway.
            "metadata.recovery.strategy": "none",
            **tuning, **settings.kafka.client, "logger": _rdlog, **required}


def base_config(settings: Settings) -> dict:
    return _compose(settings, {}, {})


def admin_config(settings: Settings) -> dict:
    return base_config(settings)


def producer_config(settings: Settings, *, transactional_id: str | None = None, **extra) -> dict:
    """`extra` is muse-stream's own tuning for one kind of producer; [kafka.client] overrides it."""
    # Nagle's algorithm would hold a small request back until the previous one is acknowledged: off, as the
    # broker has it, so a lone record at a light load leaves at once.
    tuning = {"linger.ms": 5, "batch.num.messages": 10000, "compression.type": "lz4",
              "message.max.bytes": MAX_RECORD_BYTES, "socket.nagle.disable": True, **extra}
    required = {"enable.idempotence": True, "acks": "all",
                # Only failures reach the delivery callback: no Python call per delivered record.
                "delivery.report.only.error": True}
    if transactional_id:
        # A transaction begun while the coordinator still writes the previous one's markers is told
        # CONCURRENT_TRANSACTIONS and retried after retry.backoff.ms: at librdkafka's 100 ms that wait was most
        # of an exactly-once commit at a light load (back-to-back transactions: 100 ms each, against 20 ms at
        # 10 ms). Retries of other requests back off from it exponentially to retry.backoff.max.ms (1 s).
        tuning.setdefault("retry.backoff.ms", 10)
        required["transactional.id"] = transactional_id
        required["transaction.timeout.ms"] = settings.runtime.transaction_timeout_ms
    return _compose(settings, tuning, required)


def consumer_config(settings: Settings, *, group_id: str, read_committed: bool = True, **extra) -> dict:
    """`extra` is muse-stream's own tuning for one kind of consumer; [kafka.client] overrides it."""
    tuning = {"auto.offset.reset": "earliest", "fetch.max.bytes": MAX_RECORD_BYTES,
              "max.partition.fetch.bytes": MAX_RECORD_BYTES, "receive.message.max.bytes": MAX_RECORD_BYTES + 1024 * 1024,
              "enable.partition.eof": False, "socket.nagle.disable": True, **extra}
    required = {"group.id": group_id, "enable.auto.commit": False,
                "isolation.level": "read_committed" if read_committed else "read_uncommitted"}
    return _compose(settings, tuning, required)


def reader_config(settings: Settings, **extra) -> dict:
    """A consumer that is assigned partitions by hand: no group commits ever (its group id is never used)."""
    return consumer_config(settings, group_id="muse-stream-reader-unused", **extra)


def make_consumer(conf: dict, name: str = "consumer") -> Consumer:
    """A Consumer with the rate-limited error callback (what every consumer of the project should use)."""
    return make_client(Consumer, conf, name)[0]


def input_consumer_config(settings: Settings, *, slot: int | None = None, **extra) -> dict:
    """The workers' consumer of the input topics (in the group). Prefetch enough for the next batch, but cap
    the queue: the 64 MiB fetch sizes are for model records, and on the input topic they cost ~250 MB of RSS
    for nothing. The short queue backoff keeps a capped queue from starving the loop (librdkafka waits 1 s).

    Latency: the broker answers a fetch as soon as fetch.min.bytes (1) is there, so an event is fetched the
    moment it is written, whatever the load; fetch.wait.max.ms only bounds how long an idle fetch is held (and
    so how many empty fetches an idle worker sends: 50 a second at 20 ms). Under load the prefetched queue
    holds whole batches, so batches fill without waiting (see kafka/loop.py).

    With a slot, the member is static (group.instance.id from the slot): a slot restarted within the session
    timeout takes its partitions back without a rebalance of the other workers."""
    conf = consumer_config(settings, group_id=settings.runtime.group_id, **{
        "queued.min.messages": max(10000, 2 * settings.batch.max_events), "fetch.wait.max.ms": 20,
        "fetch.min.bytes": 1, "queued.max.messages.kbytes": 16384, "fetch.max.bytes": 4 * 1024 * 1024,
        "max.partition.fetch.bytes": max(4 * 1024 * 1024, settings.runtime.max_event_bytes + 1024),
        "fetch.queue.backoff.ms": 10, **extra})
    if slot is not None:
        conf["group.instance.id"] = f"{settings.runtime.group_id}-{slot}"
    return conf


def worker_producer_config(settings: Settings, **extra) -> dict:
    """The workers' producer. At-least-once, a decision is visible once delivered, so the producer does not
    linger at all: a lone record leaves at once, and under load librdkafka batches on its own whatever queues
    while its requests are in flight. Exactly-once, a decision is visible at its commit, which flushes without
    waiting out linger.ms, so a short linger (5 ms) only groups the records of a heavy load into fewer
    requests; it never delays an output."""
    linger = 5 if settings.runtime.processing_guarantee == "exactly-once" else 0
    return producer_config(settings, **{"linger.ms": linger, **extra})


def check_reachable(client, settings: Settings, timeout: float = 15.0, errors: ClientErrors | None = None) -> None:
    """One metadata request: a clear error naming the address (or authentication) when no cluster answers.

    librdkafka reports refused credentials only to the error callback (the request itself fails as a transport
    error at its timeout): given the client's `errors`, the request is retried every second and the client's
    queued errors served in between, so a refused login is named as such within a second or two."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_topics(timeout=timeout if errors is None else max(0.1, min(1.0, deadline - time.monotonic())))
            return
        except KafkaException as e:
            err: KafkaError = e.args[0]
        if errors is None or isinstance(client, Consumer):  # a consumer's poll would consume a message
            break
        # Serve the queued client errors; its log lines about them are the error this raises, in one line.
        errors.quiet, _rdlog.disabled = True, True
        try:
            client.poll(0)
        finally:
            errors.quiet, _rdlog.disabled = False, False
        if errors.auth is not None:
            err = errors.auth
            break
        if time.monotonic() >= deadline:
            break
    raise KafkaOpError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: "
                       f"{describe_error(err, base_config(settings))}", error=err) from None
