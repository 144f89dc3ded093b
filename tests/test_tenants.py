"""Tenant records and their band history: bands by event time, carried through compaction, written at the
input watermark (real broker for the writers)."""

from __future__ import annotations

import logging
import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from muse_stream.analysis.replay import run_replay
from muse_stream.bandspec import BandPeriod
from muse_stream.config import IntentConfig, Settings, TenantConfig
from muse_stream.errors import ConfigError
from muse_stream.kafka.clients import reader_config
from muse_stream.kafka.ranges import Bound
from muse_stream.tenants import TenantRegistry, put_tenants, read_tenants, seed_tenants, with_bands_from
from tests.fixtures.helpers import TopicReader, decision_topics, event, produce, publish_model
from tests.fixtures.workers import ThreadWorker

T0 = 1_700_000_000_000
OLD = {"review": 0.9, "decline": 0.99}
NEW = {"review": 0.5}


def _cfg(bands: dict, timeline: tuple = ()) -> TenantConfig:
    return TenantConfig(tenant_id="acme", intents=("card_fraud",), bands=bands, band_timeline=timeline)


def _bands_at(reg: TenantRegistry, times: list[int], tid: str = "acme") -> list[dict[str, float]]:
    """The bands in force for each event time, as the scorer gets them from band_groups."""
    out: list = [None] * len(times)
    for bands, rows in reg.band_groups(tid, "card_fraud", np.array(times, dtype=np.int64)):
        for i in range(len(times)) if rows is None else rows.tolist():
            out[i] = dict(zip(bands.names[1:], bands.thresholds.tolist()))
    return out


def _registry(*cfgs: TenantConfig) -> TenantRegistry:
    reg = TenantRegistry(Settings(), log_changes=False)
    for c in cfgs:
        reg.apply(c.tenant_id.encode(), orjson.dumps(c.model_dump(mode="json")))
    return reg


# ---- records and the registry, no broker --------------------------------------------------------

def test_config_without_timeline_is_one_period_from_the_start_of_time():
    c = _cfg(OLD)
    assert c.band_timeline == () and c.band_periods() == (BandPeriod(bands=OLD),)
    assert _bands_at(_registry(c), [0, T0, 2**62]) == [OLD] * 3


def test_timeline_validation():
    with pytest.raises(ValueError, match="start of time"):
        _cfg(NEW, (BandPeriod(from_time=5, bands=NEW),))
    with pytest.raises(ValueError, match="increasing"):
        _cfg(NEW, (BandPeriod(bands=OLD), BandPeriod(from_time=9, bands=OLD), BandPeriod(from_time=9, bands=NEW)))
    with pytest.raises(ValueError, match="last period"):
        _cfg(OLD, (BandPeriod(bands=OLD), BandPeriod(from_time=9, bands=NEW)))
    with pytest.raises(ValueError, match=r"bands.review.threshold\n.*less than or equal to 1"):
        BandPeriod(bands={"review": 2.0})


def test_band_groups_split_a_batch_at_the_change():
    reg = _registry(_cfg(NEW, (BandPeriod(bands=OLD), BandPeriod(from_time=T0 + 10, bands=NEW))))
    # All before, all after: one group for every row.
    [(b, rows)] = reg.band_groups("acme", "card_fraud", np.array([T0, T0 + 9]))
    assert rows is None and b.names == ["approve", "review", "decline"]
    [(b, rows)] = reg.band_groups("acme", "card_fraud", np.array([T0 + 10, T0 + 99]))
    assert rows is None and b.names == ["approve", "review"]
    # Straddling: rows split by event time, the change's own time on the new side.
    groups = reg.band_groups("acme", "card_fraud", np.array([T0 + 12, T0 + 3, T0 + 10, T0 + 9]))
    assert sorted((g.names[-1], rows.tolist()) for g, rows in groups) == [("decline", [1, 3]), ("review", [0, 2])]
    # The newest bands hold for every later event.
    assert reg.band_groups("acme", "card_fraud", np.array([T0 + 10**9]))[0][0].names == ["approve", "review"]


