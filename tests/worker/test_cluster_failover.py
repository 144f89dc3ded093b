"""Never lose, never duplicate, never hang, across a broker crash: `muse-stream run` (one supervised scoring
worker) on a local 3-node cluster (topics with 3 replicas, min ISR 2), events arriving the whole time, and
kill -9 of the node that leads most of the test's partitions (and, among those, the one coordinating the
worker's group and transactions). Leadership moves to the survivors, scoring resumes within the supervisor's
stall limit, and every input record has exactly one output.

librdkafka 2.16 can block in send_offsets_to_transaction past its timeout when the group coordinator's
broker leaves the metadata (a known librdkafka bug: the cached coordinator is decommissioned and the request
waits for a state change that never comes); the supervisor's heartbeat is what bounds that case."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from muse_stream.config import load_settings
from muse_stream.kafka.clients import admin_config
from muse_stream.kafka.cluster import LocalCluster, free_port_block
from muse_stream.kafka.topics import ensure_all
from muse_stream.tenants import seed_tenants
from muse_stream.worker.runtime import transactional_id
from tests.fixtures.helpers import TopicReader, decision_topics, input_count, publish_model, source_of
from tests.fixtures.workers import assert_exactly_once
from tests.worker.test_broker_restarts import RATE, SteadyProducer
from tests.worker.test_supervisor import RunCommand, _alive

pytestmark = pytest.mark.kafka


@pytest.fixture
def cluster(tmp_path_factory):
    c = LocalCluster(3, base_port=free_port_block(6), home=tmp_path_factory.mktemp("failover-cluster"))
    c.start()
    try:
        yield c
    finally:
        c.stop(timeout=10)  # throwaway data


STALL_AFTER_S = 15.0


def _settings(bootstrap: str, unique: str):
    base = load_settings(Path(__file__).parents[1] / "data" / "test.toml", bootstrap=bootstrap)
    return base.with_overrides(
        topics={"events": f"f{unique}.events", "models": f"f{unique}.models", "tenants": f"f{unique}.tenants",
                "deadletter": f"f{unique}.deadletter", "decisions_prefix": f"f{unique}.decisions.",
                "shadow_prefix": f"f{unique}.shadow.", "events_partitions": 6, "decisions_partitions": 3},
        batch={"max_events": 200},
        runtime={"group_id": f"g{unique}", "transactional_id_prefix": f"tx{unique}", "stall_after_s": STALL_AFTER_S,
                 "startup_grace_s": 15.0})


def _internal_leader(md, topic: str, key: str) -> int:
    """The leader of the partition of an internal topic that holds `key` (Kafka: abs(key.hashCode()) % n):
    for __consumer_offsets the group's coordinator, for __transaction_state the transactional id's."""
    h = 0
    for ch in key:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    parts = md.topics[topic].partitions
    return parts[(h & 0x7FFFFFFF) % len(parts)].leader


def _leaders(admin: AdminClient, topics: list[str]) -> Counter:
    """node.id -> how many of these topics' partitions it leads; every partition must have 3 replicas."""
    md = admin.list_topics(timeout=10)
    led = Counter()
    for t in topics:
        for p in md.topics[t].partitions.values():
            assert len(p.replicas) == 3, f"{t}[{p.id}] has {len(p.replicas)} replicas"
            led[p.leader] += 1
    return led


def _until(predicate, what: str, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except KafkaException:  # a metadata request that went to the killed node: ask again
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_kill_9_of_the_busiest_leader_mid_stream_loses_and_duplicates_nothing(cluster, unique, tmp_path):
    s = _settings(cluster.bootstrap, unique)
    ensure_all(s)  # replication chosen from the cluster: 3 replicas, min.insync.replicas 2
    seed_tenants(s)
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    outputs = decision_topics(s) + [s.topics.deadletter]
    reader = TopicReader(s, outputs)
    run = RunCommand(s, tmp_path, workers=1)
    feed = SteadyProducer(s)
    try:
        reader.until(lambda r: len(r) >= 2 * RATE, timeout=90)  # mid-stream: scoring and committing
        admin = AdminClient(admin_config(s))
        led = _leaders(admin, [s.topics.events, *outputs])
        # Leadership is spread evenly: among the nodes leading most partitions, prefer the one coordinating
        # the worker's group and transactions, whose loss the worker feels most.
        md = admin.list_topics(timeout=10)
        coordinates = Counter([_internal_leader(md, "__consumer_offsets", s.runtime.group_id),
                               _internal_leader(md, "__transaction_state", transactional_id(s, 0))])
        victim_id = max(led, key=lambda n: (led[n], coordinates[n]))
        assert cluster.kill_node(victim_id - 1)  # node.id is index + 1; SIGKILL, no controlled shutdown

        # Leadership moves to the two survivors once the cluster fences the dead node (seconds)...
        _until(lambda: victim_id not in _leaders(admin, [s.topics.events, *outputs]), "new leaders", 30)
        # ...and then every input partition is scored again.
        before = len(reader.records)
        reader.until(lambda r: len({source_of(m)[1] for m in r[before:]}) == s.topics.events_partitions,
                     timeout=STALL_AFTER_S + 30)
        n_inputs = feed.finish()
        assert input_count(s) == n_inputs
        recs = reader.until(lambda r: len(r) >= n_inputs, timeout=STALL_AFTER_S + 30)
        reader.poll_for(2.0)  # anything extra would be a duplicate
        assert run.terminate(timeout=30) == 0, run.log()[-4000:]
        assert not any(_alive(p) for pids in run.pids().values() for p in pids)
    finally:
        feed.stop.set()
        run.close()
        reader.close()
    assert_exactly_once(recs, n_inputs)
