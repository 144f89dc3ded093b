"""The bench report: the machine, versions and parameters, every figure, the targets; a table and a JSON file."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import orjson

from muse_stream.bench.report_sections import (
    latency_floor_lines,
    scaling_section,
    stage_section,
    telemetry_section,
)
from muse_stream.bench.report_table import table
from muse_stream.errors import ConfigError

SCHEMA = "muse-stream-bench/1"
TARGET_RATE = 5000.0  # events/s offered, at which the latency targets are set (the default --rate)


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
    """runtime / ceiling, against the ceiling run with the same number of workers and pinning (else the unpinned
    1-worker one)."""
    ceilings = {(r["workers"], bool(r.get("pinned_cores"))): r.get("events_per_s") for r in throughput
                if r.get("kind") == "ceiling"}
    for r in throughput:
        if r.get("kind") == "ceiling" or not r.get("events_per_s"):
            continue
        c = ceilings.get((r["workers"], bool(r.get("pinned_cores")))) or ceilings.get((1, False))
        r["ratio_to_ceiling"] = round(r["events_per_s"] / c, 3) if c else None


def _find(runs: list[dict], **match) -> dict | None:
    for r in runs:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def telemetry_ab(throughput: list[dict]) -> dict | None:
    """Telemetry's cost from the interleaved 1-worker exactly-once runs, with (A) and without (B) it:
    1 - A/B of the median events/s, and of the median worker CPU per event (the steadier figure on a shared
    machine: it does not move with what else gets the cores), and the share of the loop's wall time spent in
    telemetry calls in the A runs (timed inside the worker)."""
    a = [r for r in throughput if r.get("run", "").startswith("runtime-eos-1") and r.get("kind") == "runtime"
         and r.get("workers") == 1 and r.get("telemetry") and "pinned" not in r["run"] and r.get("events_per_s")]
    b = [r for r in throughput if r.get("run", "").startswith("runtime-eos-1-no-telemetry") and r.get("events_per_s")]
    if not a:
        return None
    out = {"runs_with": [r["run"] for r in a], "runs_without": [r["run"] for r in b],
           "events_per_s_with": _median([r["events_per_s"] for r in a]),
           "events_per_s_without": _median([r["events_per_s"] for r in b]),
           "cpu_s_per_1k_with": _median([r.get("cpu_s_per_1k_events") for r in a]),
           "cpu_s_per_1k_without": _median([r.get("cpu_s_per_1k_events") for r in b])}
    rw, ro, cw, co = (out["events_per_s_with"], out["events_per_s_without"], out["cpu_s_per_1k_with"],
                      out["cpu_s_per_1k_without"])
    out["cost_by_rate"] = round(1 - rw / ro, 3) if rw and ro else None
    out["cost_by_cpu"] = round(1 - co / cw, 3) if cw and co else None
    shares = []
    for r in a:
        us = (r.get("loop") or {}).get("us_per_event") or {}
        busy = sum(us.get(k, 0.0) for k in ("consume", "process", "commit"))
        if busy and "telemetry" in us:
            shares.append(us["telemetry"] / busy)
    out["timed_share_of_loop"] = round(_median(shares), 4) if shares else None
    return out


def evaluate_targets(report: dict) -> list[dict]:
    """The issue's targets, each with its value and whether it is met (None: not measured)."""
    p = report["parameters"]
    tp, lat, swap = report.get("throughput", []), report.get("latency", []), report.get("swap") or {}
    # The targets are the shared machine's runs: a pinned run is reported beside them, never taken for one.
    tp_shared, lat_shared = ([r for r in runs if not r.get("pinned_cores")] for runs in (tp, lat))
    eos1 = _find(tp_shared, run="runtime-eos-1") or _find(tp_shared, kind="runtime", workers=1,
                                                          guarantee="exactly-once") or {}
    alo = _find(lat_shared, guarantee="at-least-once", kind="runtime") or {}
    eosl = _find(lat_shared, guarantee="exactly-once", kind="runtime") or {}
    sw = swap.get("swap") or {}
    rss = [r.get("peak_rss_mb_max") for r in [*tp, *lat, swap] if r.get("kind") != "ceiling"]
    rss = [x for x in rss if x is not None]
    state_runs = (report.get("state") or {}).get("runs") or []
    checks = [r.get("check", {}).get("exactly_once") for r in [*tp, *lat, swap, *state_runs] if r]
    ab = report.get("telemetry_ab") or telemetry_ab(tp) or {}

    def t(name, value, limit, ok):
        return {"target": name, "value": value, "limit": limit, "met": ok}

    v = eos1.get("events_per_s")
    out = [t("exactly-once, 1 worker: events/s", v, ">= 50000", None if v is None else v >= 50_000)]
    v = eos1.get("ratio_to_ceiling")
    out.append(t("exactly-once, 1 worker / ceiling", v, ">= 0.5", None if v is None else v >= 0.5))
    # The latency targets are set at 5,000 events/s: another --rate is reported, never judged.
    rate = p["offered_rate"]
    at = f"at {rate:g} ev/s" + ("" if rate == TARGET_RATE else f" (targets are at {TARGET_RATE:g})")

    def judged(v, limit):
        return None if v is None or rate != TARGET_RATE else v <= limit

    v = (alo.get("latency_ms") or {}).get("p99")
    out.append(t(f"at-least-once p99 ms {at}", v, "<= 10", judged(v, 10)))
    v = (eosl.get("latency_ms") or {}).get("p99")
    out.append(t(f"exactly-once p99 ms {at}", v, "<= 50", judged(v, 50)))
    iw = [((r.get("loop") or {}).get("in_worker") or {}).get("p99_us") for r in (alo, eosl)]
    iw = [x for x in iw if x is not None]
    v = max(iw) if iw else None
    out.append(t(f"in-worker consume -> produce p99 us {at}", v, "<= 1000", judged(v, 1000)))
    v = sw.get("activation_to_first_new_decision_ms")
    chk = swap.get("check") or {}
    swap_ok = None if v is None else (v <= 1000 and chk.get("exactly_once") is True
                                      and sw.get("older_version_after_newer") == 0)
    out.append(t("swap: activation -> first new decision ms, nothing lost or duplicated", v, "<= 1000", swap_ok))
    v = ab.get("cost_by_cpu")
    out.append(t("telemetry cost: 1 - worker CPU per event without / with it (exactly-once, 1 worker, A/B medians)",
                 v, "<= 0.05", None if v is None else v <= 0.05))
    v = max(rss) if rss else None
    out.append(t("peak RSS per worker MB (two intents loaded)", v, "<= 300", None if v is None else v <= 300))
    out.append(t("every run: each input exactly one output", all(checks) if checks else None, "true",
                 all(c is True for c in checks) if checks else None))
    return out


