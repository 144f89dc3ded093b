"""Observability against the real broker: the scrape endpoint's counters match what was sent, the model
gauges follow activations and refusals, OTLP carries metrics and batch traces, and `status` shows it all."""

from __future__ import annotations

import base64
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from muse_stream.cli import main
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.local import free_port
from muse_stream.kafka.producer import OutputProducer
from muse_stream.models.records import ActivationRecord, TimelineEntry, active_key, dump, version_key
from tests.fixtures.helpers import TopicReader, decision_topics, event, produce, publish_model, write_config
from tests.fixtures.workers import ThreadWorker

pytestmark = pytest.mark.kafka
UNKNOWN = "(unknown)"

# Bad input and the (tenant, intent, reason) its dead letter is counted under.
BAD = [
    (b"{not json", (UNKNOWN, UNKNOWN, "malformed_json")),
    (b"[1, 2]", (UNKNOWN, UNKNOWN, "not_an_object")),
    (orjson.dumps({"tenant_id": "acme", "event_time": 1, "features": {}}), ("acme", "card_fraud", "missing_field")),
    (orjson.dumps({"event_id": "x", "tenant_id": "acme", "event_time": "soon", "features": {}}),
     ("acme", "card_fraud", "wrong_type")),
    (orjson.dumps({"event_id": "x", "tenant_id": "nobody", "event_time": 1, "features": {}}),
     (UNKNOWN, UNKNOWN, "unknown_tenant")),
    (orjson.dumps({"event_id": "x", "tenant_id": "acme", "intent": "account_takeover", "event_time": 1,
                   "features": {}}), ("acme", "account_takeover", "intent_not_allowed")),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": 1, "features": {"f0": 1e300}}',
     ("acme", "card_fraud", "value_too_large")),
]


