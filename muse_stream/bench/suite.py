"""The bench's runs in order, each failure recorded rather than raised: throughput (the ceiling, the runtime with
telemetry on and off in interleaved A/B pairs, W workers, a pinned pair, at-least-once), latency at the offered
rate beside its copy-only floor, and the in-process stage breakdown."""

from __future__ import annotations

import logging
from collections.abc import Callable

from muse_stream.bench.pinning import kafka_side_pinned, why_not_pin
from muse_stream.bench.runs import BenchContext, latency_run, throughput_run
from muse_stream.errors import MuseError

logger = logging.getLogger(__name__)


def throughput_plan(skip: set[str], workers: int, ab_pairs: int) -> list[tuple[str, str, int, str, bool]]:
    """(name, kind, workers, guarantee, telemetry). Telemetry on and off alternate A B B A ..., so a drift of
    the shared machine over the block falls on both sides alike."""
    plan = []
    if "ceiling" not in skip:
        plan.append(("ceiling", "ceiling", 1, "exactly-once", True))
    if "runtime" not in skip:
        sides = [("runtime-eos-1", True), ("runtime-eos-1-no-telemetry", False)]
        pairs = ab_pairs if "no-telemetry" not in skip else 1
        for k in range(pairs):
            order = sides if k % 2 == 0 else sides[::-1]
            for name, tel in order:
                if not tel and "no-telemetry" in skip:
                    continue
                plan.append((name if k == 0 else f"{name}.ab{k + 1}", "runtime", 1, "exactly-once", tel))
    if "runtime-w" not in skip and workers > 1:
        if "ceiling" not in skip:
            plan.append((f"ceiling-{workers}", "ceiling", workers, "exactly-once", True))
        plan.append((f"runtime-eos-{workers}", "runtime", workers, "exactly-once", True))
    if "runtime-alo" not in skip:
        plan.append(("runtime-alo-1", "runtime", 1, "at-least-once", True))
    return plan


def run_throughput(ctx: BenchContext, report: dict, groups: list[str], say: Callable[[str], None], *,
                   skip: set[str], workers: int, ab_pairs: int, timeout: float) -> None:
    for name, kind, w, guarantee, tel in throughput_plan(skip, workers, ab_pairs):
        report["throughput"].append(_one(ctx, report, groups, say, name, kind, w, guarantee, tel, timeout, None))
    if "pinned" in skip:
        return
    why = why_not_pin(ctx.broker_pid)
    if why:
        report["pinned"] = {"skipped": why}
        say(f"pinned runs skipped: {why}")
        return
    with kafka_side_pinned(ctx.broker_pid) as cores:
        report["pinned"] = {"worker_cores": sorted(cores), "note": "broker and bench on one core, workers on the rest"}
        for name, kind in (("ceiling-pinned", "ceiling"), ("runtime-eos-1-pinned", "runtime")):
            report["throughput"].append(_one(ctx, report, groups, say, name, kind, 1, "exactly-once", True, timeout,
                                             cores))


def _one(ctx, report, groups, say, name, kind, w, guarantee, tel, timeout, cpus) -> dict:
    say(f"run {name}: {kind}, {w} worker(s), {guarantee}{'' if tel else ', telemetry off'}"
        f"{f', pinned to cores {sorted(cpus)}' if cpus else ''}")
    groups.append(f"{ctx.prefix}{name}")
    try:
        r = throughput_run(ctx, name, kind=kind, workers=w, guarantee=guarantee, timeout=timeout, telemetry=tel,
                           cpus=cpus)
        say(f"  {r['events_per_s']:,} events/s; check: {'ok' if r['check']['exactly_once'] else r['check']}")
    except MuseError as e:
        r = {"run": name, "kind": kind, "workers": w, "guarantee": guarantee, "telemetry": tel, "error": str(e)}
        report["errors"].append(f"{name}: {e}")
        say(f"  failed: {e}")
    if cpus:
        r["pinned_cores"] = sorted(cpus)
    return r


def run_latency(ctx: BenchContext, report: dict, groups: list[str], say: Callable[[str], None], *, skip: set[str],
                rate: float, seconds: float, warmup: float, swap_version: int) -> None:
    """Each guarantee's floor (copy-only, the same loop, clients and rate) right before its runtime run."""
    plan = []
    for guarantee, tag in (("exactly-once", "eos"), ("at-least-once", "alo")):
        if "floor" not in skip:
            plan.append((f"floor-{tag}", guarantee, None, "ceiling"))
        if "latency" not in skip:
            plan.append((f"latency-{tag}", guarantee, None, "runtime"))
    if "swap" not in skip:
        plan.append(("swap", "exactly-once", max(warmup + 1.0, seconds * 0.4), "runtime"))
    plan = [(*step, None) for step in plan]
    if "latency" not in skip and "pinned" not in skip:
        why = why_not_pin(ctx.broker_pid)
        if why:
            say(f"pinned latency runs skipped: {why}")
        else:
            # The same, with the worker on a core of its own: what the worker costs when it does not wait for a
            # core the broker, the load generator and the reader share with it.
            plan += [(f"latency-{tag}-pinned", guarantee, None, "runtime", "pinned")
                     for guarantee, tag in (("exactly-once", "eos"), ("at-least-once", "alo"))]
    for name, guarantee, swap_at, kind, pinned in plan:
        # The swap run goes on 3 s past the swap: the activate call alone can take most of a second on a busy
        # machine, and a run that ends first sees no decision by the new version.
        run_s = seconds if swap_at is None else max(seconds, swap_at + 3.0)
        say(f"run {name}: {'copy only' if kind == 'ceiling' else 'scoring'}, {guarantee}, {rate:g} events/s offered "
            f"for {run_s:g} s{', worker pinned to its own core' if pinned else ''}")
        groups.append(f"{ctx.prefix}{name}")
        try:
            if pinned:
                with kafka_side_pinned(ctx.broker_pid) as cores:
                    r = latency_run(ctx, name, guarantee=guarantee, rate=rate, seconds=run_s, warmup=warmup,
                                    kind=kind, cpus=cores)
                r["pinned_cores"] = sorted(cores)
            else:
                r = latency_run(ctx, name, guarantee=guarantee, rate=rate, seconds=run_s, warmup=warmup,
                                swap_at=swap_at, swap_version=swap_version, kind=kind)
            iw = (r.get("loop") or {}).get("in_worker") or {}
            say(f"  p99 {r['latency_ms']['p99']} ms, in-worker p99 {iw.get('p99_us')} us; "
                f"check: {'ok' if r['check']['exactly_once'] else r['check']}")
            if r.get("achieved_events_per_s", rate) < 0.95 * rate:
                say(f"  the load generator sent {r['achieved_events_per_s']:,} events/s, not the {rate:g} offered: "
                    "these figures are at that rate")
        except MuseError as e:
            r = {"run": name, "kind": kind, "guarantee": guarantee, "error": str(e)}
            report["errors"].append(f"{name}: {e}")
            say(f"  failed: {e}")
        if name == "swap":
            report["swap"] = r
        else:
            report["latency"].append(r)


def run_stages(report: dict, say: Callable[[str], None], *, skip: set[str], trees: int, events: int) -> None:
    if "stages" in skip:
        return
    from muse_stream.bench.stages import measure

    say(f"in process: the scorer's stages on {events:,} events per batch size")
    try:
        report["stages"] = measure(trees=trees, events=events)
    except Exception as e:  # a measurement that fails is reported; the runs stand
        report["errors"].append(f"stages: {type(e).__name__}: {e}")
        logger.exception("stage measurement failed")
