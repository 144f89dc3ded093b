"""A tenant's output topic is its own: every worker refuses a record naming another tenant's decision topic or
a control topic (the previous record stays in force), writers refuse it before writing, and concurrent
writers of one tenant never lose each other's band periods (real broker for the writers and the worker)."""

from __future__ import annotations

import itertools
import logging
import threading

import orjson
import pytest
from pydantic import ValidationError

from muse_stream.config import Settings, TenantConfig
from muse_stream.errors import ConfigError
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.table import read_table
from muse_stream.kafka.topics import existing_topics
from muse_stream.tenants import (
    TenantRegistry,
    put_tenants,
    read_tenant_registry,
    read_tenants,
    with_bands_from,
)
from tests.fixtures.helpers import TopicReader, event, input_count, produce, publish_model
from tests.fixtures.workers import ThreadWorker

T0 = 1_700_000_000_000
S = Settings()  # topics muse.events, muse.models, muse.tenants, muse.deadletter, muse.decisions.*, muse.shadow.*


def _rec(tid: str, **fields) -> bytes:
    """A tenant record as any producer of the tenants topic could write it: no validation on the way."""
    return orjson.dumps({"tenant_id": tid, "intents": ["card_fraud"], "bands": {"review": 0.5}, **fields})


def _hostile(s: Settings, victim_topic: str) -> dict[str, str]:
    """output_topic values no tenant may have, with the words its refusal must give."""
    t = s.topics
    return {
        victim_topic: "decision topic", f"{t.decisions_prefix}newco": "'newco''s decision topic",
        t.events: "input topic", t.models: "the models topic", t.tenants: "the tenants topic",
        t.deadletter: "the dead-letter topic", t.shadow_topic("card_fraud"): "shadow topic",
        f"{t.events}.replay.r1.decisions.globex": "replay namespace",
        "bad topic!": "not a valid Kafka topic name", "x" * 250: "not a valid Kafka topic name",
        ".": "not a valid Kafka topic name", "..": "not a valid Kafka topic name",
        "globex.out\n": "not a valid Kafka topic name",  # a regex's "$" would let the newline through
        "__consumer_offsets": "Kafka-internal topic", "__transaction_state": "Kafka-internal topic",
        t.labels: "the labels topic", f"muse-stream.{t.events}.state-changelog": "state changelog topic",
        # Kafka reads '.' and '_' alike in topic names: these collide with a control topic and a decision topic
        t.models.replace(".", "_"): "the models topic (Kafka reads '.' and '_' alike",
        victim_topic.replace(".", "_"): "collides with",
    }


# ---- the registry's rules, no broker ---------------------------------------------------------------------

def test_every_rule_refuses_and_keeps_the_previous_record(caplog):
    reg = TenantRegistry(S)
    reg.apply(b"acme", _rec("acme"))
    reg.apply(b"globex", _rec("globex", output_topic="globex.out"))
    before = reg.tenants["globex"]
    for topic, why in _hostile(S, "muse.decisions.acme").items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="muse_stream.tenants"):
            assert reg.apply(b"globex", _rec("globex", output_topic=topic)) is None
        assert reg.tenants["globex"] == before and reg.output_topic("globex") == "globex.out"
        [log] = caplog.records
        assert "output_topic" in log.getMessage() and why in log.getMessage(), (topic, log.getMessage())
        assert "previous record stays in force" in log.getMessage()
    # Every refusal counted; a tenant with no accepted record stays unknown.
    assert reg.refusals == len(_hostile(S, "muse.decisions.acme"))
    assert reg.apply(b"newco", _rec("newco", output_topic=S.topics.models)) is None and "newco" not in reg.tenants
    # Its own default topic, spelled out, is fine; so is any topic of its own.
    assert reg.apply(b"globex", _rec("globex", output_topic="muse.decisions.globex")) is not None
    assert reg.apply(b"globex", _rec("globex", output_topic="globex.alerts")) is not None


