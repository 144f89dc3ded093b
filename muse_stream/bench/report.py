"""The bench report: the machine, versions and parameters, every figure, the targets; a table and a JSON file."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import orjson

SCHEMA = "muse-stream-bench/1"


def machine_info() -> dict:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except (OSError, ValueError):
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"cores": os.cpu_count(), "usable_cores": affinity, "cpu_model": model or platform.processor() or None,
            "memory_mb": round(mem_kb / 1024) if mem_kb else None, "kernel": platform.release(),
            "platform": platform.platform(), "python": sys.version.split()[0], "hostname": platform.node()}


def versions_info(broker_version: str | None = None) -> dict:
    from importlib import metadata

    import confluent_kafka

    out = {"kafka_broker": broker_version, "librdkafka": confluent_kafka.libversion()[0]}
    for dist in ("muse-stream", "confluent-kafka", "xgboost-cpu", "xgboost", "numpy", "orjson", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# ---- figures derived from the runs ---------------------------------------------------------------------

def add_ratios(throughput: list[dict]) -> None:
    """runtime / ceiling, against the ceiling run with the same number of workers (else the 1-worker one)."""
    ceilings = {r["workers"]: r.get("events_per_s") for r in throughput if r.get("kind") == "ceiling"}
    for r in throughput:
        if r.get("kind") == "ceiling" or not r.get("events_per_s"):
            continue
        c = ceilings.get(r["workers"]) or ceilings.get(1)
        r["ratio_to_ceiling"] = round(r["events_per_s"] / c, 3) if c else None


def _find(runs: list[dict], **match) -> dict | None:
    for r in runs:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def evaluate_targets(report: dict) -> list[dict]:
    """The issue's targets, each with its value and whether it is met (None: not measured)."""
    p = report["parameters"]
    tp, lat, swap = report.get("throughput", []), report.get("latency", []), report.get("swap") or {}
    eos1 = _find(tp, run="runtime-eos-1") or _find(tp, kind="runtime", workers=1, guarantee="exactly-once") or {}
    alo = _find(lat, guarantee="at-least-once") or {}
    eosl = _find(lat, guarantee="exactly-once") or {}
    sw = swap.get("swap") or {}
    eos_p99_limit = p["commit_interval_ms"] + 50
    rss = [r.get("peak_rss_mb_max") for r in [*tp, *lat, swap] if r.get("kind") != "ceiling"]
    rss = [x for x in rss if x is not None]
    checks = [r.get("check", {}).get("exactly_once") for r in [*tp, *lat, swap] if r]

    def t(name, value, limit, ok):
        return {"target": name, "value": value, "limit": limit, "met": ok}

    v = eos1.get("events_per_s")
    out = [t("exactly-once, 1 worker: events/s", v, ">= 50000", None if v is None else v >= 50_000)]
    v = eos1.get("ratio_to_ceiling")
    out.append(t("exactly-once, 1 worker / ceiling", v, ">= 0.6", None if v is None else v >= 0.6))
    v = (alo.get("latency_ms") or {}).get("p99")
    out.append(t(f"at-least-once p99 ms at {p['offered_rate']:g} ev/s", v, "<= 10", None if v is None else v <= 10))
    v = (eosl.get("latency_ms") or {}).get("p99")
    out.append(t(f"exactly-once p99 ms at {p['offered_rate']:g} ev/s", v, f"<= {eos_p99_limit} (commit interval + 50)",
                 None if v is None else v <= eos_p99_limit))
    v = sw.get("activation_to_first_new_decision_ms")
    chk = swap.get("check") or {}
    swap_ok = None if v is None else (v <= 1000 and chk.get("exactly_once") is True
                                      and sw.get("older_version_after_newer") == 0)
    out.append(t("swap: activation -> first new decision ms, nothing lost or duplicated", v, "<= 1000", swap_ok))
    off = _find(tp, run="runtime-eos-1-no-telemetry") or {}
    on_rate, off_rate = eos1.get("events_per_s"), off.get("events_per_s")
    v = round(1 - on_rate / off_rate, 3) if on_rate and off_rate else None
    out.append(t("telemetry cost: 1 - events/s with it / without it (exactly-once, 1 worker)", v, "<= 0.05",
                 None if v is None else v <= 0.05))
    v = max(rss) if rss else None
    out.append(t("peak RSS per worker MB (two intents loaded)", v, "<= 300", None if v is None else v <= 300))
    out.append(t("every run: each input exactly one output", all(checks) if checks else None, "true",
                 bool(checks) and all(c is True for c in checks)))
    return out


