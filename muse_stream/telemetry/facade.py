"""Telemetry of one worker: the runtime calls it at a handful of points; it records per batch, not per event.

Calls from the loop (all in the worker thread): start, poll_start (each loop turn), on_batch, on_commit,
on_abort, on_rebalance, on_models, close. Every `update_interval_s` the worker thread also rolls the
sliding windows, judges drift, reads consumer lag and refreshes the snapshots (snapshots.py) that the
endpoint thread reads for /metrics gauges (gauges.py), /healthz, /readyz and /status (health.py); that
thread never touches a Kafka client.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from muse_stream.errors import ConfigError
from muse_stream.models.bands import ReferenceCache
from muse_stream.telemetry.drift import DriftMonitor
from muse_stream.telemetry.features import FeatureMonitor
from muse_stream.telemetry.gauges import register_gauges
from muse_stream.telemetry.health import liveness_check, readiness_check, status_document
from muse_stream.telemetry.labels import dead_letter_labels
from muse_stream.telemetry.lag import read_lag
from muse_stream.telemetry.metrics import MetricsHub
from muse_stream.telemetry.server import TelemetryServer, endpoint_port
from muse_stream.telemetry.snapshots import Snapshots
from muse_stream.telemetry.state import register_state_metrics, state_status
from muse_stream.telemetry.tracing import BatchTracer
from muse_stream.telemetry.windows import SlidingCounts

logger = logging.getLogger(__name__)

_EVENT_TIME = (("source", "event_time"),)
_RECORD_TS = (("source", "record_timestamp"),)
_RATE_SPAN_S = 60.0
RECORD_TS_SAMPLE = 128
WINDOW_FLUSH_EVENTS = 4096  # the alert and drift windows take pending groups this often (or WINDOW_FLUSH_S)
WINDOW_FLUSH_S = 0.25


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
        # Each intent's reference, parsed once per record (the tenants' rate bands read the same records).
        references = ReferenceCache(lambda: worker.models.references)
        self.drift = DriftMonitor(t.drift, references) if t.drift.enabled else None
        self.features = FeatureMonitor(self.hub, t, worker.models)  # missing values, feature-contract drift
        self.alerts = SlidingCounts(t.alert_window_s)
        self._alert_bands: dict[str, tuple[str, ...]] = {}
        # (tenant, intent, version, band names) -> [band counts, [scores...]] not yet in the windows
        self._pending: dict[tuple, list] = {}
        self._pending_n = 0
        self._pending_since = 0.0
        self._server: TelemetryServer | None = None
        self._closed = False
        self._heartbeat = time.monotonic()
        self._next_update = 0.0
        self._started_at = time.time()
        self._model_gen = -1
        self._refused_seen: set[tuple[str, int]] = set()
        self._active_seen: dict[str, int] = {}
        self._rate_points: deque[tuple[float, int]] = deque()
        self.snap = Snapshots()
        register_gauges(self.hub, self.snap, ready=lambda: self.readiness()[0], drift=self.drift)
        self._state = getattr(worker, "state", None)  # entity state (state/engine.py), when an intent has it
        if self._state is not None and self._state.enabled:
            register_state_metrics(self.hub, self._state.stats)

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
            tid, intent = dead_letter_labels(d, self.settings, self.worker.tenants, self.worker.models)
            hub.dead_letters.add((tid, intent, d.reason.value), 1)
            events.add((tid, intent), 1)
        now = time.time()
        now_ms = now * 1000.0
        self._record_timestamps(msgs, now_ms)
        self.features.on_batch(out, now)
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
        """Latency and band counters at once (scrapes read them); the alert and drift windows, read only by
        `update`, take the groups of several batches at a time (see _flush_windows)."""
        hub = self.hub
        band_table = hub.band_decisions
        times = [g.event_times for g in groups if len(g.event_times)]
        if times:
            hub.latency.record((now_ms - np.concatenate(times)) / 1000.0, _EVENT_TIME)
        pending = self._pending
        n = 0
        for g in groups:
            names = g.band_names
            counts = np.bincount(g.bands, minlength=len(names))
            for i in np.flatnonzero(counts).tolist():
                band_table.add((g.tenant_id, g.intent, names[i]), int(counts[i]))
            # The thresholds that acted on these events (a change written ahead is not in force yet).
            key = (g.tenant_id, g.intent, g.model_name, tuple(names), tuple(g.thresholds.tolist()))
            p = pending.get(key)
            if p is None:
                pending[key] = [counts, [g.scores]]
            else:
                p[0] = p[0] + counts
                p[1].append(g.scores)
            n += len(g.scores)
        if not self._pending_n:
            self._pending_since = now
        self._pending_n += n
        if self._pending_n >= WINDOW_FLUSH_EVENTS or now - self._pending_since >= WINDOW_FLUSH_S:
            self._flush_windows(now)

    def _flush_windows(self, now: float) -> None:
        """Add the pending groups to the alert and drift windows: one add per (tenant, intent, version, bands)
        for all the batches since the last flush, so a light load's small batches pay the windows' fixed cost
        once per WINDOW_FLUSH_EVENTS events or WINDOW_FLUSH_S seconds, not once per batch. The windows' slots
        are seconds wide, so counting the batches at the flush's time moves nothing that they report."""
        pending, self._pending, self._pending_n = self._pending, {}, 0
        for (tid, intent, model_name, key, thresholds), (counts, scores) in pending.items():
            if self._alert_bands.get(tid) != key:
                self.alerts.reset(tid)
                self._alert_bands[tid] = key
            self.alerts.add(tid, counts, now)
            if self.drift is not None:
                values = scores[0] if len(scores) == 1 else np.concatenate(scores)
                self.drift.add(tid, intent, model_name, values, counts, list(key), np.asarray(thresholds), now)

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
        snap = self.snap
        parts = {(p.topic, p.partition) for p in partitions}
        if kind == "assigned":
            snap.assignment = snap.assignment | parts
        else:
            snap.assignment = snap.assignment - parts
            snap.lag = {k: v for k, v in snap.lag.items() if k not in parts}

    def on_held(self, held: frozenset) -> None:
        """Assigned partitions whose committed offset cannot be read (kafka/starts.py): not ready meanwhile."""
        self.snap.held = held  # StartWatch replaces its frozenset whole: handed over as it is

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
                "loaded": all((intent, e.version) in reg.loaded for e in a.timeline[-2:]),
            }
        refused = dict(reg.refused)
        for intent, version in refused.keys() - self._refused_seen:
            self.hub.refusals.add(1, self.hub.attrs((("intent", intent),)))
        self._refused_seen = set(refused)
        self.snap.models, self.snap.refused = models, refused
        self.snap.models_loaded = bool(models) and all(m["loaded"] for m in models.values())

    # ---- timed updates (worker thread) --------------------------------------------------------------

    def update(self) -> None:
        """Roll windows, judge drift, read lag and the event rate; refresh the snapshots."""
        mono, now = time.monotonic(), time.time()
        if self._pending:
            self._flush_windows(now)
        self._next_update = mono + self.settings.telemetry.update_interval_s
        alerts = {}
        for tid, counts in self.alerts.totals(now):
            names = self._alert_bands.get(tid, ())
            n = int(counts.sum())
            at_or_above = np.cumsum(counts[::-1])[::-1]
            alerts[tid] = {
                "events": n,
                "bands": {
                    names[i]: {"count": int(at_or_above[i]), "rate": float(at_or_above[i] / n)}
                    for i in range(1, len(names))
                },
            }
        self.snap.alerts = alerts
        if self.drift is not None:
            self.drift.evaluate(now)
        self.features.tick(now)
        self.snap.lag = self._read_lag()
        pts = self._rate_points
        pts.append((mono, self.worker.stats.events_in))
        while len(pts) > 2 and mono - pts[1][0] >= _RATE_SPAN_S:
            pts.popleft()
        span = pts[-1][0] - pts[0][0]
        self.snap.events_per_s = (pts[-1][1] - pts[0][1]) / span if span > 0 else 0.0

    def _read_lag(self) -> dict[tuple[str, int], int]:
        consumer = getattr(self.worker, "consumer", None)
        if consumer is None or not self.snap.assignment:
            return {}
        lag = read_lag(consumer, self.snap.assignment)
        return self.snap.lag if lag is None else lag  # unreadable for now: keep the last figures

    # ---- read by the endpoint thread ----------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict]:
        return liveness_check(self._heartbeat, self._closed, self.settings.telemetry.stall_after_s)

    def readiness(self) -> tuple[bool, dict]:
        alive, _ = self.liveness()
        return readiness_check(
            self.snap, producer_initialised=bool(getattr(self.worker, "ready", False)), alive=alive
        )

    def status(self) -> dict:
        return {**status_document(
            self.snap,
            settings=self.settings,
            stats=self.worker.stats,
            slot=self.slot,
            started_at=self._started_at,
            health=(self.liveness(), self.readiness()),
            drift_verdicts=self.drift.verdicts.values() if self.drift else (),
        ), "features": self.features.status(), **state_status(self._state)}