# ---- terminal table ------------------------------------------------------------------------------------

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
            loop = r.get("loop") or {}
            iw = loop.get("in_worker") or {}
            rows.append([r["run"], r["guarantee"], r.get("offered_events_per_s"), r.get("achieved_events_per_s"),
                         lm.get("p50"), lm.get("p99"), lm.get("p99.9"), lm.get("max"), _pair(pick), _pair(pub),
                         iw.get("p50_us"), iw.get("p99_us"), loop.get("events_per_batch"), loop.get("events_per_commit"),
                         _check_cell(r)])
        parts += [(f"Latency (from the produce call to visible to a read_committed consumer; first {p['warmup_s']:g} s "
                   "excluded; floor-*: the same with scoring replaced by a copy). In-worker: per event after the same "
                   "warm-up, its batch's consume return -> the batch's last produce call"),
                  table(["run", "guarantee", "offered/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
                         "to decided p50/p99", "decided to visible p50/p99", "in-worker p50 us", "in-worker p99 us",
                         "events/batch", "events/commit", "exactly-once check"], rows), ""]
        parts += latency_floor_lines(report)
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
    parts += stage_section(report)
    parts += telemetry_section(report)
    parts += scaling_section(report)
    tg = report.get("targets", [])
    if tg:
        parts += ["Targets", table(["target", "value", "limit", "met"],
                                   [[t["target"], t["value"], t["limit"], t["met"]] for t in tg]), ""]
    for e in report.get("errors", []):
        parts.append(f"ERROR: {e}")
    return "\n".join(parts).rstrip() + "\n"


def _models(models: list[dict]) -> str:
    return ", ".join("{} ({} trees, depth {})".format(m["model"], m["trees"], m["depth"]) for m in models)


def check_writable(path: str | os.PathLike) -> None:
    """ConfigError unless the report can be written there (its folder made if missing)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        existed = p.exists()
        with open(p, "ab"):
            pass
        if not existed:
            p.unlink()
    except OSError as e:
        raise ConfigError(f"--json: cannot write {path}: {e.strerror or e}") from None


def write_json(report: dict, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return p
