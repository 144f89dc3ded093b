"""Creating muse-stream's topics, idempotently, with the settings each kind needs.

Replication: unless `topics.replication_factor` says otherwise, every topic gets min(3, brokers in the
cluster) replicas and min.insync.replicas min(2, that), so with acks=all (every producer) a write is on two
brokers before it counts, and a 3-node cluster keeps taking writes with one node down.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from muse_stream.config import Settings
from muse_stream.errors import KafkaOpError
from muse_stream.kafka.clients import MAX_RECORD_BYTES, admin_config, check_reachable, make_client

logger = logging.getLogger(__name__)
_warned: set[tuple[int, int]] = set()  # (configured factor, brokers) already warned about: once per process

COMPACTED = {"cleanup.policy": "compact", "max.message.bytes": str(MAX_RECORD_BYTES),
             "min.cleanable.dirty.ratio": "0.1", "segment.ms": "3600000"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def changelog_topic(settings: Settings, input_topic: str) -> str:
    """The compacted changelog of the entity-state stores of one input topic, for this consumer group."""
    return f"{settings.runtime.group_id}.{input_topic}.state-changelog"


def planned_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the configuration names: input, compacted models and tenants, dead letters, decisions, each
    intent's shadow topic, and with entity state the changelog of each input (partitions matching it)."""
    t = settings.topics
    specs = [
        *(TopicSpec(name, t.events_partitions) for name in t.inputs),
        TopicSpec(t.models, 1, COMPACTED),
        TopicSpec(t.tenants, 1, COMPACTED),
        TopicSpec(t.deadletter, t.decisions_partitions),
    ]
    specs += [TopicSpec(settings.output_topic(tenant), t.decisions_partitions) for tenant in settings.tenants]
    specs += [TopicSpec(t.shadow_topic(i.name), t.decisions_partitions) for i in settings.intents]
    if any(i.state is not None for i in settings.intents):
        specs += [TopicSpec(changelog_topic(settings, name), t.events_partitions, COMPACTED) for name in t.inputs]
    return specs


@dataclass(frozen=True)
class Replication:
    factor: int
    min_insync: int
    brokers: int

    def describe(self) -> str:
        return (f"replication factor {self.factor}, min.insync.replicas {self.min_insync} "
                f"({self.brokers} broker{'s' if self.brokers != 1 else ''} in the cluster)")


def make_admin(settings: Settings) -> AdminClient:
    """An AdminClient with the shared error callback; an invalid [kafka.client] value is a ConfigError."""
    return make_client(AdminClient, admin_config(settings), "admin")[0]


def choose_replication(admin: AdminClient, configured: int | None, *, timeout: float = 15.0) -> Replication:
    """The replication of new topics: `configured`, else min(3, brokers in the cluster's metadata); and
    min.insync.replicas min(2, factor). A configured factor below what the cluster allows is warned about."""
    try:
        brokers = len(admin.list_topics(timeout=timeout).brokers)
    except KafkaException as e:
        raise KafkaOpError.wrap("reading the cluster's brokers", e.args[0]) from None
    best = max(1, min(3, brokers))
    factor = best if configured is None else configured
    if factor < best and (factor, brokers) not in _warned:
        _warned.add((factor, brokers))
        logger.warning("topics.replication_factor = %d on a cluster of %d brokers: topics created now lose data "
                       "when a broker fails (leave it unset for %d)", factor, brokers, best)
    return Replication(factor, min(2, factor), brokers)


