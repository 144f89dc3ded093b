"""`muse-stream status`: what the workers' endpoints and the topics say, as a report (a dict: JSON for
scripts; telemetry/status_screen.py draws it for people) with a health verdict.

Workers are found at telemetry.metrics_port + slot (or given as URLs); lag comes from the group's
committed offsets against the partitions' ends, so it is shown even when no worker answers; active and
shadow versions come from the models topic, tenants' bands from the tenants topic. A cluster that does not
answer (or refuses the credentials) is an error, not an empty screen.

Unhealthy (`health.problems`, exit code 1), each judged from this one look:
  - no worker endpoint to ask, or a worker endpoint that does not answer;
  - a worker that answers but is not ready (not assigned, models not loaded, producer not initialised,
    loop not turning);
  - the input is stalled: the group has lag and none of its committed offsets moved within the lag window
    (lag is read twice, `lag_window_s` apart, only when there is lag). Lag that grows while offsets move is
    shown (`lag.grew_by`) but is load, not a fault.
Refused versions, drift and dead letters are shown, not judged: the workers keep serving through them.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from muse_stream.config import Settings
from muse_stream.errors import MuseError
from muse_stream.kafka.clients import (
    admin_config,
    check_reachable,
    consumer_config,
    describe_error,
    make_client,
    make_consumer,
)
from muse_stream.telemetry.server import endpoint_port


def worker_urls(settings: Settings, *, workers: int, first_slot: int = 0) -> list[str]:
    t = settings.telemetry
    if not t.metrics_port or not t.enabled:  # without telemetry a worker serves no endpoint
        return []
    host = "127.0.0.1" if t.metrics_host in ("0.0.0.0", "::", "") else t.metrics_host
    return [
        f"http://{host}:{endpoint_port(t.metrics_port, slot)}"
        for slot in range(first_slot, first_slot + workers)
    ]


def fetch_worker(url: str, timeout: float) -> dict:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/status", timeout=timeout) as r:
            return {"url": url, "up": True, **orjson.loads(r.read())}
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as e:
        reason = getattr(e, "reason", None) or e
        return {"url": url, "up": False, "error": str(reason)}


def check_cluster(settings: Settings, timeout: float = 10.0) -> None:
    """KafkaOpError, in one line naming the address and the cause (a refused login as such), unless the
    cluster answers: status then has nothing true to show."""
    admin, errors = make_client(AdminClient, admin_config(settings), "status")
    check_reachable(admin, settings, timeout, errors=errors)


def group_lag(settings: Settings, timeout: float = 10.0) -> dict:
    """Per input partition: the group's committed offset, the partition's end, and the difference."""
    topic = settings.topics.events
    conf = consumer_config(settings, group_id=settings.runtime.group_id)
    c = make_consumer(conf, "status")
    try:
        md = c.list_topics(topic, timeout=timeout).topics.get(topic)
        if md is None or md.error is not None:
            return {"error": f"topic {topic} not found", "partitions": [], "total": None}
        parts = [TopicPartition(topic, p) for p in sorted(md.partitions)]
        committed = {tp.partition: tp.offset for tp in c.committed(parts, timeout=timeout)}
        rows = []
        for tp in parts:
            lo, hi = c.get_watermark_offsets(tp, timeout=timeout)
            off = committed.get(tp.partition, -1)
            start = off if off >= 0 else lo  # nothing committed: everything still to read is lag
            rows.append(
                {
                    "topic": topic,
                    "partition": tp.partition,
                    "committed": off if off >= 0 else None,
                    "end": hi,
                    "lag": max(hi - start, 0),
                }
            )
        return {"partitions": rows, "total": sum(r["lag"] for r in rows)}
    except KafkaException as e:
        return {"error": describe_error(e.args[0], conf), "partitions": [], "total": None}
    finally:
        c.close()


def _blank_intent() -> dict:
    return {"version": None, "activated_at": None, "age_s": None, "activate_at": None, "previous": None,
            "versions": [], "shadow": None}


def active_models(reg) -> dict:
    """Per intent: the active version (and since when), its predecessor, every version, and the shadow."""
    now = time.time()
    intents = {
        i: {
            "version": a.version,
            "activated_at": a.activated_at,
            "age_s": now - a.activated_at / 1000,
            "activate_at": a.activate_at,
            "previous": a.previous,
            "versions": [r.version for r in reg.versions_of(i)],
            "shadow": None,
        }
        for i, a in sorted(reg.activations.items())
    }
    for i, sh in sorted(reg.shadows.items()):
        if sh.version is not None:
            entry = intents.setdefault(i, {**_blank_intent(), "versions": [r.version for r in reg.versions_of(i)]})
            entry["shadow"] = sh.version
    for i in sorted({i for i, _ in reg.deployments}):
        d = reg.latest_deployment(i)
        last = d.steps[-1]
        intents.setdefault(i, _blank_intent())["deployment"] = {
            "id": d.name, "model": d.model, "state": d.state, "since": last.at, "detail": last.detail,
            "candidate": d.candidate, "serving": d.serving, "steps": [{"state": st.state, "at": st.at}
                                                                      for st in d.steps]}
    return {"intents": intents}


def tenant_bands(settings: Settings, reg) -> dict:
    """Per tenant and intent: each band's threshold and the reference alert rate it stands for."""
    from muse_stream.models.bands import ReferenceCache
    from muse_stream.tenants import read_tenant_registry

    try:
        tenants = read_tenant_registry(settings, references=ReferenceCache(lambda: reg.references))
    except MuseError as e:
        return {"error": str(e), "tenants": {}}
    return {"tenants": {tid: {"suspended": bool(getattr(cfg, "suspended", False)),
                              "intents": {i: tenants.describe_bands(tid, i) for i in cfg.intents}}
                        for tid, cfg in sorted(tenants.tenants.items())}}


