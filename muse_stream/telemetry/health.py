"""Liveness, readiness and the /status document of one worker, from its snapshots (endpoint thread)."""

from __future__ import annotations

import os
import time

from muse_stream.telemetry.snapshots import Snapshots


def liveness_check(heartbeat: float, closed: bool, stall_after_s: float) -> tuple[bool, dict]:
    """Alive while open and the loop turned (time.monotonic() `heartbeat`) less than stall_after_s ago."""
    age = time.monotonic() - heartbeat
    return (not closed and age < stall_after_s), {
        "loop_turned_s_ago": round(age, 3),
        "stall_after_s": stall_after_s,
    }


def readiness_check(snap: Snapshots, *, producer_initialised: bool, alive: bool) -> tuple[bool, dict]:
    """Ready when every check holds; the checks are returned so /readyz can say which one does not."""
    checks = {
        "producer_initialised": producer_initialised,
        "models_loaded": snap.models_loaded,
        "assigned": bool(snap.assignment),
        "offsets_readable": not snap.held,
        "alive": alive,
    }
    return all(checks.values()), checks


def status_document(
    snap: Snapshots,
    *,
    settings,
    stats,
    slot: int,
    started_at: float,
    health: tuple[tuple[bool, dict], tuple[bool, dict]],
    drift_verdicts,
) -> dict:
    """The worker's /status JSON. health: (liveness, readiness) results; drift_verdicts: the monitor's, or ()."""
    (alive, live), (ready, checks) = health
    now = time.time()
    return {
        "worker": {
            "slot": slot,
            "group": settings.runtime.group_id,
            "pid": os.getpid(),
            "started_at": started_at,
            "uptime_s": now - started_at,
        },
        "alive": alive,
        "ready": ready,
        "checks": {**checks, **live},
        "assignment": [f"{t}[{p}]" for t, p in sorted(snap.assignment)],
        "offsets_unreadable": [f"{t}[{p}]" for t, p in sorted(snap.held)],
        "lag": [{"topic": t, "partition": p, "lag": n} for (t, p), n in sorted(snap.lag.items())],
        "events_per_s": snap.events_per_s,
        "totals": {
            "events_in": stats.events_in,
            "decisions": stats.decisions,
            "dead_letters": stats.dead_letters,
            "batches": stats.batches,
            "commits": stats.commits,
            "aborts": stats.aborts,
            "rebalances": stats.rebalances,
            "dead_by_reason": dict(stats.dead_by_reason),
        },
        "models": {i: {**m, "age_s": now - m["activated_at"] / 1000.0} for i, m in snap.models.items()},
        "refused": [{"intent": i, "version": v, "reason": r} for (i, v), r in sorted(snap.refused.items())],
        "alert_window_s": settings.telemetry.alert_window_s,
        "alert_rates": snap.alerts,
        "drift": [v.as_dict() for v in drift_verdicts],
    }
