"""The local 3-node KRaft cluster: its layout, and acks=all writes, transactions and a consumer group that keep
working while one node is killed with SIGKILL, and the node's return to the in-sync replicas."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, ConfigResource

from muse_stream.cli import main
from muse_stream.config import Settings
from muse_stream.kafka.clients import admin_config, consumer_config, producer_config
from muse_stream.kafka.cluster import LocalCluster, free_port_block
from muse_stream.kafka.local import answers_metadata
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.topics import TopicSpec, create_topics

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(3, base_port=free_port_block(6), home=tmp_path_factory.mktemp("cluster"))
    c.start()
    try:
        yield c
    finally:
        # Throwaway data: a node still shutting down after 10 s (seen under heavy load) may as well be killed.
        c.stop(timeout=10)


def _settings(cluster: LocalCluster) -> Settings:
    return Settings().with_overrides(kafka={"bootstrap_servers": cluster.bootstrap})


def _until(predicate, what: str, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _partitions(admin: AdminClient, topic: str) -> list:
    return list(admin.list_topics(topic, timeout=10).topics[topic].partitions.values())


def _write(settings: Settings, topic: str, values: range) -> None:
    p = OutputProducer(producer_config(settings), name="test producer")  # acks=all, idempotent
    for i in values:
        p.produce(topic, f"v{i}".encode(), str(i).encode())
    p.flush(45)  # raises unless every record was acknowledged by the in-sync replicas


def _read(consumer: Consumer, want: set[bytes], seen: set[bytes], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not want <= seen and time.monotonic() < end:
        for m in consumer.consume(500, 0.5):
            if m.error() is None:
                seen.add(m.value())
    assert want <= seen, f"{len(want - seen)} records not read back"


def test_three_nodes_share_one_cluster_id_and_a_static_quorum(cluster):
    status = cluster.status()
    assert status.up and status.brokers_in_metadata == 3
    ids = {(cluster.home / f"node-{i}" / "data" / "meta.properties").read_text().split("cluster.id=")[1].split()[0]
           for i in range(3)}
    assert len(ids) == 1
    for i in range(3):
        props = (cluster.home / f"node-{i}" / "server.properties").read_text()
        assert f"node.id={i + 1}" in props
        voters = [line for line in props.splitlines() if line.startswith("controller.quorum.voters=")]
        assert voters == ["controller.quorum.voters=" + ",".join(
            f"{n + 1}@127.0.0.1:{cluster.base_port + 3 + n}" for n in range(3))]
    admin = AdminClient(admin_config(_settings(cluster)))
    res = ConfigResource(ConfigResource.Type.BROKER, "2")
    cfg = admin.describe_configs([res])[res].result(timeout=10)
    for name, want in [("min.insync.replicas", "2"), ("default.replication.factor", "3"),
                       ("offsets.topic.replication.factor", "3"), ("transaction.state.log.replication.factor", "3"),
                       ("transaction.state.log.min.isr", "2")]:
        assert cfg[name].value == want, name


def test_status_command_reports_the_cluster(cluster, capsys):
    assert main(["kafka", "status", "--port", str(cluster.base_port), "--nodes", "3"]) == 0
    assert "cluster of 3 nodes: 3 answering, 3 registered brokers" in capsys.readouterr().out


def test_writes_transactions_and_groups_survive_kill_9_of_a_node(cluster, unique):
    s = _settings(cluster)
    admin = AdminClient(admin_config(s))
    topic = f"c{unique}"
    create_topics(s, [TopicSpec(topic, 3)], replication_factor=3)
    _until(lambda: all(len(p.isrs) == 3 for p in _partitions(admin, topic)), "3 in-sync replicas")
    _write(s, topic, range(200))
    txn = OutputProducer(producer_config(s, transactional_id=f"tx{unique}"), name="test transactions")
    txn.client.init_transactions(30)
    txn.write_transaction([(topic, b"t", b"txn-0")])
    consumer = Consumer(consumer_config(s, group_id=f"g{unique}"))  # read_committed, in a group
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    try:
        _read(consumer, {f"v{i}".encode() for i in range(200)} | {b"txn-0"}, seen)
        consumer.commit(asynchronous=False)

        victim = next(p.leader for p in _partitions(admin, topic) if p.id == 0) - 1  # node.id is index + 1
        assert cluster.kill_node(victim)
        assert not answers_metadata(cluster.node(victim).bootstrap)
        # Leadership moves to the survivors; with min ISR 2, acks=all and transactions still succeed.
        _write(s, topic, range(200, 400))
        txn.write_transaction([(topic, b"t", b"txn-1")])
        _read(consumer, {f"v{i}".encode() for i in range(400)} | {b"txn-0", b"txn-1"}, seen)
        consumer.commit(asynchronous=False)
        parts = _until(lambda: [p for p in _partitions(admin, topic) if len(p.isrs) == 2] or None,
                       "the dead node to leave the in-sync replicas")
        assert all(p.leader != victim + 1 for p in parts)

        cluster.start_node(victim)
        _until(lambda: all(len(p.isrs) == 3 for p in _partitions(admin, topic)), "the node to catch up again")
        assert cluster.status().up
        _write(s, topic, range(400, 450))
        _read(consumer, {f"v{i}".encode() for i in range(450)}, seen)
    finally:
        consumer.close()
        txn.close()


def test_a_stopped_cluster_starts_again_with_its_data(cluster, unique):
    """Stop every node, start them again: the same cluster id (no folder re-formatted), the topics kept."""
    s = _settings(cluster)
    topic = f"kept{unique}"
    create_topics(s, [TopicSpec(topic, 1)], replication_factor=3)
    _write(s, topic, range(10))
    recorded = (cluster.home / "cluster.json").read_text()
    assert cluster.stop(timeout=20)
    assert not cluster.running() and not cluster.status().up
    cluster.start()
    assert (cluster.home / "cluster.json").read_text() == recorded
    assert topic in AdminClient(admin_config(s)).list_topics(timeout=10).topics