def _lag_trend(settings: Settings, first: dict, window_s: float) -> dict:
    """Read the group's lag again `window_s` later when there is lag: stalled when no committed offset
    moved meanwhile (nothing consumes the input), grew_by how much the total lag grew."""
    if not first.get("total") or window_s <= 0:
        return first
    time.sleep(window_s)
    second = group_lag(settings)
    if second.get("total") is None:
        return first
    before = {r["partition"]: r["committed"] for r in first["partitions"]}
    moved = any(r["committed"] != before.get(r["partition"]) for r in second["partitions"])
    return {**second, "window_s": window_s, "grew_by": second["total"] - first["total"],
            "stalled": bool(second["total"]) and not moved}


def judge(report: dict) -> dict:
    """The health verdict of a report (see the module's docstring): healthy, and the problems found."""
    problems = []
    workers = report["workers"]
    if not workers:
        problems.append("no worker endpoint to ask: set telemetry.metrics_port (with telemetry.enabled = true) "
                        "or pass --endpoint")
    for w in workers:
        if not w["up"]:
            problems.append(f"worker at {w['url']} does not answer ({w['error']})")
        elif not w.get("ready"):
            failing = ", ".join(k for k, v in w.get("checks", {}).items() if v is False) or "?"
            problems.append(f"worker slot {w['worker']['slot']} is not ready ({failing})")
    lag = report["lag"]
    if lag.get("error"):
        problems.append(f"input lag unknown: {lag['error']}")
    elif lag.get("stalled"):
        problems.append(f"input stalled: lag {lag['total']:,} and no committed offset of group "
                        f"{report['group']} moved in {lag['window_s']:.1f}s")
    return {"healthy": not problems, "problems": problems}


def _with_serving(models: dict, workers: list[dict]) -> dict:
    """Add, per intent, the versions the answering workers actually serve: a refused activation shows as the
    topic naming one version while the workers keep serving the previous one."""
    for w in workers:
        for intent, m in w.get("models", {}).items():
            entry = models["intents"].setdefault(intent, _blank_intent())
            entry.setdefault("serving", [])
            if m["version"] not in entry["serving"]:
                entry["serving"].append(m["version"])
    for entry in models["intents"].values():
        entry["serving"] = sorted(entry.get("serving", []))
    return models


def default_lag_window(settings: Settings) -> float:
    """Long enough for a healthy group to commit a few times (runtime.commit_interval_ms)."""
    return max(2.0, 3 * settings.runtime.commit_interval_ms / 1000.0)


def collect(settings: Settings, urls: list[str], *, timeout: float = 3.0, lag_window_s: float = 0.0) -> dict:
    from muse_stream.models.store import read_models

    lag = group_lag(settings)
    workers = [fetch_worker(u, timeout) for u in urls]
    up = [w for w in workers if w["up"]]
    alert: dict[str, dict] = {}
    for w in up:
        for tid, a in w.get("alert_rates", {}).items():
            agg = alert.setdefault(tid, {"events": 0, "bands": {}})
            agg["events"] += a["events"]
            for band, b in a["bands"].items():
                agg["bands"][band] = agg["bands"].get(band, 0) + b["count"]
    alert_rates = {
        tid: {
            "events": a["events"],
            "bands": {
                b: {"count": k, "rate": k / a["events"] if a["events"] else 0.0}
                for b, k in a["bands"].items()
            },
        }
        for tid, a in sorted(alert.items())
    }
    drift = [
        {**d, "worker": w["worker"]["slot"]} for w in up for d in w.get("drift", []) if d["psi"] is not None
    ]
    refused = {(r["intent"], r["version"]): r["reason"] for w in up for r in w.get("refused", [])}
    try:
        reg = read_models(settings)
        models, bands = active_models(reg), tenant_bands(settings, reg)
    except MuseError as e:
        models, bands = {"error": str(e), "intents": {}}, {"error": str(e), "tenants": {}}
    report = {
        "generated_at": time.time(),
        "group": settings.runtime.group_id,
        "workers": workers,
        "events_per_s": sum(w.get("events_per_s", 0.0) for w in up),
        "lag": _lag_trend(settings, lag, lag_window_s),
        "models": _with_serving(models, up),
        "bands": bands,
        "refused": [{"intent": i, "version": v, "reason": r} for (i, v), r in sorted(refused.items())],
        "alert_window_s": up[0]["alert_window_s"] if up else settings.telemetry.alert_window_s,
        "alert_rates": alert_rates,
        "drift": sorted(drift, key=lambda d: (not d["drifted"], d["tenant"], d["intent"], d["worker"])),
        # Each worker's features departing from their version's contract (missing rate, range), as it judged.
        "feature_drift": sorted(({**d, "worker": w["worker"]["slot"]} for w in up
                                 for d in (w.get("features") or {}).get("departures", [])),
                                key=lambda d: (d["tenant"], d["version"], d["feature"], d["kind"], d["worker"])),
    }
    report["health"] = judge(report)
    return report
