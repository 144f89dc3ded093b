"""Every client is built through clients.make_client: an invalid [kafka.client] value is a ConfigError that
names the property and never shows the value, not even in a traceback; every producer writes with acks=all."""

from __future__ import annotations

import traceback

import pytest

from muse_stream.config import Settings, TenantConfig
from muse_stream.errors import ConfigError
from muse_stream.kafka.clients import producer_config, worker_producer_config
from muse_stream.kafka.ranges import Bound, RangeReader
from muse_stream.kafka.table import TopicTable
from muse_stream.kafka.topics import TopicSpec, create_topics, existing_topics
from muse_stream.kafka.watermark import input_watermark
from muse_stream.tenants import put_tenants

SECRET = "hunter2-not-a-number"
BAD = Settings().with_overrides(kafka={"bootstrap_servers": "127.0.0.1:1", "client": {"socket.timeout.ms": SECRET}})


@pytest.mark.parametrize("build", [
    lambda: TopicTable(BAD, "t"),
    lambda: RangeReader(BAD, "t", Bound("start"), Bound("end")),
    lambda: input_watermark(BAD),
    lambda: existing_topics(BAD),
    lambda: create_topics(BAD, [TopicSpec("t", 1)]),
    lambda: put_tenants(BAD, [TenantConfig(tenant_id="a", intents=("x",))]),
], ids=["table", "range", "watermark", "existing", "create", "tenants"])
def test_an_invalid_client_setting_names_the_property_never_the_value(build):
    with pytest.raises(ConfigError) as info:
        build()
    assert "socket.timeout.ms" in str(info.value)
    shown = "".join(traceback.format_exception(info.value))
    assert SECRET not in shown


def test_every_producer_writes_with_acks_all():
    s = Settings()
    for conf in (producer_config(s), producer_config(s, transactional_id="x"), worker_producer_config(s)):
        assert conf["acks"] == "all" and conf["enable.idempotence"] is True


def test_operator_settings_win_over_tuning_but_not_over_what_correctness_requires(settings_for, unique):
    from muse_stream.kafka.clients import input_consumer_config, producer_config, worker_producer_config

    s = settings_for(unique).with_overrides(kafka={"client": {
        "linger.ms": 7, "acks": "0", "enable.idempotence": False, "isolation.level": "read_uncommitted",
        "fetch.wait.max.ms": 3}})
    for conf in (producer_config(s), worker_producer_config(s), producer_config(s, transactional_id="t")):
        assert conf["linger.ms"] == 7  # the operator's tuning
        assert conf["acks"] == "all" and conf["enable.idempotence"] is True  # never weakened
    consumer = input_consumer_config(s, slot=0)
    assert consumer["fetch.wait.max.ms"] == 3
    # A transactional producer retries after 10 ms (a transaction begun while the last one's markers are
    # written waits this long), unless the operator says otherwise; other producers keep librdkafka's default.
    assert producer_config(Settings(), transactional_id="t")["retry.backoff.ms"] == 10
    assert "retry.backoff.ms" not in producer_config(Settings())
    mine = s.with_overrides(kafka={"client": {"retry.backoff.ms": 250}})
    assert producer_config(mine, transactional_id="t")["retry.backoff.ms"] == 250
    assert consumer["isolation.level"] == "read_committed" and consumer["enable.auto.commit"] is False


def test_redaction_hides_secrets_only():
    from muse_stream.kafka.clients import redact

    conf = {"sasl.username": "muse", "sasl.password": "hunter2-very-secret", "bootstrap.servers": "b1:9092"}
    text = 'auth failed for muse at b1:9092 with hunter2-very-secret; Invalid value "x" for "linger.ms"'
    out = redact(text, conf)
    assert "hunter2-very-secret" not in out and '"x"' not in out
    assert "muse at b1:9092" in out  # names of users and hosts stay readable