def test_with_bands_from_keeps_history_and_replaces_what_follows():
    prev = _cfg(OLD)
    a = with_bands_from(prev, _cfg(NEW), T0)
    assert a.band_periods() == (BandPeriod(bands=OLD), BandPeriod(from_time=T0, bands=NEW))
    b = with_bands_from(a, _cfg({"review": 0.7}), T0 + 50)
    assert [p.from_time for p in b.band_periods()] == [None, T0, T0 + 50]
    # A change at an earlier time replaces the periods from that time on.
    c = with_bands_from(b, _cfg({"review": 0.6}), T0 + 20)
    assert [(p.from_time, p.bands) for p in c.band_periods()] == [(None, OLD), (T0, NEW), (T0 + 20, {"review": 0.6})]
    # Unchanged bands keep the timeline; other fields come from the new config.
    d = with_bands_from(c, c.model_copy(update={"suspended": True, "band_timeline": ()}), T0 + 99)
    assert d.suspended and d.band_timeline == c.band_timeline
    # No effective time (empty topics): the new bands for every event.
    assert with_bands_from(c, _cfg(NEW), 0).band_periods() == (BandPeriod(bands=NEW),)
    # A new tenant: from the start of time.
    assert with_bands_from(None, _cfg(NEW), T0).band_periods() == (BandPeriod(bands=NEW),)


def test_workers_refuse_a_record_naming_an_intent_the_config_does_not(caplog):
    # The rule `tenants set` applies (record_problem), applied by the workers to a record written by hand.
    s = Settings(intents=(IntentConfig(name="card_fraud"), IntentConfig(name="account_takeover")))
    reg = TenantRegistry(s)
    good = _cfg(OLD)
    assert reg.apply(b"acme", orjson.dumps(good.model_dump(mode="json"))) == good
    bad = orjson.dumps({"tenant_id": "acme", "intents": ["card_fraud", "nope"], "bands": NEW})
    with caplog.at_level(logging.WARNING, logger="muse_stream.tenants"):
        assert reg.apply(b"acme", bad) is None
    assert reg.tenants["acme"] == good and reg.refused_records["acme"] == bad
    assert reg.refused["acme"] == "intents: ['nope'] are not in the config's intents ['account_takeover', 'card_fraud']"
    [log] = caplog.records
    assert "intents: ['nope']" in log.getMessage() and "previous record stays in force" in log.getMessage()
    # A config that names no intents knows every one, as config.Settings reads the tenants it seeds.
    assert TenantRegistry(Settings(), log_changes=False).apply(b"acme", bad) is not None


def test_a_band_change_from_beyond_any_event_time_is_refused_not_a_crash():
    """A record written by hand (or by an older CLI) whose band change starts past 2^62, up to 2^64 - 1: one
    refusal, the previous record in force, and the registry goes on applying records."""
    reg = _registry(_cfg(OLD))
    for start in (2**62 + 1, 2**63, 2**64 - 1):
        bad = {"tenant_id": "acme", "intents": ["card_fraud"], "bands": NEW,
               "band_timeline": [{"from_time": None, "bands": OLD}, {"from_time": start, "bands": NEW}]}
        assert reg.apply(b"acme", orjson.dumps(bad)) is None
        assert "from_time" in reg.refused["acme"] and reg.tenants["acme"] == _cfg(OLD)
        assert _bands_at(reg, [T0]) == [OLD]
    ok = {"tenant_id": "acme", "intents": ["card_fraud"], "bands": NEW,
          "band_timeline": [{"from_time": None, "bands": OLD}, {"from_time": 2**62, "bands": NEW}]}
    assert reg.apply(b"acme", orjson.dumps(ok)) is not None and _bands_at(reg, [T0, 2**62]) == [OLD, NEW]


# ---- writers against the real broker --------------------------------------------------------------

def _last_record(s: Settings, tid: str) -> bytes:
    """The newest record of a tenant on the tenants topic: all compaction would keep."""
    c = Consumer(reader_config(s))
    try:
        tp = TopicPartition(s.topics.tenants, 0)
        lo, hi = c.get_watermark_offsets(tp, timeout=10)
        c.assign([TopicPartition(s.topics.tenants, 0, lo)])
        last = None
        while True:
            for m in c.consume(100, 1.0):
                if m.error() is None and m.key() == tid.encode():
                    last = m.value()
            if c.position([tp])[0].offset >= hi:
                return last
    finally:
        c.close()


