"""Telemetry parts without a broker: windows, bulk histograms, counters and labels, traces, endpoints, logs."""

from __future__ import annotations

import io
import logging
import urllib.error
import urllib.request

import numpy as np
import orjson
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from muse_stream.kafka.local import free_port
from muse_stream.logs import JsonFormatter
from muse_stream.models.records import ActivationRecord, TimelineEntry, active_key, dump, version_key
from muse_stream.models.registry import ModelRegistry
from muse_stream.scoring.deadletter import Reason
from muse_stream.scoring.scorer import DeadLetter
from muse_stream.telemetry import Telemetry
from muse_stream.telemetry.histogram import BulkHistogram
from muse_stream.telemetry.metrics import MetricsHub
from muse_stream.telemetry.tracing import BatchTracer
from muse_stream.telemetry.windows import SlidingCounts
from tests.fixtures import telemetry_fakes as fk


def samples(registry) -> list:
    text = generate_latest(registry).decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(registry, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    return sum(s.value for s in samples(registry)
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


# ---- windows and histograms ---------------------------------------------------------------------------


def test_sliding_counts_forget_what_left_the_window():
    w = SlidingCounts(60, slots=6)  # 10 s slots
    w.add("a", np.array([1, 2]), now=0.0)
    w.add("a", np.array([10, 0]), now=35.0)
    w.add("b", np.array([5]), now=35.0)
    assert {k: v.tolist() for k, v in w.totals(now=59.0)} == {"a": [11, 2], "b": [5]}
    assert {k: v.tolist() for k, v in w.totals(now=61.0)} == {"a": [10, 0], "b": [5]}  # the slot at 0 s left
    assert list(w.totals(now=200.0)) == []
    assert "a" not in w  # empty keys are dropped


def test_sliding_counts_restart_a_key_whose_width_changes():
    w = SlidingCounts(60)
    w.add("a", np.array([1, 2]), now=0.0)
    w.add("a", np.array([1, 1, 1]), now=1.0)
    assert [v.tolist() for _, v in w.totals(now=1.0)] == [[1, 1, 1]]


def test_bulk_histogram_buckets_follow_the_otel_convention():
    h = BulkHistogram("x", unit="s", description="", bounds=[0.1, 1.0])
    h.record(np.array([0.05, 0.1, 0.5, 1.0, 7.0, np.nan]))
    (p,) = h.metric().data.data_points
    assert p.bucket_counts == [2, 2, 1]  # (-inf, 0.1], (0.1, 1], (1, inf): a bound belongs to its bucket
    assert p.count == 5 and p.sum == pytest.approx(8.65) and p.min == 0.05 and p.max == 7.0


def test_bulk_histograms_reach_the_prometheus_exposition():
    hub = MetricsHub({"service.name": "t"})
    hub.latency.record(np.array([0.2, 0.3, 20.0]), (("source", "event_time"),))
    reg = hub.registry
    assert value(reg, "muse_end_to_end_latency_seconds_count", source="event_time") == 3
    assert value(reg, "muse_end_to_end_latency_seconds_bucket", source="event_time", le="0.25") == 1
    assert value(reg, "muse_end_to_end_latency_seconds_bucket", source="event_time", le="30.0") == 3
    hub.shutdown()


# ---- counters from a batch ----------------------------------------------------------------------------


def _dead(reason: Reason, value: bytes) -> DeadLetter:
    return DeadLetter(fk.Msg(value), reason, "")


def test_batch_counters_and_bounded_dead_letter_labels():
    w = fk.worker(fk.settings(), fk.reference())
    tel = Telemetry(w)
    rng = np.random.default_rng(0)
    out, msgs = fk.batch(w, rng.random(40))
    out.dead = [
        _dead(Reason.MALFORMED_JSON, b"{nope"),
        _dead(Reason.UNKNOWN_TENANT, orjson.dumps({"tenant_id": "a-tenant-nobody-registered"})),
        _dead(Reason.INTENT_NOT_ALLOWED, orjson.dumps({"tenant_id": "acme", "intent": "account_takeover"})),
        _dead(Reason.INTENT_NOT_ALLOWED, orjson.dumps({"tenant_id": "acme", "intent": "made-up-" + "x" * 50})),
        _dead(Reason.MISSING_FIELD, orjson.dumps({"tenant_id": "globex", "event_time": 1})),  # default intent
    ]
    msgs += [d.msg for d in out.dead]
    tel.on_batch(out, msgs, 0, 0)
    reg = tel.registry
    assert value(reg, "muse_events_in_total") == 45
    assert value(reg, "muse_events_in_total", tenant="acme", intent="card_fraud") == 40
    assert value(reg, "muse_events_in_total", tenant="(unknown)", intent="(unknown)") == 2
    assert value(reg, "muse_dead_letters_total", tenant="acme", intent="account_takeover",
                 reason="intent_not_allowed") == 1
    assert value(reg, "muse_dead_letters_total", tenant="acme", intent="(other)") == 1
    assert value(reg, "muse_dead_letters_total", tenant="globex", intent="card_fraud", reason="missing_field") == 1
    assert value(reg, "muse_decisions_total", tenant="acme", intent="card_fraud", model_version="card_fraud@1") == 40
    assert value(reg, "muse_band_decisions_total", tenant="acme") == 40
    assert value(reg, "muse_batch_size_count") == 1 and value(reg, "muse_batch_size_sum") == 45
    assert value(reg, "muse_end_to_end_latency_seconds_count", source="event_time") == 40
    assert value(reg, "muse_end_to_end_latency_seconds_count", source="record_timestamp") == 40  # dead: no ts
    # No unregistered tenant id and no unknown intent name ever becomes a label value.
    label_values = {v for s in samples(reg) for v in s.labels.values()}
    assert "a-tenant-nobody-registered" not in label_values
    assert not any(v.startswith("made-up-") for v in label_values)


def test_alert_rates_are_per_tenant_and_band_over_the_window():
    w = fk.worker(fk.settings(), fk.reference())
    tel = Telemetry(w)
    scores = np.array([0.1] * 90 + [0.6] * 8 + [0.9] * 2)
    fk.feed(tel, w, scores, batches=4)
    tel.update()
    assert value(tel.registry, "muse_alert_rate", tenant="acme", band="review") == pytest.approx(0.10)
    assert value(tel.registry, "muse_alert_rate", tenant="acme", band="decline") == pytest.approx(0.02)
    assert value(tel.registry, "muse_alert_window_events", tenant="acme") == 100


def test_model_gauges_follow_activations_and_refusals():
    w = fk.worker(fk.settings())
    reg = w.models
    tel = Telemetry(w)
    act = ActivationRecord(intent="card_fraud", version=3, activated_at=1, timeline=(TimelineEntry(version=3),))
    reg.activations["card_fraud"] = act
    reg.generation += 1
    tel.on_models()
    assert value(tel.registry, "muse_model_active_version", intent="card_fraud") == 3
    assert value(tel.registry, "muse_model_active_age_seconds", intent="card_fraud") > 1e9  # activated_at = 1 ms
    reg.activations["card_fraud"] = act.model_copy(update={"version": 4, "timeline": (TimelineEntry(version=4),)})
    reg.refused[("card_fraud", 5)] = "checksum"
    reg.generation += 1
    tel.on_models()
    assert value(tel.registry, "muse_model_active_version", intent="card_fraud") == 4
    assert value(tel.registry, "muse_model_activations_total", intent="card_fraud") == 2
    assert value(tel.registry, "muse_model_refused", intent="card_fraud", version="5") == 1
    assert value(tel.registry, "muse_model_refusals_total", intent="card_fraud") == 1


# ---- traces -------------------------------------------------------------------------------------------


def test_a_batch_trace_has_consume_score_produce_commit_children():
    exporter = InMemorySpanExporter()
    tracer = BatchTracer(rate=1.0, resource=Resource.create({}), exporter=exporter)
    tracer.poll_start(1_000)
    tracer.batch(2_000, 5_000, 6_000, {"muse.events": 10},
                 [("card_fraud", 7, 2_100, 4_000), ("account_takeover", 3, None, None)])
    tracer.commit(6_500, 9_000, "committed")
    tracer.poll_start(10_000)  # the next turn emits the previous one
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["muse.batch"]
    assert root.parent is None and root.attributes["muse.events"] == 10
    for child in ("consume", "score", "produce", "commit"):
        assert spans[child].parent.span_id == root.context.span_id
    assert spans["score card_fraud"].parent.span_id == spans["score"].context.span_id
    assert "score account_takeover" not in spans  # no timing for it: an event on the score span instead
    assert [e.name for e in spans["score"].events] == ["scored account_takeover"]
    assert spans["commit"].attributes["muse.outcome"] == "committed"
    assert spans["produce"].end_time - spans["produce"].start_time == 1_000
    assert root.end_time - root.start_time == 8_000


def test_sampling_rate_zero_records_nothing():
    exporter = InMemorySpanExporter()
    tracer = BatchTracer(rate=0.0, resource=Resource.create({}), exporter=exporter)
    for i in range(20):
        tracer.poll_start(i * 10)
        tracer.batch(i * 10 + 1, i * 10 + 2, i * 10 + 3, {}, [])
    tracer.flush()
    assert exporter.get_finished_spans() == ()


def test_tracing_is_off_by_default_and_needs_an_endpoint():
    assert Telemetry(fk.worker(fk.settings())).tracer is None
    assert Telemetry(fk.worker(fk.settings(trace_sample_rate=0.5))).tracer is None  # no endpoint: warned, off
    t = Telemetry(fk.worker(fk.settings(trace_sample_rate=0.5)), span_exporter=InMemorySpanExporter())
    assert t.tracer is not None


# ---- endpoints ----------------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_endpoints_answer_health_readiness_metrics_and_status():
    port = free_port()
    w = fk.worker(fk.settings(metrics_port=port))
    tel = Telemetry(w)
    tel.start()
    base = f"http://127.0.0.1:{port}"
    try:
        code, body = _get(f"{base}/healthz")
        assert code == 200 and orjson.loads(body)["ok"] is True
        code, body = _get(f"{base}/readyz")  # no partitions and no model yet
        assert code == 503
        checks = orjson.loads(body)["checks"]
        assert checks["assigned"] is False and checks["models_loaded"] is False
        assert checks["producer_initialised"] is True
        w.models.activations["card_fraud"] = ActivationRecord(intent="card_fraud", version=1, activated_at=1,
                                                              timeline=(TimelineEntry(version=1),))
        w.models.loaded[("card_fraud", 1)] = object()
        w.models.generation += 1
        tel.on_models()
        tel.on_rebalance("assigned", [type("TP", (), {"topic": "muse.events", "partition": 0})()])
        code, body = _get(f"{base}/readyz")
        assert code == 200 and orjson.loads(body)["ok"] is True
        code, body = _get(f"{base}/metrics")
        assert code == 200 and b"muse_worker_ready 1.0" in body and b"muse_assigned_partitions 1.0" in body
        code, body = _get(f"{base}/status")
        st = orjson.loads(body)
        assert code == 200 and st["ready"] is True and st["models"]["card_fraud"]["version"] == 1
        assert st["assignment"] == ["muse.events[0]"]
        assert _get(f"{base}/nothing")[0] == 404
    finally:
        tel.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/healthz", timeout=2)


def test_a_stalled_loop_fails_liveness():
    w = fk.worker(fk.settings(stall_after_s=30))
    tel = Telemetry(w)
    tel._heartbeat -= 60.0  # as if the loop last turned a minute ago
    alive, checks = tel.liveness()
    assert not alive and checks["loop_turned_s_ago"] >= 60.0
    assert tel.readiness()[1]["alive"] is False
    tel.poll_start()  # the loop turns again
    assert tel.liveness()[0]


def test_a_taken_port_is_a_clear_error():
    from muse_stream.errors import ConfigError

    port = free_port()
    first = Telemetry(fk.worker(fk.settings(metrics_port=port)))
    first.start()
    try:
        with pytest.raises(ConfigError, match=str(port)):
            Telemetry(fk.worker(fk.settings(metrics_port=port))).start()
    finally:
        first.close()


# ---- logs ---------------------------------------------------------------------------------------------


def test_activation_and_refusal_are_one_json_line_each_with_their_ids():
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("muse_stream.models.registry")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        reg = ModelRegistry(load=True)
        bad = {"kind": "version", "intent": "card_fraud", "version": 2, "features": ["f0"], "booster_b64": "AAAA",
               "booster_sha256": "0" * 64, "transform": {}, "created_at": 1}
        reg.apply(version_key("card_fraud", 2), orjson.dumps(bad))
        act = ActivationRecord(intent="card_fraud", version=2, activated_at=5, timeline=(TimelineEntry(version=2),))
        reg.apply(active_key("card_fraud"), dump(act))
        reg_noload = ModelRegistry(load=False)
        reg_noload.apply(version_key("card_fraud", 2), orjson.dumps(bad))
        reg_noload.apply(active_key("card_fraud"), dump(act))
    finally:
        log.removeHandler(handler)
    lines = [orjson.loads(x) for x in buf.getvalue().splitlines()]
    refused = [x for x in lines if x.get("event") == "model_refused"]
    activated = [x for x in lines if x.get("event") == "model_activated"]
    assert len(refused) == 1 and len(activated) == 1
    assert refused[0]["intent"] == "card_fraud" and refused[0]["version"] == 2 and "checksum" in refused[0]["reason"]
    assert refused[0]["level"] == "WARNING"
    assert activated[0]["version"] == 2 and activated[0]["previous_version"] is None


def test_record_timestamp_latency_counts_every_record_of_a_large_batch():
    w = fk.worker(fk.settings(), fk.reference())
    tel = Telemetry(w)
    rng = np.random.default_rng(0)
    out, msgs = fk.batch(w, rng.random(1000))  # stride-sampled: 1000 > RECORD_TS_SAMPLE
    tel.on_batch(out, msgs, 0, 0)
    assert value(tel.registry, "muse_end_to_end_latency_seconds_count", source="record_timestamp") == 1000
    assert value(tel.registry, "muse_end_to_end_latency_seconds_bucket", source="record_timestamp",
                 le="1.0") == 1000  # every record is 0.5 s old
    # Every 8th record is read (1000 / 128, rounded up); one without a timestamp takes its 8 with it.
    out, msgs = fk.batch(w, rng.random(1000))
    msgs[8] = fk.Msg()
    tel.on_batch(out, msgs, 0, 0)
    assert value(tel.registry, "muse_end_to_end_latency_seconds_count", source="record_timestamp") == 1992


def test_overhead_measure_reports_both_costs():
    from muse_stream.bench.telemetry_overhead import measure

    r = measure(batches=3, batch_size=300, trees=5, depth=3, warmup=1)
    assert r["score_us_per_batch"] > 0 and r["telemetry_us_per_batch"] > 0
    assert r["telemetry_share_of_scoring_pct"] == pytest.approx(
        100 * r["telemetry_us_per_batch"] / r["score_us_per_batch"], rel=0.01)


def test_a_client_that_leaves_before_the_answer_is_no_error_in_the_log(caplog):
    """A probe that times out (a busy worker answering slowly) closes first: the write that follows fails with
    a broken pipe or a reset, which is not the worker's error and not worth a traceback in its log."""
    import socket
    import struct
    import time

    from prometheus_client import CollectorRegistry

    from muse_stream.telemetry.server import TelemetryServer

    class Slow:
        registry = CollectorRegistry()

        def liveness(self):
            return True, {}

        def readiness(self):
            return True, {}

        def status(self):
            time.sleep(0.3)
            return {"big": "x" * 1_000_000}

    srv = TelemetryServer(Slow(), "127.0.0.1", 0)
    srv.start()
    try:
        with caplog.at_level(logging.ERROR, logger="muse_stream.telemetry.server"):
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", srv.port))
                s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # leave with a reset
                s.close()
            time.sleep(1.5)
        assert not caplog.records, [r.getMessage() for r in caplog.records]
        assert urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=5).status == 200
    finally:
        srv.stop()
