"""The `muse-stream status` screen: a collected report (telemetry/status.py) drawn with rich tables.

On a terminal it fits the terminal; piped or redirected it is plain text at full width (no colour codes,
no cell cut to 80 columns), so `status | grep` finds whole tenant names and endpoints.
"""

from __future__ import annotations

import sys
import time


def make_console(file=None):
    """A rich Console for `file` (stdout): the terminal's own when it is one, else plain and unbounded."""
    from rich.console import Console

    file = file or sys.stdout
    if file.isatty():
        console = Console(file=file)
    else:
        # Not a terminal: rich would assume 80 columns and cut or wrap cells; a width no table reaches keeps
        # every cell whole (tables are not expanded, so no line grows to that width).
        console = Console(file=file, width=100_000, no_color=True, highlight=False, emoji=False, soft_wrap=True,
                          color_system=None)
    # rich ends a closed pipe with SystemExit(1), which `status` uses for "unhealthy": hand it to the command
    # line's own handling instead (exit 141, as every other command under `| head`).
    console.on_broken_pipe = _broken_pipe
    return console


def _broken_pipe() -> None:
    raise BrokenPipeError("stdout closed")


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
    from rich.markup import escape
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
            t.add_row("?", _host(w["url"]), f"[red]down[/red] ({escape(w['error'])})", *[""] * 8)
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
        console.print(f"[red]lag: {escape(lag['error'])}[/red]")
    console.print(t)
    if lag.get("window_s") is not None:
        moved = "[red]no committed offset moved[/red]" if lag["stalled"] else "committed offsets moved"
        console.print(f"  lag read again after {lag['window_s']:.1f}s: {lag['grew_by']:+,}; {moved}")

    models = report["models"]
    t = Table(title="Active models", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("intent", "active on topic", "since", "previous", "shadow", "served by workers", "versions",
                "refused"):
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
            "-" if m.get("shadow") is None else f"{intent}@{m['shadow']}",
            serving,
            ", ".join(map(str, m["versions"])),
            "[red]" + ", ".join(refused.get(intent, [])) + "[/red]" if intent in refused else "",
        )
    if models.get("error"):
        console.print(f"[red]models: {escape(models['error'])}[/red]")
    console.print(t)
    for intent, m in models.get("intents", {}).items():
        d = m.get("deployment")
        if d is not None:  # the intent's latest deployment (muse-stream deploy): its state and last step
            colour = {"refused": "red", "rolled back": "red", "done": "green"}.get(d["state"], "yellow")
            console.print(f"  deployment {escape(d['id'])} of {escape(d['model'])}: [{colour}]{d['state']}[/{colour}]"
                          f" {_age(report['generated_at'] - d['since'] / 1000)} ago; {escape(d['detail'])}")

    bands = report.get("bands", {})
    t = Table(title="Tenant bands (thresholds on each intent's reference scale)", box=box.SIMPLE_HEAD,
              title_justify="left")
    for col in ("tenant", "intent", "band", "as given", "threshold", "reference alert rate"):
        t.add_column(col, justify="right" if col in ("threshold", "reference alert rate") else "left")
    for tid, tb in bands.get("tenants", {}).items():
        first = True
        for intent, rows in tb["intents"].items():
            for r in rows:
                name = tid + (" (suspended)" if tb["suspended"] else "")
                t.add_row(name if first else "", intent, r["name"], r["text"],
                          "-" if r["threshold"] is None else f"{r['threshold']:.6g}",
                          "-" if r["reference_rate"] is None else _pct(r["reference_rate"]))
                first = False
    if bands.get("error"):
        console.print(f"[red]tenants: {escape(bands['error'])}[/red]")
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

    stateful = [w for w in report["workers"] if w.get("up") and w.get("state")]
    if stateful:
        t = Table(title="Entity state (per worker, since it started)", box=box.SIMPLE_HEAD, title_justify="left")
        for col in ("worker", "stores", "restored", "late", "duplicates", "wrong key", "swept", "capped"):
            t.add_column(col, justify="left" if col == "worker" else "right")
        for w in stateful:
            st = w["state"]
            t.add_row(str(w["worker"]["slot"]), str(st["stores"]),
                      f"{st['restored_records']:,} in {st['restore_seconds']:.1f}s", f"{st['late']:,}",
                      f"{st['duplicates']:,}", f"{st['wrong_partition_key']:,}", f"{st['swept']:,}",
                      f"{st['capped']:,}")
        console.print(t)

    features = report.get("feature_drift") or []
    if features:
        t = Table(title="Feature drift (live figures away from the version's feature contract)", box=box.SIMPLE_HEAD,
                  title_justify="left")
        for col in ("tenant", "version", "worker", "feature", "kind", "live", "contract", "events", "since"):
            t.add_column(col, justify="right" if col in ("worker", "live", "contract", "events") else "left")
        for d in features:
            t.add_row(d["tenant"], d["version"], str(d["worker"]), d["feature"], d["kind"].replace("_", " "),
                      _pct(d["observed"]), _pct(d["contract"]), f"{d['events']:,}",
                      _age(report["generated_at"] - d["since"]))
        console.print(t)

    health = report.get("health")
    if health is not None:
        if health["healthy"]:
            console.print("[green]healthy[/green]")
        for problem in health["problems"]:
            console.print(f"[red]UNHEALTHY[/red]: {escape(problem)}")
