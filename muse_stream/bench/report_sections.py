"""The bench report's sections beyond the throughput and latency tables: the stage breakdown, telemetry's
cost, multi-worker scaling, and what the latency runs add over their copy-only floor."""

from __future__ import annotations

from muse_stream.bench.report_table import table

_STAGE_NAMES = {"parse_validate": "parse and validate (contract, routing)", "feature_matrix": "feature matrix",
                "predict": "predict (booster)", "transform": "transform", "bands": "bands", "reasons": "reason codes",
                "format": "format decisions", "other": "other (grouping, refusals, untimed)",
                "telemetry": "telemetry (after produce)"}
_LOOP_NAMES = {"consume": "consume (next_batch)", "score": "score (all of the scorer)", "produce": "produce",
               "telemetry": "telemetry", "commit": "commit"}


def _find(runs: list[dict], name: str) -> dict:
    return next((r for r in runs if r.get("run") == name), {})


def stage_section(report: dict) -> list[str]:
    st = report.get("stages") or {}
    by = st.get("by_batch_size") or {}
    parts: list[str] = []
    if by:
        sizes = list(by)
        rows = [[_STAGE_NAMES[k], *[by[s]["us_per_event"].get(k) for s in sizes]] for k in _STAGE_NAMES
                if any(by[s]["us_per_event"].get(k) is not None for s in sizes)]
        rows.append(["scorer total", *[by[s]["scorer_us_per_event"] for s in sizes]])
        rows.append(["scorer per batch (us)", *[by[s]["scorer_us_per_batch"] for s in sizes]])
        parts += [(f"Stage breakdown in process (the real scorer on the bench's events, {st.get('trees')} trees, "
                   f"{st.get('scorer_path') or 'its'} path; us per event)"), table(["stage", *[f"batches of {s}" for s in sizes]], rows), ""]
    runs = [r for r in (_find(report.get("throughput", []), "runtime-eos-1"),
                        _find(report.get("latency", []), "latency-eos"),
                        _find(report.get("latency", []), "floor-eos")) if (r.get("loop") or {}).get("us_per_event")]
    if runs:
        rows = [[_LOOP_NAMES[k], *[r["loop"]["us_per_event"].get(k) for r in runs]] for k in _LOOP_NAMES]
        rows.append(["events per batch", *[r["loop"].get("events_per_batch") for r in runs]])
        rows.append(["events per commit", *[r["loop"].get("events_per_commit") for r in runs]])
        rows.append(["commit ms (mean)", *[r["loop"].get("commit_ms_mean") for r in runs]])
        parts += [("The loop's own timers in the workers (wall us per event; consume includes waiting for input "
                  "when it is idle)"), table(["step", *[r["run"] for r in runs]], rows), ""]
    return parts


def latency_floor_lines(report: dict) -> list[str]:
    lat = report.get("latency", [])
    lines = []
    for tag, label in (("eos", "exactly-once"), ("alo", "at-least-once")):
        run, floor = _find(lat, f"latency-{tag}"), _find(lat, f"floor-{tag}")
        a, b = (run.get("latency_ms") or {}), (floor.get("latency_ms") or {})
        if a.get("p99") is None or b.get("p99") is None:
            continue
        iw = (run.get("loop") or {}).get("in_worker") or {}
        iwf = (floor.get("loop") or {}).get("in_worker") or {}
        lines.append(f"{label}: p50 {a['p50']} / p99 {a['p99']} ms against the copy-only floor's {b['p50']} / "
                     f"{b['p99']} ms: muse-stream adds {round(a['p50'] - b['p50'], 2)} / {round(a['p99'] - b['p99'], 2)}"
                     f" ms; in the worker, consume -> produce p50 {iw.get('p50_us')} / p99 {iw.get('p99_us')} us "
                     f"(copy: {iwf.get('p50_us')} / {iwf.get('p99_us')} us)")
    if lines:
        lines = ["Against the floor (same loop, clients, rate and reader; scoring replaced by a copy)", *lines, ""]
    pinned = [r for r in lat if r.get("pinned_cores") and (r.get("latency_ms") or {}).get("p99") is not None]
    if pinned:
        lines.append("The worker on a core of its own (the broker, the load generator and the reader on the other)")
        for r in pinned:
            a, iw = r["latency_ms"], (r.get("loop") or {}).get("in_worker") or {}
            lines.append(f"{r['guarantee']}: p50 {a['p50']} / p99 {a['p99']} ms; in the worker, consume -> produce "
                         f"p50 {iw.get('p50_us')} / p99 {iw.get('p99_us')} us")
        lines.append("")
    return lines


def telemetry_section(report: dict) -> list[str]:
    ab = report.get("telemetry_ab")
    if not ab:
        return []
    st = ((report.get("stages") or {}).get("by_batch_size") or {})
    inproc = ", ".join(f"{v.get('telemetry_share_of_scorer_pct')}% at batches of {k}" for k, v in st.items())
    if ab["runs_without"]:
        costs = [(f"  worker CPU per 1k events: {ab['cpu_s_per_1k_with']} s with, {ab['cpu_s_per_1k_without']} s "
                  f"without: cost {ab['cost_by_cpu']}"),
                 (f"  events/s (medians): {ab['events_per_s_with']} with, {ab['events_per_s_without']} without: "
                  f"cost {ab['cost_by_rate']} (moves with whatever else has the cores)")]
    else:
        costs = ["  no run without telemetry (skipped): its cost by CPU and events/s is not measured"]
    return [("Telemetry cost (exactly-once, 1 worker; interleaved runs with: "
            f"{', '.join(ab['runs_with'])}; without: {', '.join(ab['runs_without']) or '-'})"),
            *costs,
            f"  timed in the worker: {ab['timed_share_of_loop']} of the loop's wall time"
            + (f"; in process: {inproc} of the scorer's time" if inproc else ""), ""]


def scaling_section(report: dict) -> list[str]:
    tp = [r for r in report.get("throughput", []) if r.get("guarantee") == "exactly-once" and r.get("telemetry", True)
          and ".ab" not in r.get("run", "")]
    if len({r.get("workers") for r in tp}) < 2 and not any("pinned" in r.get("run", "") for r in tp):
        return []
    rows = []
    for r in tp:
        pw = r.get("per_worker") or []
        rows.append([r["run"], r.get("workers"), r.get("events_per_s"), r.get("ratio_to_ceiling"),
                     " / ".join(f"{w['events']:,}" for w in pw) or None,
                     " / ".join(str(w["cpu_s_per_1k_events"]) for w in pw) or None,
                     " / ".join(str(w["busy_share"]) for w in pw) or None,
                     r.get("worker_cores_busy"), r.get("broker_cores_busy"), r.get("machine_cores_busy")])
    m = report.get("machine") or {}
    pin = report.get("pinned") or {}
    note = (f"{m.get('usable_cores') or m.get('cores')} usable cores, shared by the broker, the workers and the "
            "bench's own producer and readers: a second worker adds a process, not a core.")
    if pin.get("worker_cores"):
        note += f" Pinned runs: the broker and the bench on one core, the worker on cores {pin['worker_cores']}."
    elif pin.get("skipped"):
        note += f" No pinned run: {pin['skipped']}."
    return ["Scaling (exactly-once; per worker: events handled, CPU s per 1k events, busy share of its loop)",
            table(["run", "workers", "events/s", "x ceiling", "events per worker", "CPU s/1k per worker",
                   "busy per worker", "worker cores", "broker cores", "machine cores"], rows), note, ""]
