"""Cluster-ready topics: unless configured, new topics get min(3, brokers) replicas and min.insync.replicas
min(2, that); a configured factor below what the cluster allows is warned about (real broker and a local
3-node cluster)."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from muse_stream.cli import main
from muse_stream.config import Settings
from muse_stream.kafka.clients import admin_config
from muse_stream.kafka.cluster import LocalCluster, free_port_block
from muse_stream.kafka.topics import TopicSpec, create_topics, ensure_all, planned_topics
from tests.fixtures.helpers import write_config

pytestmark = pytest.mark.kafka


def _replication(admin: AdminClient, topic: str) -> tuple[set[int], str]:
    """(replica counts of the topic's partitions, its min.insync.replicas)."""
    parts = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = admin.describe_configs([res])[res].result(timeout=10)
    return {len(p.replicas) for p in parts}, cfg["min.insync.replicas"].value


def test_on_one_broker_topics_get_one_replica(settings_for, unique):
    s = settings_for(unique)
    assert s.topics.replication_factor is None  # the default: chosen from the cluster
    ensure_all(s)
    admin = AdminClient(admin_config(s))
    for spec in planned_topics(s):
        assert _replication(admin, spec.name) == ({1}, "1"), spec.name


def test_on_three_nodes_topics_get_three_replicas_and_min_isr_two(tmp_path, unique, caplog, capsys):
    cluster = LocalCluster(3, base_port=free_port_block(6), home=tmp_path / "cluster")
    cluster.start()
    try:
        s = Settings().with_overrides(kafka={"bootstrap_servers": cluster.bootstrap}, topics={
            "events": f"e{unique}", "models": f"m{unique}", "tenants": f"t{unique}", "deadletter": f"d{unique}",
            "decisions_prefix": f"dec{unique}.", "shadow_prefix": f"sh{unique}."})
        # A configured factor below what the cluster allows: used, with one warning line (once).
        with caplog.at_level(logging.WARNING, logger="muse_stream.kafka.topics"):
            create_topics(s, [TopicSpec(f"one{unique}", 1)], replication_factor=1)
            create_topics(s, [TopicSpec(f"two{unique}", 1)], replication_factor=1)
        admin = AdminClient(admin_config(s))
        assert _replication(admin, f"one{unique}") == ({1}, "1")
        [warning] = [r.getMessage() for r in caplog.records if r.name == "muse_stream.kafka.topics"]
        assert "replication_factor = 1 on a cluster of 3 brokers" in warning and "unset for 3" in warning
        # Unset: `topics create` chooses 3 replicas, min ISR 2.
        assert main(["topics", "create", "--config", write_config(s, tmp_path / "c.toml")]) == 0
        assert "replication factor 3, min.insync.replicas 2 (3 brokers" in capsys.readouterr().out
        for spec in planned_topics(s):
            assert _replication(admin, spec.name) == ({3}, "2"), spec.name
    finally:
        cluster.stop(timeout=10)
