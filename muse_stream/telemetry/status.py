"""`muse-stream status`: what the workers' endpoints and the topics say, on one screen or as JSON.

Workers are found at telemetry.metrics_port + slot (or given as URLs); lag comes from the group's
committed offsets against the partitions' ends, so it is shown even when no worker answers; active
versions come from the models topic. A cluster that does not answer (or refuses the credentials) is an
error, not an empty screen.
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
    if not t.metrics_port:
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


def active_models(settings: Settings) -> dict:
    from muse_stream.models.store import read_models

    try:
        reg = read_models(settings)
    except MuseError as e:
        return {"error": str(e), "intents": {}}
    now = time.time()
    return {
        "intents": {
            i: {
                "version": a.version,
                "activated_at": a.activated_at,
                "age_s": now - a.activated_at / 1000,
                "activate_at": a.activate_at,
                "previous": a.previous,
                "versions": [r.version for r in reg.versions_of(i)],
            }
            for i, a in sorted(reg.activations.items())
        }
    }


def _with_serving(models: dict, workers: list[dict]) -> dict:
    """Add, per intent, the versions the answering workers actually serve: a refused activation shows as the
    topic naming one version while the workers keep serving the previous one."""
    for w in workers:
        for intent, m in w.get("models", {}).items():
            entry = models["intents"].setdefault(
                intent,
                {
                    "version": None,
                    "activated_at": None,
                    "age_s": None,
                    "activate_at": None,
                    "previous": None,
                    "versions": [],
                },
            )
            entry.setdefault("serving", [])
            if m["version"] not in entry["serving"]:
                entry["serving"].append(m["version"])
    for entry in models["intents"].values():
        entry["serving"] = sorted(entry.get("serving", []))
    return models


def collect(settings: Settings, urls: list[str], *, timeout: float = 3.0) -> dict:
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
    return {
        "generated_at": time.time(),
        "group": settings.runtime.group_id,
        "workers": workers,
        "events_per_s": sum(w.get("events_per_s", 0.0) for w in up),
        "lag": group_lag(settings),
        "models": _with_serving(active_models(settings), up),
        "refused": [{"intent": i, "version": v, "reason": r} for (i, v), r in sorted(refused.items())],
        "alert_window_s": up[0]["alert_window_s"] if up else settings.telemetry.alert_window_s,
        "alert_rates": alert_rates,
        "drift": sorted(drift, key=lambda d: (not d["drifted"], d["tenant"], d["intent"], d["worker"])),
    }


# ---- the screen -------------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def _pct(x: float) -> str:
    """A share as a percentage with 3 significant digits: alert rates live far below 1%."""
    return f"{100 * x:.3g}%"


def _host(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def render(report: dict, console) -> None:
    from rich import box
    from rich.table import Table

    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(report["generated_at"]))
    lag_total = report["lag"].get("total")
    console.print(
        f"[bold]muse-stream[/bold]  group [cyan]{report['group']}[/cyan]  {stamp}  "
        f"events/s [bold]{report['events_per_s']:,.0f}[/bold]  lag [bold]"
        f"{'-' if lag_total is None else f'{lag_total:,}'}[/bold]"
    )

    t = Table(title="Workers", box=box.SIMPLE_HEAD, title_justify="left")
    for col in (
        "slot",
        "endpoint",
        "state",
        "partitions",
        "events/s",
        "lag",
        "events in",
        "dead",
        "commits",
        "aborts",
        "up for",
    ):
        if col == "endpoint":  # never cut: it is what an operator copies to curl a worker
            t.add_column(
                col, no_wrap=True, min_width=max((len(_host(w["url"])) for w in report["workers"]), default=8)
            )
        else:
            t.add_column(col, justify="left" if col == "state" else "right")
    if not report["workers"]:
        console.print("[yellow]no worker endpoints: set telemetry.metrics_port or pass --endpoint[/yellow]")
    for w in report["workers"]:
        if not w["up"]:
            t.add_row("?", _host(w["url"]), f"[red]down[/red] ({w['error']})", *[""] * 8)
            continue
        state = (
            "[green]ready[/green]"
            if w["ready"]
            else (
                "[yellow]not ready[/yellow] ("
                + ", ".join(k for k, v in w["checks"].items() if v is False)
                + ")"
            )
        )
        tot = w["totals"]
        t.add_row(
            str(w["worker"]["slot"]),
            _host(w["url"]),
            state,
            str(len(w["assignment"])),
            f"{w['events_per_s']:,.0f}",
            f"{sum(p['lag'] for p in w['lag']):,}",
            f"{tot['events_in']:,}",
            f"{tot['dead_letters']:,}",
            f"{tot['commits']:,}",
            f"{tot['aborts']:,}",
            _age(w["worker"]["uptime_s"]),
        )
    console.print(t)

    lag = report["lag"]
    t = Table(title="Input lag (committed offsets of the group)", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("topic", "partition", "committed", "end", "lag"):
        t.add_column(col, justify="left" if col == "topic" else "right")
    for r in lag["partitions"]:
        t.add_row(
            r["topic"],
            str(r["partition"]),
            "-" if r["committed"] is None else f"{r['committed']:,}",
            f"{r['end']:,}",
            f"{r['lag']:,}",
        )
    if lag.get("error"):
        console.print(f"[red]lag: {lag['error']}[/red]")
    console.print(t)

    models = report["models"]
    t = Table(title="Active models", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("intent", "active on topic", "since", "previous", "served by workers", "versions", "refused"):
        t.add_column(col)
    refused: dict[str, list[str]] = {}
    for r in report["refused"]:
        refused.setdefault(r["intent"], []).append(str(r["version"]))
    for intent, m in models.get("intents", {}).items():
        pending = f" (from event time {m['activate_at']})" if m["activate_at"] is not None else ""
        serving = ", ".join(f"{intent}@{v}" for v in m["serving"]) or "-"
        if m["serving"] and m["serving"] != [m["version"]]:
            serving = f"[red]{serving}[/red]"  # workers refused (or have not yet applied) the topic's version
        t.add_row(
            intent,
            "-" if m["version"] is None else f"{intent}@{m['version']}{pending}",
            "-" if m["age_s"] is None else _age(m["age_s"]) + " ago",
            "-" if m["previous"] is None else str(m["previous"]),
            serving,
            ", ".join(map(str, m["versions"])),
            "[red]" + ", ".join(refused.get(intent, [])) + "[/red]" if intent in refused else "",
        )
    if models.get("error"):
        console.print(f"[red]models: {models['error']}[/red]")
    console.print(t)

    t = Table(
        title=f"Alert rates (last {report['alert_window_s']}s, all workers)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for col in ("tenant", "decisions", "band", "alerts", "rate"):
        t.add_column(col, justify="left" if col in ("tenant", "band") else "right")
    for tid, a in report["alert_rates"].items():
        for i, (band, b) in enumerate(a["bands"].items()):
            t.add_row(
                tid if i == 0 else "",
                f"{a['events']:,}" if i == 0 else "",
                band,
                f"{b['count']:,}",
                _pct(b["rate"]),
            )
    console.print(t)

    t = Table(title="Drift (per worker window)", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("tenant", "intent", "worker", "version", "scores", "PSI", "alert rate vs reference", "state"):
        t.add_column(col, justify="right" if col in ("worker", "scores", "PSI") else "left")
    for d in report["drift"]:
        bands = "  ".join(
            f"{b['band']} {_pct(b['observed'])}/{_pct(b['expected'])}" + ("" if b["judged"] else "*")
            for b in d["bands"]
        )
        state = (
            f"[red]DRIFT since {_age(report['generated_at'] - d['since'])}[/red]" if d["drifted"] else "ok"
        )
        t.add_row(
            d["tenant"],
            d["intent"],
            str(d["worker"]),
            d["version"],
            f"{d['events']:,}",
            f"{d['psi']:.3f}",
            bands,
            state,
        )
    console.print(t)
    if not report["drift"]:
        console.print("  (no window has enough scores for a drift verdict yet)")
    elif any(not b["judged"] for d in report["drift"] for b in d["bands"]):
        console.print("  * too few expected alerts in the window to judge that band")
