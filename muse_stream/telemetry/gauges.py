"""The worker's gauges: observed from its snapshots when /metrics is scraped (or OTLP exports)."""

from __future__ import annotations

import time
from collections.abc import Callable

from muse_stream.telemetry.drift import DriftMonitor
from muse_stream.telemetry.metrics import MetricsHub
from muse_stream.telemetry.snapshots import Snapshots


def register_gauges(
    hub: MetricsHub, snap: Snapshots, *, ready: Callable[[], bool], drift: DriftMonitor | None
) -> None:
    """Register every gauge on `hub`. The callbacks run in the endpoint thread: they read `snap` and the drift
    verdicts, which the worker thread replaces whole, and never a Kafka client."""
    g = hub.gauge
    g(
        "muse_consumer_lag",
        unit="{message}",
        description="Messages behind the partition end, per assigned input partition",
        values=lambda: [(n, {"topic": t, "partition": str(p)}) for (t, p), n in snap.lag.items()],
    )
    g(
        "muse_assigned_partitions",
        unit="{partition}",
        description="Input partitions assigned to this worker",
        values=lambda: [(len(snap.assignment), {})],
    )
    g(
        "muse_worker_ready",
        unit="1",
        description="1 when the worker is ready (see /readyz)",
        values=lambda: [(1 if ready() else 0, {})],
    )
    g(
        "muse_model_active_version",
        unit="{version}",
        description="The active model version per intent",
        values=lambda: [(m["version"], {"intent": i}) for i, m in snap.models.items()],
    )
    g(
        "muse_model_active_age",
        unit="s",
        description="Seconds since the active version's activation",
        values=lambda: [
            (time.time() - m["activated_at"] / 1000.0, {"intent": i}) for i, m in snap.models.items()
        ],
    )
    g(
        "muse_model_refused",
        unit="1",
        description="1 for each model version this worker refused",
        values=lambda: [(1, {"intent": i, "version": str(v)}) for i, v in snap.refused],
    )
    g(
        "muse_alert_rate",
        unit="1",
        description="Share of the tenant's decisions at or above each band, over the alert window",
        values=lambda: [
            (b["rate"], {"tenant": t, "band": name})
            for t, a in snap.alerts.items()
            for name, b in a["bands"].items()
        ],
    )
    g(
        "muse_alert_window_events",
        unit="{decision}",
        description="The tenant's decisions in the alert window",
        values=lambda: [(a["events"], {"tenant": t}) for t, a in snap.alerts.items()],
    )
    if drift is not None:
        _register_drift_gauges(hub, drift)


def _register_drift_gauges(hub: MetricsHub, drift: DriftMonitor) -> None:
    g = hub.gauge

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
