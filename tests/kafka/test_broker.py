"""The foundation against the real broker: topics with their settings, and transactional visibility."""

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from muse_stream.errors import KafkaOpError
from muse_stream.kafka.clients import admin_config, consumer_config, producer_config
from muse_stream.kafka.local import answers_metadata
from muse_stream.kafka.table import TopicTable
from muse_stream.kafka.topics import TopicSpec, create_topics, ensure_all, planned_topics, wait_until_ready
from muse_stream.tenants import read_tenants, seed_tenants

pytestmark = pytest.mark.kafka


def test_broker_answers(bootstrap):
    assert answers_metadata(bootstrap)
    assert not answers_metadata("127.0.0.1:1")


def test_topics_created_idempotently_with_compaction(settings_for, unique):
    s = settings_for(unique)
    first = ensure_all(s)
    assert set(first.values()) == {"created"}
    assert set(ensure_all(s).values()) == {"exists"}
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap_servers})
    md = admin.list_topics(timeout=10)
    for spec in planned_topics(s):
        assert len(md.topics[spec.name].partitions) == spec.partitions
    res = ConfigResource(ConfigResource.Type.TOPIC, s.topics.models)
    cfg = admin.describe_configs([res])[res].result(timeout=10)
    assert cfg["cleanup.policy"].value == "compact"
    assert int(cfg["max.message.bytes"].value) >= 64 * 1024 * 1024


def test_tenants_seeded_once(settings_for, unique):
    s = settings_for(unique)
    ensure_all(s)
    assert seed_tenants(s) == 3
    assert seed_tenants(s) == 0
    assert set(read_tenants(s)) == {"acme", "globex", "initech"}


def test_created_topics_are_usable_the_moment_create_returns(settings_for, unique):
    s = settings_for(unique)
    specs = [TopicSpec(f"t{unique}.ready{i}", 6) for i in range(6)]
    assert set(create_topics(s, specs).values()) == {"created"}
    # Fresh clients, at once: every partition is known and led, a reader finds the topic, a write lands.
    md = AdminClient(admin_config(s)).list_topics(timeout=10)
    for spec in specs:
        parts = md.topics[spec.name].partitions
        assert len(parts) == 6 and all(p.leader >= 0 for p in parts.values())
        TopicTable(s, spec.name).close()
    p = Producer(producer_config(s))
    for spec in specs:
        for part in range(6):
            p.produce(spec.name, b"x", partition=part)
    assert p.flush(30) == 0
    # Existing topics count as ready with the partitions they have, whatever the spec now says.
    assert create_topics(s, [TopicSpec(specs[0].name, 12)]) == {specs[0].name: "exists"}


def test_waiting_for_a_topic_that_never_appears_names_it(settings_for, unique):
    s = settings_for(unique)
    with pytest.raises(KafkaOpError, match=f"t{unique}.never"):
        wait_until_ready(AdminClient(admin_config(s)), {f"t{unique}.never": 1}, time.monotonic() + 1.0)


def _read_all(s, topic, group, timeout=4.0):
    c = Consumer(consumer_config(s, group_id=group))
    c.assign([TopicPartition(topic, 0, 0)])
    out, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            out.append(m.value())
    c.close()
    return out


def test_transactional_write_visible_only_after_commit(settings_for, unique):
    s = settings_for(unique)
    ensure_all(s)
    topic = s.topics.deadletter
    p = Producer(producer_config(s, transactional_id=f"tx-{unique}"))
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, b"aborted", partition=0)
    p.flush(10)
    assert _read_all(s, topic, f"r1{unique}", 2.0) == []  # open: invisible
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, b"pending", partition=0)
    p.flush(10)
    assert _read_all(s, topic, f"r2{unique}", 2.0) == []
    p.commit_transaction(30)
    assert _read_all(s, topic, f"r3{unique}") == [b"pending"]
