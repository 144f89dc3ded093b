"""What the workers' own counters say about a run: where the loop's time went per event, the in-worker latency,
and each worker's share (the counters come back from each worker process when it stops; see procs.py)."""

from __future__ import annotations

from muse_stream.kafka.loop import InWorkerLatency

# The loop's step timers (LoopStats) and the scoring job's (WorkerStats), in the order a batch meets them.
STEPS = ("consume", "score", "produce", "telemetry", "process", "commit")


def bins_percentile(counts: list[int], q: float) -> float | None:
    """The q-th percentile (nearest rank) of an InWorkerLatency histogram, in microseconds: the upper edge of
    the bin holding it, so the figure errs high by at most one bin (12%), never low."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, -(-q * total // 100))
    seen = 0
    edges = InWorkerLatency.EDGES_NS
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank:
            return round(edges[min(i, len(edges) - 1)] / 1000.0, 1) if i < len(edges) else float("inf")
    return None


def in_worker_summary(counts: list[int]) -> dict:
    return {"events": sum(counts), **{f"p{q:g}_us": bins_percentile(counts, q) for q in (50.0, 99.0, 99.9)}}


def loop_figures(counters: list[dict]) -> dict:
    """Summed over a run's workers: microseconds of wall time per event in each step of the loop, the
    in-worker latency percentiles, and the commit figures."""
    if not counters:
        return {}
    total = {k: sum(c.get(k, 0) for c in counters) for k in counters[0] if k != "in_worker_counts"}
    events = total.get("events_in", 0)
    out: dict = {"us_per_event": {}}
    if events:
        for step in STEPS:
            ns = total.get(f"{step}_ns")
            if ns is not None:
                out["us_per_event"][step] = round(ns / 1000.0 / events, 3)
    bins = [sum(col) for col in zip(*(c["in_worker_counts"] for c in counters if c.get("in_worker_counts")))]
    out["in_worker"] = in_worker_summary(bins) if bins else None
    commits = total.get("commits", 0)
    out["batches"] = total.get("batches")
    out["events_per_batch"] = round(events / total["batches"], 1) if total.get("batches") else None
    out["commits"] = commits
    out["early_commits"] = total.get("early_commits")
    out["events_per_commit"] = round(events / commits, 1) if commits else None
    out["commit_ms_mean"] = round(total["commit_ns"] / 1e6 / commits, 2) if commits and "commit_ns" in total else None
    return out


def per_worker(counters: list[dict], cpu_s: list[float]) -> list[dict]:
    """Each worker's share of the run: events, batches, CPU seconds per 1,000 events, busy share of its wall time
    (process + commit over all steps)."""
    rows = []
    for c, cpu in zip(counters, cpu_s):
        n = c.get("events_in", 0)
        steps = sum(c.get(f"{s}_ns", 0) for s in ("consume", "process", "commit"))
        rows.append({"events": n, "batches": c.get("batches"), "commits": c.get("commits"),
                     "cpu_s_per_1k_events": round(cpu * 1000.0 / n, 4) if n else None,
                     "busy_share": round((c.get("process_ns", 0) + c.get("commit_ns", 0)) / steps, 3) if steps else None})
    return rows