@pytest.mark.kafka
def test_band_change_takes_effect_at_the_input_watermark(stack):
    s = stack
    produce(s, [event(i, "acme", t0=T0) for i in range(40)])  # event times T0 .. T0+39
    acme = next(t for t in s.tenants if t.tenant_id == "acme")
    [written] = put_tenants(s, [acme.model_copy(update={"bands": NEW})])
    assert written.band_periods() == (BandPeriod(bands=acme.bands), BandPeriod(from_time=T0 + 40, bands=NEW))
    live = TenantRegistry(s, read_tenants(s), log_changes=False)
    assert _bands_at(live, [T0, T0 + 39, T0 + 40, T0 + 10**6]) == [acme.bands, acme.bands, NEW, NEW]
    # Compaction keeps one record per tenant: the last one alone gives the same answers.
    fresh = TenantRegistry(s, log_changes=False)
    fresh.apply(b"acme", _last_record(s, "acme"))
    assert fresh.tenants["acme"] == live.tenants["acme"]
    assert _bands_at(fresh, [T0, T0 + 39, T0 + 40]) == _bands_at(live, [T0, T0 + 39, T0 + 40])
    # Seeding again changes nothing: the operator's change and its history stay.
    assert seed_tenants(s) == 0
    assert read_tenants(s)["acme"] == written


@pytest.mark.kafka
def test_explicit_effective_time_and_other_fields_apply_at_once(stack):
    s = stack
    acme = next(t for t in s.tenants if t.tenant_id == "acme")
    put_tenants(s, [acme.model_copy(update={"bands": NEW})], effective_at=T0 + 5)
    put_tenants(s, [TenantConfig(tenant_id="acme", intents=("card_fraud",), bands={"review": 0.7},
                                 suspended=True)], effective_at=T0 + 9)
    cfg = read_tenants(s)["acme"]
    assert cfg.suspended  # not by event time
    assert [(p.from_time, p.bands) for p in cfg.band_periods()] == [
        (None, acme.bands), (T0 + 5, NEW), (T0 + 9, {"review": 0.7})]
    reg = TenantRegistry(s, {"acme": cfg}, log_changes=False)
    assert _bands_at(reg, [T0 + 4, T0 + 5, T0 + 8, T0 + 9]) == [acme.bands, NEW, NEW, {"review": 0.7}]
    with pytest.raises(ConfigError, match="effective_at"):
        put_tenants(s, [acme], effective_at=-1)


@pytest.mark.kafka
def test_band_change_on_empty_topics_applies_from_the_start_of_time(stack):
    s = stack
    acme = next(t for t in s.tenants if t.tenant_id == "acme")
    [written] = put_tenants(s, [acme.model_copy(update={"bands": NEW})])
    assert written.band_timeline == () and written.bands == NEW


@pytest.mark.kafka
def test_replay_after_a_band_change_and_an_immediate_activation_equals_live(stack):
    """The reported bug: a replay after a tenant's bands changed used today's bands for every event."""
    s = stack
    publish_model(s, "card_fraud", seed=1)
    acme = next(t for t in s.tenants if t.tenant_id == "acme")
    n = 600
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        produce(s, [event(i, "acme", t0=T0) for i in range(n)])
        reader.until(lambda r: len(r) >= n)
        put_tenants(s, [acme.model_copy(update={"bands": {"all": 0.0}})])  # from the watermark, T0 + n
        publish_model(s, "card_fraud", seed=2, shift=1.0)  # immediate: from the same watermark
        time.sleep(1.5)  # the worker reads both records between batches
        produce(s, [event(i, "acme", t0=T0) for i in range(n, 2 * n)])
        live = reader.until(lambda r: len(r) >= 2 * n)
    finally:
        w.close()
        reader.close()
    res = run_replay(s, start=Bound("start"), end=Bound("end"), run_id="r1", prefix=f"{s.topics.events}.replay.")
    reader = TopicReader(s, [t for t in res.topics if "decisions" in t])
    replayed = reader.until(lambda r: len(r) >= 2 * n)
    reader.close()
    a = {d["event_id"]: d for d in (orjson.loads(m.value()) for m in live)}
    b = {d["event_id"]: d for d in (orjson.loads(m.value()) for m in replayed)}
    assert len(a) == 2 * n and a.keys() == b.keys()
    for eid, d in a.items():
        after = d["event_time"] >= T0 + n
        assert (d["band"] == "all") == after and d["model_version"] == f"card_fraud@{2 if after else 1}", d
        assert (b[eid]["band"], b[eid]["model_version"], b[eid]["score"]) == (d["band"], d["model_version"], d["score"])