def create_topics(admin_or_settings: AdminClient | Settings, specs: list[TopicSpec], *,
                  replication_factor: int | None = None, timeout: float = 30.0) -> dict[str, str]:
    """Create topics that do not exist yet, replicated as choose_replication says (replication_factor None:
    chosen from the cluster). Returns name -> "created" | "exists", once the cluster's metadata shows every
    one of them with all its partitions, each with a leader (or KafkaOpError within `timeout`)."""
    admin = make_admin(admin_or_settings) if isinstance(admin_or_settings, Settings) else admin_or_settings
    # One request per name, the first spec winning: librdkafka crashes on two CreateTopics of one name
    # (Settings refuses such configs; this guards every other caller).
    specs = list({s.name: s for s in reversed(specs)}.values())[::-1]
    if not specs:
        return {}
    rep = choose_replication(admin, replication_factor, timeout=timeout)
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=rep.factor,
                    config={"min.insync.replicas": str(rep.min_insync), **s.config}) for s in specs]
    deadline = time.monotonic() + timeout
    result: dict[str, str] = {}
    for name, fut in admin.create_topics(new, request_timeout=timeout, operation_timeout=timeout).items():
        try:
            fut.result(timeout=timeout)
            result[name] = "created"
        except FuturesTimeout:
            raise KafkaOpError(f"creating topic {name}: no answer from Kafka within {timeout:.0f}s") from None
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"
            else:
                raise KafkaOpError.wrap(f"creating topic {name}", err) from None
    # A topic that existed keeps the partitions it has (planned counts may have changed since).
    wait_until_ready(admin, {s.name: s.partitions if result[s.name] == "created" else 1 for s in specs}, deadline)
    return result


def _not_ready(md, name: str, partitions: int) -> str | None:
    """Why the metadata does not show the topic ready yet (None: its partitions are there, each with a leader)."""
    t = md.topics.get(name)
    if t is None or t.error is not None:
        return f"not in the metadata yet ({t.error.str() if t is not None and t.error else 'unknown topic'})"
    if len(t.partitions) < partitions:
        return f"{len(t.partitions)} of {partitions} partitions known"
    leaderless = sorted(p for p, pm in t.partitions.items() if pm.leader < 0 or pm.error is not None)
    return f"no leader yet for partitions {leaderless[:10]}" if leaderless else None


def wait_until_ready(admin: AdminClient, partitions: dict[str, int], deadline: float) -> None:
    """Return once the cluster's metadata shows each topic (name -> at least that many partitions) with its
    partitions, each with a leader. The broker answers CreateTopics before every broker knows the topic: a
    client that reads or writes it at once could be told it does not exist."""
    waiting = dict(partitions)
    why: dict[str, str] = {}
    while True:
        try:
            md = admin.list_topics(timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        except KafkaException as e:
            md, why["*"] = None, e.args[0].str()
        if md is not None:
            why = {name: r for name, n in waiting.items() if (r := _not_ready(md, name, n)) is not None}
            waiting = {name: waiting[name] for name in why}
            if not waiting:
                return
        if time.monotonic() > deadline:
            detail = "; ".join(f"{n}: {r}" for n, r in sorted(why.items())[:5])
            raise KafkaOpError(f"topics {sorted(waiting)[:5]} are not ready in the cluster's metadata in time "
                               f"({detail})")
        time.sleep(0.1)


def ensure_all(settings: Settings, *, timeout: float = 30.0) -> dict[str, str]:
    existing_topics(settings)  # a clear error, at once, when no cluster answers
    return create_topics(settings, planned_topics(settings), replication_factor=settings.topics.replication_factor,
                         timeout=timeout)


def existing_topics(settings: Settings, timeout: float = 10.0) -> set[str]:
    admin, errors = make_client(AdminClient, admin_config(settings), "admin")
    check_reachable(admin, settings, timeout, errors=errors)  # names the address, or a refused login
    try:
        return set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as e:
        raise KafkaOpError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {e.args[0].str()}") from None


def topic_setting(settings: Settings, topic: str, name: str, timeout: float = 10.0) -> str | None:
    """One setting of an existing topic as the broker has it (its own or the broker's default); None when the
    broker does not say."""
    from confluent_kafka.admin import ConfigResource

    admin, _ = make_client(AdminClient, admin_config(settings), "admin")
    try:
        [fut] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
        entry = fut.result(timeout=timeout).get(name)
    except (KafkaException, FuturesTimeout) as e:
        raise KafkaOpError(f"cannot read {name} of {topic}: {e}") from None
    return None if entry is None else entry.value


def producer_batch_bytes(settings: Settings) -> int:
    """The largest record batch a worker's producer builds (librdkafka's batch.size, 1,000,000 unless
    [kafka.client] sets it): a topic whose max.message.bytes is smaller refuses whole batches under load."""
    from muse_stream.kafka.clients import producer_config

    return int(producer_config(settings).get("batch.size", 1_000_000))