def scrape(port: int) -> list:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def total(samples: list, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def by(samples: list, name: str, *keys: str) -> Counter:
    out = Counter()
    for s in samples:
        if s.name == name:
            out[tuple(s.labels[k] for k in keys)] += s.value
    return out


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_scraped_counters_match_the_events_sent_and_the_version_gauge_follows_activations(
    stack, tmp_path, capsys, monkeypatch
):
    port = free_port()
    s = stack.with_overrides(telemetry={"metrics_port": port, "update_interval_s": 0.2})
    publish_model(s, "card_fraud", seed=1)  # account_takeover has no model: initech's events are dead letters
    sent = Counter()  # (tenant, intent) -> events
    values = []
    for i in range(300):
        tenant, intent = [("acme", "card_fraud"), ("globex", "card_fraud"), ("initech", "account_takeover")][i % 3]
        values.append(event(i, tenant))
        sent[(tenant, intent)] += 1
    dead_expected = Counter({("initech", "account_takeover", "no_active_model"): 100})
    for raw, labels in BAD:
        values.append(raw)
        dead_expected[labels] += 1
        sent[labels[:2]] += 1
    produce(s, values)
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    try:
        reader.until(lambda r: len(r) >= len(values))
        wait_for(lambda: get(port, "/readyz")[0] == 200, what="/readyz to answer 200")
        ready = get(port, "/readyz")[1]
        assert ready["checks"] == {"producer_initialised": True, "models_loaded": True, "assigned": True,
                                   "offsets_readable": True, "alive": True}
        assert get(port, "/healthz")[0] == 200
        m = scrape(port)

        # Events in, decisions out and dead letters, per tenant and intent, and dead letters per reason.
        assert total(m, "muse_events_in_total") == len(values)
        assert by(m, "muse_events_in_total", "tenant", "intent") == sent
        assert by(m, "muse_decisions_total", "tenant", "intent", "model_version") == Counter(
            {("acme", "card_fraud", "card_fraud@1"): 100, ("globex", "card_fraud", "card_fraud@1"): 100})
        assert by(m, "muse_dead_letters_total", "tenant", "intent", "reason") == dead_expected
        reasons = Counter()
        for (_, _, reason), n in dead_expected.items():
            reasons[(reason,)] += n
        assert by(m, "muse_dead_letters_total", "reason") == reasons
        st = w.worker.stats
        assert total(m, "muse_batch_size_count") == st.batches and total(m, "muse_batch_size_sum") == len(values)
        assert total(m, "muse_batch_duration_seconds_count") == st.batches
        assert total(m, "muse_end_to_end_latency_seconds_count", source="record_timestamp") == len(values)
        assert total(m, "muse_transactions_total", outcome="committed") >= 1
        assert total(m, "muse_transactions_total", outcome="aborted") == 0
        assert total(m, "muse_rebalances_total", kind="assigned") >= 1
        assert total(m, "muse_assigned_partitions") == s.topics.events_partitions
        assert total(m, "muse_model_active_version", intent="card_fraud") == 1
        assert total(m, "muse_worker_ready") == 1

        # A new activation moves the version gauge; a corrupt one is refused and leaves it.
        publish_model(s, "card_fraud", seed=3)
        wait_for(lambda: total(scrape(port), "muse_model_active_version", intent="card_fraud") == 2,
                 what="the version gauge to reach 2")
        good = w.worker.models.versions[("card_fraud", 2)]
        bad = good.model_copy(update={"version": 3, "booster_b64": base64.b64encode(b"not a booster").decode()})
        p = OutputProducer(producer_config(s))
        p.produce(s.topics.models, dump(bad), version_key("card_fraud", 3))
        p.produce(s.topics.models, dump(ActivationRecord(intent="card_fraud", version=3, previous=2,
                                                         activated_at=int(time.time() * 1000),
                                                         timeline=(TimelineEntry(version=3),))),
                  active_key("card_fraud"))
        p.flush(10)
        wait_for(lambda: total(scrape(port), "muse_model_refused", intent="card_fraud", version="3") == 1,
                 what="the refused gauge")
        m = scrape(port)
        assert total(m, "muse_model_active_version", intent="card_fraud") == 2
        assert total(m, "muse_model_activations_total", intent="card_fraud") == 2
        assert total(m, "muse_model_refusals_total", intent="card_fraud") == 1
        assert 0 <= total(m, "muse_model_active_age_seconds", intent="card_fraud") < 600

        # The status command reads the endpoint and the topics.
        cfg = write_config(s, tmp_path / "muse.toml")
        wait_for(lambda: get(port, "/status")[1]["lag"] != [], what="lag to be read")
        capsys.readouterr()
        assert main(["status", "--config", cfg, "--json"]) == 0
        report = orjson.loads(capsys.readouterr().out)
        (wr,) = report["workers"]
        assert wr["up"] and wr["ready"] and wr["totals"]["events_in"] == len(values)
        assert wr["totals"]["dead_by_reason"]["malformed_json"] == 1
        # The topic names the refused version; the worker keeps serving the previous one, and says so.
        assert report["models"]["intents"]["card_fraud"]["version"] == 3
        assert report["models"]["intents"]["card_fraud"]["serving"] == [2]
        assert report["refused"] == [{"intent": "card_fraud", "version": 3, "reason": wr["refused"][0]["reason"]}]
        assert "checksum" in wr["refused"][0]["reason"]
        assert report["lag"]["total"] == 0 and len(report["lag"]["partitions"]) == s.topics.events_partitions
        assert {p["lag"] for p in wr["lag"]} == {0}
        monkeypatch.setenv("COLUMNS", "160")
        assert main(["status", "--config", cfg]) == 0
        screen = capsys.readouterr().out
        (tmp_path / "screen.txt").write_text(screen)
        assert "card_fraud@2" in screen and "ready" in screen and f"127.0.0.1:{port}" in screen
        assert "DRIFT" not in screen
    finally:
        w.close()
        reader.close()
    with pytest.raises(urllib.error.URLError):  # the endpoint closes with the worker
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_alert_rates_band_counts_and_event_latency_match_the_decisions(stack):
    port = free_port()
    s = stack.with_overrides(telemetry={"metrics_port": port, "update_interval_s": 0.2})
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    n = 3000
    produce(s, [event(i, ["acme", "globex", "initech"][i % 3]) for i in range(n)])
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        recs = reader.until(lambda r: len(r) >= n)
        decisions = [orjson.loads(r.value()) for r in recs]
        time.sleep(0.5)  # one more timed update after the last batch
        m = scrape(port)
    finally:
        w.close()
        reader.close()
    bands = Counter((d["tenant_id"], d["intent"], d["band"]) for d in decisions)
    assert by(m, "muse_band_decisions_total", "tenant", "intent", "band") == bands
    assert total(m, "muse_end_to_end_latency_seconds_count", source="event_time") == n
    cfg = {t.tenant_id: t for t in s.tenants}
    for tid, t in cfg.items():
        mine = [d for d in decisions if d["tenant_id"] == tid]
        assert total(m, "muse_alert_window_events", tenant=tid) == len(mine)
        for band, thr in t.bands.items():
            rate = sum(d["score"] >= thr for d in mine) / len(mine)
            assert total(m, "muse_alert_rate", tenant=tid, band=band) == pytest.approx(rate)


class _Collector(BaseHTTPRequestHandler):
    bodies: dict[str, list[bytes]]

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_otlp_push_carries_metrics_and_sampled_batch_traces(stack):
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    collector.bodies = {}
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    s = stack.with_overrides(telemetry={"otlp_endpoint": endpoint, "otlp_interval_ms": 300,
                                        "trace_sample_rate": 1.0})
    publish_model(s, "card_fraud", seed=1)
    produce(s, [event(i, "acme") for i in range(200)])
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        reader.until(lambda r: len(r) >= 200)
        wait_for(lambda: collector.bodies.get("/v1/metrics"), what="an OTLP metrics push")
    finally:
        w.close()  # flushes the span processor
        reader.close()
        collector.shutdown()
    names = set()
    counted = 0
    for body in collector.bodies["/v1/metrics"]:
        req = ExportMetricsServiceRequest.FromString(body)
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    names.add(metric.name)
                    if metric.name == "muse_events_in":
                        counted = max(counted, sum(p.as_double or p.as_int for p in metric.sum.data_points))
    assert {"muse_events_in", "muse_decisions", "muse_batch_size", "muse_end_to_end_latency"} <= names
    assert counted == 200
    spans = [sp for body in collector.bodies.get("/v1/traces", [])
             for rs in ExportTraceServiceRequest.FromString(body).resource_spans
             for ss in rs.scope_spans for sp in ss.spans]
    roots = {sp.span_id: sp for sp in spans if sp.name == "muse.batch"}
    assert roots, "no batch span arrived"
    children = Counter(sp.name for sp in spans if sp.parent_span_id in roots)
    assert children["consume"] == children["score"] == children["produce"] == len(roots)
    # A commit is traced as a child of the batch whose loop turn committed, or as a muse.commit span of its own.
    assert children["commit"] + sum(sp.name == "muse.commit" for sp in spans) >= 1
    batch_events = sum(a.value.int_value for sp in roots.values() for a in sp.attributes if a.key == "muse.events")
    assert batch_events == 200