# ---- terminal table ------------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list]) -> str:
    """A plain aligned table; numbers right-aligned, None shown as '-'."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and rows
               for i in range(len(headers))]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if v < 10 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _pair(summary: dict) -> str | None:
    if summary.get("p50") is None:
        return None
    return f"{summary['p50']:.0f} / {summary['p99']:.0f}"


def _check_cell(r: dict) -> str:
    c = r.get("check")
    if not c:
        return r.get("error", "-")[:60] if r.get("error") else "-"
    if c.get("exactly_once"):
        return f"ok {c['outputs']:,}/{c['inputs']:,}"
    return f"FAIL missing {c['missing']} dup {c['duplicated']} foreign {c['foreign']}"


def format_report(report: dict) -> str:
    p, m = report["parameters"], report["machine"]
    parts = [
        (f"muse-stream bench {report['run_id']}  ({m['cores']} cores, {m['cpu_model']}; "
        f"Kafka {report['versions'].get('kafka_broker') or '?'} at {p['bootstrap']})"),
        (f"events {p['events']:,} x {report.get('load', {}).get('mean_event_bytes', '?')} B in {p['partitions']} "
        f"partitions; batch {p['batch_max_events']} events / {p['batch_max_wait_ms']} ms; commit every "
        f"{p['commit_interval_ms']} ms; models: {_models(p['models'])}"),
        "",
    ]
    tp = report.get("throughput", [])
    if tp:
        rows = [[r["run"], r["workers"], r["guarantee"], r.get("events_per_s"), r.get("ratio_to_ceiling"),
                 r.get("cpu_s_per_1k_events"), r.get("worker_cores_busy"), r.get("peak_rss_mb_max"),
                 r.get("broker_cpu_s_per_1k_events"), r.get("machine_cores_busy"), _check_cell(r)] for r in tp]
        parts += [("Throughput (pre-produced input; rate over the steady window: every worker assigned -> "
                  "last output visible to read_committed)"),
                  table(["run", "workers", "guarantee", "events/s", "x ceiling", "CPU s/1k ev", "worker cores",
                         "peak RSS MB", "broker CPU s/1k", "machine cores", "exactly-once check"], rows), ""]
    lat = [*report.get("latency", []), *([report["swap"]] if report.get("swap") else [])]
    if lat:
        rows = []
        for r in lat:
            lm = r.get("latency_ms") or {}
            pick, pub = r.get("produce_to_decided_ms") or {}, r.get("decided_to_visible_ms") or {}
            rows.append([r["run"], r["guarantee"], r.get("offered_events_per_s"), r.get("achieved_events_per_s"),
                         lm.get("p50"), lm.get("p99"), lm.get("p99.9"), lm.get("max"), _pair(pick), _pair(pub),
                         r.get("peak_rss_mb_max"), _check_cell(r)])
        parts += [f"Latency (produce -> visible to a read_committed consumer; first {p['warmup_s']:g} s excluded)",
                  table(["run", "guarantee", "offered/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
                         "to decided p50/p99", "decided to visible p50/p99", "peak RSS MB", "exactly-once check"],
                        rows), ""]
    sw = (report.get("swap") or {}).get("swap")
    if sw:
        if sw.get("error"):
            parts += [f"Swap: {sw['error']}", ""]
        else:
            around = sw.get("latency_ms_around_swap") or {}
            parts += [(f"Swap to {sw['model']} at the offered rate: activation record -> first decision by it "
                      f"{sw['activation_to_first_new_decision_ms']} ms (visible downstream after "
                      f"{sw['activation_to_first_new_decision_visible_ms']} ms); older version after newer: "
                      f"{sw['older_version_after_newer']}; latency around the swap p99 {around.get('p99')} ms, "
                      f"max {around.get('max')} ms"), ""]
    tg = report.get("targets", [])
    if tg:
        parts += ["Targets", table(["target", "value", "limit", "met"],
                                   [[t["target"], t["value"], t["limit"], t["met"]] for t in tg]), ""]
    for e in report.get("errors", []):
        parts.append(f"ERROR: {e}")
    return "\n".join(parts).rstrip() + "\n"


def _models(models: list[dict]) -> str:
    return ", ".join("{} ({} trees, depth {})".format(m["model"], m["trees"], m["depth"]) for m in models)


def write_json(report: dict, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return p
