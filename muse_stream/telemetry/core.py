"""Telemetry of one worker: the runtime calls it at a handful of points; it records per batch, not per event.

Calls from the loop (all in the worker thread): start, poll_start (each loop turn), on_batch, on_commit,
on_abort, on_rebalance, on_models, close. Every `update_interval_s` the worker thread also rolls the
sliding windows, judges drift, reads consumer lag and refreshes the snapshots that the endpoint thread
(/metrics gauges, /healthz, /readyz, /status) reads; that thread never touches a Kafka client.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque

import numpy as np
import orjson
from confluent_kafka import KafkaException, TopicPartition

from muse_stream.errors import ConfigError, MuseError
from muse_stream.models.transform import ReferenceDistribution
from muse_stream.scoring.deadletter import Reason
from muse_stream.telemetry.drift import DriftMonitor
from muse_stream.telemetry.metrics import MetricsHub
from muse_stream.telemetry.server import TelemetryServer
from muse_stream.telemetry.tracing import BatchTracer
from muse_stream.telemetry.windows import SlidingCounts

logger = logging.getLogger(__name__)

UNKNOWN = "(unknown)"  # a dead letter whose tenant (or intent) cannot be told; not a valid tenant id
OTHER = "(other)"  # an intent name no configuration knows: kept out of labels, which must stay bounded
_NO_TENANT = frozenset({Reason.MALFORMED_JSON, Reason.NOT_AN_OBJECT, Reason.EVENT_TOO_LARGE})
_EVENT_TIME = (("source", "event_time"),)
_RECORD_TS = (("source", "record_timestamp"),)
_RATE_SPAN_S = 60.0
RECORD_TS_SAMPLE = 128


def endpoint_port(base: int, slot: int) -> int:
    return base + slot


class Telemetry:
    """Metrics, traces, drift and health of one worker (duck-typed: settings, slot, stats, models, tenants,
    ready, consumer)."""

    def __init__(self, worker, *, span_exporter=None) -> None:
        self.worker = worker
        self.settings = s = worker.settings
        t = s.telemetry
        self.slot = worker.slot
        attrs = {
            "service.name": "muse-stream",
            "service.instance.id": f"{s.runtime.group_id}-{worker.slot}",
            "muse.group": s.runtime.group_id,
            "muse.worker.slot": worker.slot,
        }
        self.hub = MetricsHub(
            attrs,
            otlp_endpoint=t.otlp_endpoint,
            otlp_headers=t.otlp_headers,
            otlp_interval_ms=t.otlp_interval_ms,
        )
        self.registry = self.hub.registry
        self.tracer: BatchTracer | None = None
        if t.trace_sample_rate > 0 and (t.otlp_endpoint or span_exporter is not None):
            self.tracer = BatchTracer(
                rate=t.trace_sample_rate,
                resource=self.hub.resource,
                endpoint=t.otlp_endpoint,
                headers=t.otlp_headers,
                exporter=span_exporter,
            )
        elif t.trace_sample_rate > 0:
            logger.warning(
                "telemetry.trace_sample_rate is %g but no otlp_endpoint is set: tracing is off",
                t.trace_sample_rate,
            )
        self.drift = DriftMonitor(t.drift, self._reference) if t.drift.enabled else None
        self.alerts = SlidingCounts(t.alert_window_s)
        self._alert_bands: dict[str, tuple[str, ...]] = {}
        self._refs: dict[str, tuple[object, ReferenceDistribution | None]] = {}
        self._server: TelemetryServer | None = None
        self._closed = False
        self._heartbeat = time.monotonic()
        self._next_update = 0.0
        self._started_at = time.time()
        self._assignment: set[tuple[str, int]] = set()
        self._model_gen = -1
        self._refused_seen: set[tuple[str, int]] = set()
        self._active_seen: dict[str, int] = {}
        self._rate_points: deque[tuple[float, int]] = deque()
        # Snapshots: built in the worker thread, replaced whole, read by the endpoint thread.
        self._lag: dict[tuple[str, int], int] = {}
        self._alert_snapshot: dict[str, dict] = {}
        self._models: dict[str, dict] = {}
        self._refused: dict[tuple[str, int], str] = {}
        self._models_loaded = False
        self._events_per_s = 0.0
        self._register_gauges()

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the endpoint (metrics_port + slot) when a port is configured."""
        self._heartbeat = time.monotonic()
        t = self.settings.telemetry
        if not t.metrics_port or self._server is not None:
            return
        port = endpoint_port(t.metrics_port, self.slot)
        try:
            self._server = TelemetryServer(self, t.metrics_host, port)
        except OSError as e:
            raise ConfigError(
                f"worker {self.slot}: telemetry endpoint {t.metrics_host}:{port}: {e.strerror or e}"
            ) from None
        self._server.start()
        logger.info(
            "worker %d telemetry on http://%s:%d (/metrics /healthz /readyz /status)",
            self.slot,
            t.metrics_host,
            port,
        )

    @property
    def port(self) -> int | None:
        return self._server.port if self._server else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.tracer is not None:
            self.tracer.shutdown()
        self.hub.shutdown()
        if self._server is not None:
            self._server.stop()

    # ---- hooks from the loop ------------------------------------------------------------------------

    def poll_start(self) -> None:
        """A loop turn begins (before consume): heartbeat, previous turn's spans, timed updates."""
        now = time.monotonic()
        self._heartbeat = now
        if self.tracer is not None:
            self.tracer.poll_start(time.perf_counter_ns())
        if now >= self._next_update:
            self.update()

    def on_batch(self, out, msgs: list, t_score: int, t_scored: int) -> None:
        """After a batch is produced (not yet committed). t_*: time.perf_counter_ns around scoring."""
        t_done = time.perf_counter_ns()
        hub = self.hub
        n_in = len(msgs)
        hub.batch_size.record(n_in)
        hub.batch_duration.record((t_done - t_score) / 1e9)
        per_intent: dict[str, int] = {}
        events, decisions = hub.events_in, hub.decisions
        for (tid, intent, model), n in out.scored.items():
            events.add((tid, intent), n)
            decisions.add((tid, intent, model), n)
            per_intent[intent] = per_intent.get(intent, 0) + n
        for d in out.dead:
            tid, intent = self._dead_labels(d)
            hub.dead_letters.add((tid, intent, d.reason.value), 1)
            events.add((tid, intent), 1)
        now = time.time()
        now_ms = now * 1000.0
        self._record_timestamps(msgs, now_ms)
        groups = getattr(out, "groups", None)
        if groups:
            self._groups(groups, now, now_ms)
        if self.tracer is not None:
            timing: dict[str, tuple[int, int]] = {}  # per intent, when the scorer reports it
            for g in groups or ():
                s, e = getattr(g, "score_started_ns", None), getattr(g, "score_ended_ns", None)
                if s is not None and e is not None:
                    a, b = timing.get(g.intent, (s, e))
                    timing[g.intent] = (min(a, s), max(b, e))
            self.tracer.batch(
                t_score,
                t_scored,
                t_done,
                {
                    "muse.worker.slot": self.slot,
                    "muse.events": n_in,
                    "muse.decisions": len(out.decisions),
                    "muse.dead_letters": len(out.dead),
                },
                [(i, n, *timing.get(i, (None, None))) for i, n in per_intent.items()],
            )
        if time.monotonic() >= self._next_update:
            self.update()

    def _record_timestamps(self, msgs: list, now_ms: float) -> None:
        """Latency from the input records' timestamps, from a stride sample of the batch.

        Reading a Message's timestamp is a C call per record; at most RECORD_TS_SAMPLE of them per batch, each
        counted for the records it stands for, so the histogram's count stays exact.
        """
        n = len(msgs)
        step = -(-n // RECORD_TS_SAMPLE)
        sample = msgs[::step] if step > 1 else msgs
        k = len(sample)
        ts = np.fromiter([m.timestamp()[1] for m in sample], dtype=np.int64, count=k)
        ok = ts > 0  # no timestamp: -1
        weights = None
        if step > 1:
            weights = np.full(k, step, dtype=np.int64)
            weights[-1] = n - step * (k - 1)
            weights = weights[ok]
        self.hub.latency.record((now_ms - ts[ok]) / 1000.0, _RECORD_TS, weights)

    def _groups(self, groups, now: float, now_ms: float) -> None:
        hub = self.hub
        bands_of = self.worker.tenants.bands
        band_table = hub.band_decisions
        times = [g.event_times for g in groups if len(g.event_times)]
        if times:
            hub.latency.record((now_ms - np.concatenate(times)) / 1000.0, _EVENT_TIME)
        for g in groups:
            names = g.band_names
            counts = np.bincount(g.bands, minlength=len(names))
            tid = g.tenant_id
            key = tuple(names)
            if self._alert_bands.get(tid) != key:
                self.alerts.reset(tid)
                self._alert_bands[tid] = key
            self.alerts.add(tid, counts, now)
            for i in np.flatnonzero(counts).tolist():
                band_table.add((tid, g.intent, names[i]), int(counts[i]))
            if self.drift is not None:
                bands = bands_of.get(tid)
                if bands is not None and list(bands.names) == list(names):
                    self.drift.add(
                        tid, g.intent, g.model_name, g.scores, counts, names, bands.thresholds, now
                    )

    def on_commit(self, t_start: int) -> None:
        self.hub.transactions.add(1, self.hub.attrs((("outcome", "committed"),)))
        if self.tracer is not None:
            self.tracer.commit(t_start, time.perf_counter_ns(), "committed")

    def on_abort(self) -> None:
        self.hub.transactions.add(1, self.hub.attrs((("outcome", "aborted"),)))
        if self.tracer is not None:
            t = time.perf_counter_ns()
            self.tracer.commit(t, t, "aborted")

    def on_rebalance(self, kind: str, partitions) -> None:
        """kind: assigned, revoked or lost (called from the consumer's rebalance callbacks)."""
        self.hub.rebalances.add(1, self.hub.attrs((("kind", kind),)))
        parts = {(p.topic, p.partition) for p in partitions}
        if kind == "assigned":
            self._assignment = self._assignment | parts
        else:
            self._assignment = self._assignment - parts
            self._lag = {k: v for k, v in self._lag.items() if k not in parts}

    def on_models(self) -> None:
        """After models-topic updates are applied: count swaps and refusals, refresh the model snapshot."""
        reg = self.worker.models
        if reg.generation == self._model_gen and len(reg.refused) == len(self._refused_seen):
            return
        self._model_gen = reg.generation
        models = {}
        for intent, a in list(reg.activations.items()):
            if self._active_seen.get(intent) != a.version:
                self._active_seen[intent] = a.version
                self.hub.activations.add(1, self.hub.attrs((("intent", intent),)))
            models[intent] = {
                "version": a.version,
                "activated_at": a.activated_at,
                "activate_at": a.activate_at,
                "loaded": all((intent, e.version) in reg.loaded for e in a.timeline),
            }
        refused = dict(reg.refused)
        for intent, version in refused.keys() - self._refused_seen:
            self.hub.refusals.add(1, self.hub.attrs((("intent", intent),)))
        self._refused_seen = set(refused)
        self._models, self._refused = models, refused
        self._models_loaded = bool(models) and all(m["loaded"] for m in models.values())

    # ---- timed updates (worker thread) --------------------------------------------------------------

    def update(self) -> None:
        """Roll windows, judge drift, read lag and the event rate; refresh the snapshots."""
        mono, now = time.monotonic(), time.time()
        self._next_update = mono + self.settings.telemetry.update_interval_s
        snap = {}
        for tid, counts in self.alerts.totals(now):
            names = self._alert_bands.get(tid, ())
            n = int(counts.sum())
            at_or_above = np.cumsum(counts[::-1])[::-1]
            snap[tid] = {
                "events": n,
                "bands": {
                    names[i]: {"count": int(at_or_above[i]), "rate": float(at_or_above[i] / n)}
                    for i in range(1, len(names))
                },
            }
        self._alert_snapshot = snap
        if self.drift is not None:
            self.drift.evaluate(now)
        self._lag = self._read_lag()
        pts = self._rate_points
        pts.append((mono, self.worker.stats.events_in))
        while len(pts) > 2 and mono - pts[1][0] >= _RATE_SPAN_S:
            pts.popleft()
        span = pts[-1][0] - pts[0][0]
        self._events_per_s = (pts[-1][1] - pts[0][1]) / span if span > 0 else 0.0

    def _read_lag(self) -> dict[tuple[str, int], int]:
        consumer = getattr(self.worker, "consumer", None)
        if consumer is None or not self._assignment:
            return {}
        lag = {}
        try:
            for tp in consumer.position([TopicPartition(t, p) for t, p in sorted(self._assignment)]):
                if tp.offset < 0:
                    continue  # nothing consumed there yet
                hi = consumer.get_watermark_offsets(tp, cached=True)[1]  # from the last fetch: no broker call
                if hi >= 0:
                    lag[(tp.topic, tp.partition)] = max(hi - tp.offset, 0)
        except (KafkaException, RuntimeError) as e:  # closing, or a partition just revoked
            logger.debug("lag not read: %s", e)
            return self._lag
        return lag

    # ---- helpers ------------------------------------------------------------------------------------

    def _reference(self, intent: str) -> ReferenceDistribution | None:
        rec = self.worker.models.references.get(intent)
        if rec is None:
            return None
        cached = self._refs.get(intent)
        if cached is None or cached[0] is not rec:
            try:
                ref = ReferenceDistribution.from_dict(rec.reference)
            except MuseError as e:
                logger.warning("reference of %s unusable for drift: %s", intent, e)
                ref = None
            cached = self._refs[intent] = (rec, ref)
        return cached[1]

    def _dead_labels(self, d) -> tuple[str, str]:
        """(tenant, intent) labels of a dead letter: registered tenants and known intents only."""
        if d.reason in _NO_TENANT:
            return UNKNOWN, UNKNOWN
        try:
            ev = orjson.loads(d.msg.value())
        except (orjson.JSONDecodeError, TypeError):
            return UNKNOWN, UNKNOWN
        if type(ev) is not dict:
            return UNKNOWN, UNKNOWN
        tid = ev.get("tenant_id")
        cfg = self.worker.tenants.tenants.get(tid) if type(tid) is str else None
        if cfg is None:
            return UNKNOWN, UNKNOWN
        intent = ev.get("intent")
        if intent is None:
            return tid, cfg.resolve_intent(None) or UNKNOWN
        known = (
            {i.name for i in self.settings.intents} | set(cfg.intents) | set(self.worker.models.activations)
        )
        return tid, intent if type(intent) is str and intent in known else OTHER

    # ---- read by the endpoint thread ----------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict]:
        age = time.monotonic() - self._heartbeat
        limit = self.settings.telemetry.stall_after_s
        return (not self._closed and age < limit), {
            "loop_turned_s_ago": round(age, 3),
            "stall_after_s": limit,
        }

    def readiness(self) -> tuple[bool, dict]:
        alive, _ = self.liveness()
        checks = {
            "producer_initialised": bool(getattr(self.worker, "ready", False)),
            "models_loaded": self._models_loaded,
            "assigned": bool(self._assignment),
            "alive": alive,
        }
        return all(checks.values()), checks

    def status(self) -> dict:
        s, st = self.settings, self.worker.stats
        alive, live = self.liveness()
        ready, checks = self.readiness()
        now = time.time()
        return {
            "worker": {
                "slot": self.slot,
                "group": s.runtime.group_id,
                "pid": os.getpid(),
                "started_at": self._started_at,
                "uptime_s": now - self._started_at,
            },
            "alive": alive,
            "ready": ready,
            "checks": {**checks, **live},
            "assignment": [f"{t}[{p}]" for t, p in sorted(self._assignment)],
            "lag": [{"topic": t, "partition": p, "lag": n} for (t, p), n in sorted(self._lag.items())],
            "events_per_s": self._events_per_s,
            "totals": {
                "events_in": st.events_in,
                "decisions": st.decisions,
                "dead_letters": st.dead_letters,
                "batches": st.batches,
                "commits": st.commits,
                "aborts": st.aborts,
                "rebalances": st.rebalances,
                "dead_by_reason": dict(st.dead_by_reason),
            },
            "models": {i: {**m, "age_s": now - m["activated_at"] / 1000.0} for i, m in self._models.items()},
            "refused": [
                {"intent": i, "version": v, "reason": r} for (i, v), r in sorted(self._refused.items())
            ],
            "alert_window_s": s.telemetry.alert_window_s,
            "alert_rates": self._alert_snapshot,
            "drift": [v.as_dict() for v in (self.drift.verdicts.values() if self.drift else ())],
        }

    def _register_gauges(self) -> None:
        g = self.hub.gauge
        g(
            "muse_consumer_lag",
            unit="{message}",
            description="Messages behind the partition end, per assigned input partition",
            values=lambda: [(n, {"topic": t, "partition": str(p)}) for (t, p), n in self._lag.items()],
        )
        g(
            "muse_assigned_partitions",
            unit="{partition}",
            description="Input partitions assigned to this worker",
            values=lambda: [(len(self._assignment), {})],
        )
        g(
            "muse_worker_ready",
            unit="1",
            description="1 when the worker is ready (see /readyz)",
            values=lambda: [(1 if self.readiness()[0] else 0, {})],
        )
        g(
            "muse_model_active_version",
            unit="{version}",
            description="The active model version per intent",
            values=lambda: [(m["version"], {"intent": i}) for i, m in self._models.items()],
        )
        g(
            "muse_model_active_age",
            unit="s",
            description="Seconds since the active version's activation",
            values=lambda: [
                (time.time() - m["activated_at"] / 1000.0, {"intent": i}) for i, m in self._models.items()
            ],
        )
        g(
            "muse_model_refused",
            unit="1",
            description="1 for each model version this worker refused",
            values=lambda: [(1, {"intent": i, "version": str(v)}) for i, v in self._refused],
        )
        g(
            "muse_alert_rate",
            unit="1",
            description="Share of the tenant's decisions at or above each band, over the alert window",
            values=lambda: [
                (b["rate"], {"tenant": t, "band": name})
                for t, a in self._alert_snapshot.items()
                for name, b in a["bands"].items()
            ],
        )
        g(
            "muse_alert_window_events",
            unit="{decision}",
            description="The tenant's decisions in the alert window",
            values=lambda: [(a["events"], {"tenant": t}) for t, a in self._alert_snapshot.items()],
        )
        if self.drift is None:
            return
        drift = self.drift

        def verdicts():
            return list(drift.verdicts.values())

        g(
            "muse_drift_psi",
            unit="1",
            description="PSI of the tenant's reference-scale scores in the drift window "
            "against the intent's reference",
            values=lambda: [
                (v.psi, {"tenant": v.tenant, "intent": v.intent}) for v in verdicts() if v.psi is not None
            ],
        )
        g(
            "muse_drift_detected",
            unit="1",
            description="1 while a drift bound is crossed (see the warning log)",
            values=lambda: [(int(v.drifted), {"tenant": v.tenant, "intent": v.intent}) for v in verdicts()],
        )
        g(
            "muse_drift_window_events",
            unit="{decision}",
            description="Scores in the drift window",
            values=lambda: [(v.events, {"tenant": v.tenant, "intent": v.intent}) for v in verdicts()],
        )
        g(
            "muse_drift_alert_rate",
            unit="1",
            description="Observed share of scores at or above the band's threshold in the drift window",
            values=lambda: [
                (b.observed, {"tenant": v.tenant, "intent": v.intent, "band": b.band})
                for v in verdicts()
                if v.psi is not None
                for b in v.bands
            ],
        )
        g(
            "muse_drift_reference_alert_rate",
            unit="1",
            description="The share the intent's reference implies at the band's threshold",
            values=lambda: [
                (b.expected, {"tenant": v.tenant, "intent": v.intent, "band": b.band})
                for v in verdicts()
                for b in v.bands
            ],
        )