def test_the_later_claim_of_a_topic_is_refused_until_the_first_lets_it_go():
    reg = TenantRegistry(S, log_changes=False)
    reg.apply(b"acme", _rec("acme", output_topic="shared.out"))
    assert reg.apply(b"globex", _rec("globex", output_topic="shared.out")) is None
    assert "acme" in reg.refused["globex"] and "globex" not in reg.tenants
    reg.apply(b"acme", _rec("acme", output_topic="acme.out"))  # acme moves: the topic is free
    assert reg.apply(b"globex", _rec("globex", output_topic="shared.out")) is not None
    assert reg.apply(b"acme", _rec("acme", output_topic="shared.out")) is None  # now globex's
    reg.apply(b"globex", None)  # removed: its claim goes with it
    assert reg.apply(b"acme", _rec("acme", output_topic="shared.out")) is not None
    # Claims made by the initial tenants count too.
    seeded = TenantRegistry(S, {"acme": TenantConfig(tenant_id="acme", intents=("x",), output_topic="a.out")})
    assert "'acme'" in seeded.output_topic_problem(TenantConfig(tenant_id="b", intents=("x",), output_topic="a.out"))


def test_malformed_records_name_the_field():
    reg = TenantRegistry(S, log_changes=False)
    reg.apply(b"acme", b"{not json")
    assert reg.refused["acme"].startswith("record: not JSON")
    reg.apply(b"acme", _rec("acme", bands={"review": 2.0}))
    assert reg.refused["acme"].startswith("bands.review.threshold:")
    reg.apply(b"acme", _rec("globex"))
    assert reg.refused["acme"].startswith("tenant_id:")
    reg.apply(b"acme", _rec("acme"))
    assert "acme" not in reg.refused and "acme" in reg.tenants


def test_tenant_config_and_topic_settings_validate_names():
    for bad in ("bad topic!", "x" * 250, ".", "..", ""):
        with pytest.raises(ValidationError, match="output_topic"):
            TenantConfig(tenant_id="a", intents=("x",), output_topic=bad)
    assert TenantConfig(tenant_id="a", intents=("x",), output_topic="x" * 249).output_topic == "x" * 249
    with pytest.raises(ValidationError, match="overlap"):
        Settings().with_overrides(topics={"shadow_prefix": "muse."})
    with pytest.raises(ValidationError, match="prefix"):
        Settings().with_overrides(topics={"decisions_prefix": "d/"})
    assert S.topics.decisions_owner("muse.decisions.acme") == "acme"
    assert S.topics.decisions_owner("muse.decisions.acme.v2") is None  # no tenant id has a dot


# ---- writers and a worker against the real broker ---------------------------------------------------------

@pytest.mark.kafka
def test_put_tenants_refuses_what_the_workers_would_refuse(stack):
    s = stack
    before = read_table(s, s.topics.tenants)
    for topic in (s.output_topic(next(t for t in s.tenants if t.tenant_id == "acme")), s.topics.models,
                  s.topics.shadow_topic("card_fraud")):
        with pytest.raises(ConfigError, match="output_topic.*nothing was written"):
            put_tenants(s, [TenantConfig(tenant_id="globex", intents=("card_fraud",), output_topic=topic)])
    assert read_table(s, s.topics.tenants) == before


@pytest.mark.kafka
def test_a_hostile_tenant_record_is_refused_by_the_worker(stack):
    """The reported bug: output_topic set to another tenant's decision topic wrote there; set to the models or
    tenants topic, decisions landed there."""
    s = stack
    publish_model(s, "card_fraud", seed=1)
    victim = s.output_topic(next(t for t in s.tenants if t.tenant_id == "acme"))
    own = s.output_topic(next(t for t in s.tenants if t.tenant_id == "globex"))
    hostile = list(_hostile(s, victim))
    writer = OutputProducer(producer_config(s), name="hostile writer")
    for topic in hostile:
        writer.produce(s.topics.tenants, _rec("globex", output_topic=topic), b"globex")
    writer.flush(30)
    previous = read_tenants(s)["globex"]
    assert previous.output_topic is None  # the seeded record, on its default topic
    n = 60
    w = ThreadWorker(s)
    reader = TopicReader(s, [own])
    try:
        produce(s, [event(i, "globex", t0=T0) for i in range(n)])
        got = reader.until(lambda r: len(r) >= n)
        assert w.worker.tenants.tenants["globex"] == previous
        assert w.worker.tenants.refusals == len(hostile)
    finally:
        w.close()
        reader.close()
    assert {orjson.loads(m.value())["tenant_id"] for m in got} == {"globex"} and len(got) == n
    # Nothing reached the victim's topic or any control topic: every decision key is an event id (e-N).
    t = s.topics
    others = TopicReader(s, [victim, t.models, t.tenants, t.deadletter, t.events,
                             *(t.shadow_topic(i.name) for i in s.intents)])
    try:
        stray = [m for m in others.poll_for(3.0) if (m.key() or b"").startswith(b"e-")]
    finally:
        others.close()
    assert stray == [], [(m.topic(), m.key()) for m in stray[:5]]
    assert input_count(s) == n
    # And no topic was made for a refused record (a shadow, replay or other tenant's topic).
    # (The intents' shadow topics exist from the start: `topics create`, like the fixture, makes them.)
    made = {h for h in hostile if not h.startswith("__")} - {victim, t.events, t.models, t.tenants, t.deadletter}
    made -= {t.shadow_topic(i.name) for i in s.intents}
    assert not made & existing_topics(s)  # (Kafka's own __ topics exist anyway)


