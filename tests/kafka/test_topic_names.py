"""create_topics sends one CreateTopics request per name: two of one name crash librdkafka (SIGSEGV)."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from muse_stream.kafka.clients import admin_config
from muse_stream.kafka.topics import TopicSpec, create_topics

pytestmark = pytest.mark.kafka


def test_a_duplicated_spec_is_created_once_first_spec_wins(settings_for, unique):
    s = settings_for(unique)
    name, other = f"dup{unique}", f"other{unique}"
    specs = [TopicSpec(name, 2), TopicSpec(other, 1), TopicSpec(name, 5)]
    assert create_topics(s, specs, replication_factor=1) == {name: "created", other: "created"}
    md = AdminClient(admin_config(s)).list_topics(timeout=10)
    assert len(md.topics[name].partitions) == 2