@pytest.mark.kafka
def test_concurrent_writers_of_one_tenant_lose_no_band_period(stack):
    s = stack
    acme = next(t for t in s.tenants if t.tenant_id == "acme")
    n = 4
    start = threading.Barrier(n)
    errors = []

    def run(i: int) -> None:
        start.wait()
        try:
            put_tenants(s, [acme.model_copy(update={"bands": {"review": 0.5 + i / 100}})], effective_at=T0 + i + 1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not errors
    history = [TenantConfig.model_validate(orjson.loads(v)) for k, v in read_table(s, s.topics.tenants)
               if k == b"acme"]
    assert len(history) == 1 + n  # the seed, then one record per writer
    # Each record was derived from the one committed before it: no writer wrote over another's change.
    for prev, rec in itertools.pairwise(history):
        last = rec.band_periods()[-1]
        assert rec == with_bands_from(prev, rec.model_copy(update={"band_timeline": ()}), last.from_time)


@pytest.mark.kafka
def test_two_tenants_claiming_one_topic_at_once_leave_one_claim_and_one_error(stack, unique):
    """Each tenant's writers are fenced, two tenants' are not: two commands claiming one topic at the same time
    could both write and both report success while the workers refused the second. Now exactly one succeeds;
    the other says so and leaves its tenant's previous record in force (or no tenant, for a new one)."""
    s = stack
    for round_ in range(3):
        topic = f"claimed.{unique}.{round_}"
        new = [TenantConfig(tenant_id=f"ra{round_}", intents=("card_fraud",), output_topic=topic),
               next(t for t in s.tenants if t.tenant_id == "globex").model_copy(update={"output_topic": topic})]
        before = read_tenants(s).get("globex")
        start = threading.Barrier(2)
        results: list = [None, None]

        def run(i: int, start=start, new=new, results=results) -> None:
            start.wait()
            try:
                put_tenants(s, [new[i]])
                results[i] = "ok"
            except ConfigError as e:
                results[i] = str(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert sorted(r == "ok" for r in results) == [False, True], results
        loser = results.index(next(r for r in results if r != "ok"))
        assert new[loser].tenant_id in results[loser] and topic in results[loser]
        reg = read_tenant_registry(s)
        winner = new[1 - loser]
        assert reg.tenants[winner.tenant_id].output_topic == topic
        if loser == 0:
            assert f"ra{round_}" not in reg.tenants
        else:
            assert reg.tenants["globex"] == before  # the previous record in force again
            put_tenants(s, [before])  # globex back on its own topic for the next round (no-op if unchanged)
        assert not reg.refused, reg.refused


@pytest.mark.kafka
def test_a_claim_lost_to_a_write_the_command_did_not_see_is_put_back(stack, unique, monkeypatch):
    """The race itself, made certain: the writer's read misses the other tenant's claim (as when both read
    before either wrote). The read-back after writing finds the workers refusing it and puts globex's previous
    record back."""
    from muse_stream.kafka import table

    s = stack
    topic = f"raced.{unique}"
    put_tenants(s, [TenantConfig(tenant_id="first", intents=("card_fraud",), output_topic=topic)])
    before = read_tenants(s)["globex"]
    real = table.read_table
    monkeypatch.setattr(table, "read_table", lambda *a: [(k, v) for k, v in real(*a) if k != b"first"])
    with pytest.raises(ConfigError, match=rf"tenant globex: output_topic: .*{topic}.*the previous record was put back"):
        put_tenants(s, [before.model_copy(update={"output_topic": topic})])
    monkeypatch.setattr(table, "read_table", real)
    reg = read_tenant_registry(s)
    assert reg.tenants["globex"] == before and reg.tenants["first"].output_topic == topic and not reg.refused
