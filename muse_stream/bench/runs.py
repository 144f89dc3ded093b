"""One bench run each: the ceiling, the runtime (exactly-once, 1 and W workers; at-least-once), latency at an
offered rate, and a model swap under load. Every run has its own consumer group, transactional ids and output
topics, every wait is bounded, and every run stops its workers before it returns."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from muse_stream.bench.figures import loop_figures, per_worker
from muse_stream.bench.load import SWAP_INTENT, EventFactory
from muse_stream.bench.procs import BenchError, WorkerGroup, machine_busy_ticks, proc_cpu_seconds
from muse_stream.bench.readers import ArrivalReader, LatencyReader, verify
from muse_stream.bench.stats import latency_summary, per_thousand, versions_never_go_back
from muse_stream.config import Settings
from muse_stream.errors import KafkaOpError, MuseError
from muse_stream.kafka.clients import consumer_config, producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.topics import TopicSpec, create_topics

logger = logging.getLogger(__name__)


@dataclass
class BenchContext:
    base: Settings  # bench tenants, intents and models/tenants topics; kafka, batch and runtime settings
    prefix: str  # every topic and group of this bench starts with it
    input_topic: str
    events: int
    partitions: int
    factory: EventFactory
    broker_pid: int | None = None
    verbose: bool = False
    topics: list[str] = field(default_factory=list)  # created, to delete at the end

    def settings_for(self, run: str, *, guarantee: str, input_topic: str | None = None,
                     telemetry: bool = True) -> Settings:
        p = f"{self.prefix}{run}"
        return self.base.with_overrides(
            topics={"events": input_topic or self.input_topic, "decisions_prefix": f"{p}.decisions.",
                    "deadletter": f"{p}.deadletter", "shadow_prefix": f"{p}.shadow."},
            # The swap run measures how fast workers take up an activation; the lead that keeps replays exact
            # (runtime.change_lead_ms) would only add its own length to that figure.
            runtime={"group_id": p, "transactional_id_prefix": p, "processing_guarantee": guarantee,
                     "change_lead_ms": 0},
            telemetry={"enabled": telemetry},
        )

    def create(self, settings: Settings, specs: list[TopicSpec]) -> None:
        create_topics(settings, specs, replication_factor=settings.topics.replication_factor)
        self.topics += [s.name for s in specs]


def decision_topics(settings: Settings) -> list[str]:
    return [settings.output_topic(t) for t in settings.tenants]


def _outputs(ctx: BenchContext, s: Settings) -> list[str]:
    outs = decision_topics(s)
    n = s.topics.decisions_partitions
    ctx.create(s, [TopicSpec(t, n) for t in [*outs, s.topics.deadletter]])
    return outs


class _Sampler:
    """CPU of the workers, the broker and the whole machine at the window's ends."""

    def __init__(self, group: WorkerGroup, broker_pid: int | None) -> None:
        self.group, self.broker_pid = group, broker_pid
        self.at: dict[str, tuple] = {}

    def __call__(self, tag: str) -> None:
        broker = proc_cpu_seconds(self.broker_pid) if self.broker_pid else None
        self.at[tag] = (time.time(), self.group.cpu_seconds(), broker, machine_busy_ticks())

    def window(self, events: int, start: str) -> dict:
        if start not in self.at or "last" not in self.at:
            return {}
        t0, w0, b0, m0 = self.at[start]
        t1, w1, b1, m1 = self.at["last"]
        dt = t1 - t0
        worker_cpu = sum((w1.get(k) or 0.0) - (w0.get(k) or 0.0) for k in w1)
        out = {"worker_cpu_s": round(worker_cpu, 2),
               "cpu_s_per_1k_events": _r(per_thousand(worker_cpu, events), 4),
               "worker_cores_busy": _r(worker_cpu / dt if dt > 0 else None, 2)}
        if b0 is not None and b1 is not None:
            out["broker_cpu_s_per_1k_events"] = _r(per_thousand(b1 - b0, events), 4)
            out["broker_cores_busy"] = _r((b1 - b0) / dt if dt > 0 else None, 2)
        if m0 and m1 and m1[1] > m0[1]:
            out["machine_cores_busy"] = round((m1[0] - m0[0]) / (m1[1] - m0[1]) * (os.cpu_count() or 1), 2)
        return out


def _r(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _worker_figures(group: WorkerGroup) -> dict:
    done = [group.done[k] for k in sorted(group.done)]
    rss = [d["peak_rss_kb"] for d in done if d.get("peak_rss_kb")]
    counters = [d["counters"] for d in done]
    return {"peak_rss_mb_per_worker": [round(k / 1024, 1) for k in rss],
            "peak_rss_mb_max": round(max(rss) / 1024, 1) if rss else None,
            "worker_lifetime_cpu_s": [round(d["cpu_s"], 2) for d in done],
            "loop": loop_figures(counters),
            "per_worker": per_worker(counters, [d["cpu_s"] for d in done]),
            "worker_counters": [{k: v for k, v in c.items() if k != "in_worker_counts"} for c in counters]}


def throughput_run(ctx: BenchContext, name: str, *, kind: str, workers: int, guarantee: str,
                   timeout: float, telemetry: bool = True, cpus: set[int] | None = None) -> dict:
    """Workers read the pre-produced input from the start; the rate is taken from the visible outputs."""
    s = ctx.settings_for(name, guarantee=guarantee, telemetry=telemetry)
    outs = _outputs(ctx, s)  # the ceiling writes into the same shape: one topic per tenant
    result = {"run": name, "kind": kind, "workers": workers, "guarantee": guarantee, "events": ctx.events,
              "telemetry": telemetry}
    group = WorkerGroup(kind, s, workers, output_topics=outs, verbose=ctx.verbose, cpus=cpus, hold=workers > 1)
    sampler = _Sampler(group, ctx.broker_pid)
    reader = ArrivalReader(s, [*outs, s.topics.deadletter], ctx.events, ready=group.stable_since,
                           on_first=lambda: sampler("first_output"), on_start=lambda: sampler("start"),
                           on_done=lambda: sampler("last"), timeout=timeout)
    t_start = time.time()
    reader.start()
    try:
        group.start()
        while reader.is_alive():
            group.check()  # also collects the workers' assignment reports, which open the window
            reader.join(0.1)
        if reader.error:
            raise BenchError(f"{name}: {reader.error}")
    finally:
        reader.stop_event.set()
        reader.join(10)
        group.stop()
    if group.errors:
        raise BenchError(f"{name}: {'; '.join(group.errors)}")
    win = reader.window()
    if win is None:
        raise BenchError(f"{name}: every output became visible at once: too few events to time")
    w0, w1, counted, steady = win
    result.update({
        "seconds": round(w1 - w0, 3),
        "events_per_s": round(counted / (w1 - w0)),
        "events_in_window": counted,
        "window": "all workers assigned -> last output" if steady else "first output -> last output",
        "start_to_first_output_s": round(reader.t_first - t_start, 2),
        "first_output_to_window_s": round(w0 - reader.t_first, 2),
    })
    result.update(sampler.window(counted, "start" if steady else "first_output"))
    result.update(_worker_figures(group))
    result["check"] = verify(s, outs, s.topics.events, by="key" if kind == "ceiling" else "source",
                             deadletter=s.topics.deadletter)
    return result


def _activation_write_time(settings: Settings, intent: str, timeout: float = 15.0) -> int | None:
    """The Kafka timestamp (ms) of the newest activation record of `intent` on the models topic."""
    c = Consumer(consumer_config(settings, group_id="bench-reader-unused", **{"enable.partition.eof": True}))
    try:
        tp = TopicPartition(settings.topics.models, 0)
        lo, hi = c.get_watermark_offsets(tp, timeout=10, cached=False)
        c.assign([TopicPartition(settings.topics.models, 0, max(lo, hi - 20))])
        key = f"active/{intent}".encode()
        found, deadline = None, time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return found
                continue
            if m.key() == key:
                found = m.timestamp()[1]
        return found
    finally:
        c.close()


def latency_run(ctx: BenchContext, name: str, *, guarantee: str, rate: float, seconds: float, warmup: float,
                swap_at: float | None = None, swap_version: int | None = None, kind: str = "runtime",
                cpus: set[int] | None = None) -> dict:
    """One worker on a fresh input topic; a paced producer offers `rate` events/s for `seconds`. With kind
    "ceiling", the worker copies instead of scoring: the floor, what Kafka and the loop cost on their own. With
    `cpus`, the worker is pinned to them (the caller pins the broker and this process elsewhere)."""
    input_topic = f"{ctx.prefix}{name}.in"
    s = ctx.settings_for(name, guarantee=guarantee, input_topic=input_topic)
    ctx.create(s, [TopicSpec(input_topic, ctx.partitions)])
    outs = _outputs(ctx, s)
    n = int(rate * seconds)
    watch = f"{SWAP_INTENT}@{swap_version}" if swap_at is not None else None
    result: dict = {"run": name, "kind": kind, "guarantee": guarantee, "workers": 1, "offered_events_per_s": rate,
                    "seconds": seconds, "warmup_s": warmup, "events": n}
    reader = LatencyReader(s, [*outs, s.topics.deadletter], n, watch_model=watch)
    reader.start()
    group = WorkerGroup(kind, s, 1, output_topics=outs, verbose=ctx.verbose, cpus=cpus)
    send = np.full(n, np.nan)
    swap: dict = {}
    try:
        group.start()
        group.wait_assigned(60)
        time.sleep(1.0)  # the consumer fetches its start offsets after the assignment
        # Both figures leave out the events sent in the warm-up: the end-to-end one by their send times, the
        # in-worker one by its batches' first Kafka timestamps (taken when the same produce call is made).
        cutoff = time.time() + warmup
        group.measure_from(cutoff * 1000.0)
        achieved = _paced_produce(ctx, s, input_topic, n, rate, send, group,
                                  swap_at=swap_at, on_swap=lambda: _swap(s, swap_version, swap))
        result["achieved_events_per_s"] = round(achieved)
        deadline = time.monotonic() + 60
        while reader.count < n and time.monotonic() < deadline and reader.is_alive():
            group.check()
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate, if any, would show up now
    finally:
        reader.stop_event.set()
        reader.join(10)
        group.stop()
    if group.errors:
        raise BenchError(f"{name}: {'; '.join(group.errors)}")
    if reader.error:
        raise BenchError(f"{name}: {reader.error}")
    lat_ms = (reader.recv - send) * 1000.0
    counted = send >= cutoff  # by time, not by count: a load generator that falls behind sends fewer per second
    result["latency_ms"] = latency_summary(lat_ms[counted])
    # Where it goes: event produced -> batch scored (decided_at, ms resolution) -> decision visible.
    result["produce_to_decided_ms"] = latency_summary((reader.decided - send * 1000.0)[counted])
    result["decided_to_visible_ms"] = latency_summary((reader.recv * 1000.0 - reader.decided)[counted])
    result["reader_duplicates"] = reader.duplicates
    result.update(_worker_figures(group))
    rows: list[tuple[int, int, int]] = []
    if swap_at is not None:
        def collect(value: bytes) -> None:
            d = orjson.loads(value)
            if d["intent"] == SWAP_INTENT:
                rows.append((d["source"]["partition"], d["source"]["offset"],
                             int(d["model_version"].rsplit("@", 1)[1])))
    else:
        collect = None
    result["check"] = verify(s, outs, input_topic, by="key" if kind == "ceiling" else "source",
                             deadletter=s.topics.deadletter, collect=collect)
    if swap_at is not None:
        result["swap"] = _swap_figures(swap, reader, rows, lat_ms, send, rate)
    return result


def _paced_produce(ctx: BenchContext, s: Settings, topic: str, n: int, rate: float, send: np.ndarray,
                   group: WorkerGroup, *, swap_at: float | None, on_swap) -> float:
    """Offer events at `rate`/s; each one's send time (wall clock, taken just before its produce call) is recorded
    by sequence number. The producer does not linger, so the figure holds no wait of the load generator's own."""
    p = OutputProducer(producer_config(s, **{"linger.ms": 0}), name="offered load")
    produce, poll, event = p.client.produce, p.poll, ctx.factory.event
    swapper = None
    t0 = time.perf_counter()
    next_check = t0 + 1.0
    sent = 0
    while sent < n:
        now_pc = time.perf_counter()
        due = min(n, int((now_pc - t0) * rate) + 1)
        while sent < due:
            now = time.time()
            try:
                produce(topic, event(sent, int(now * 1000)), b"e-%d" % sent)
            except BufferError:
                poll(0.01)
                continue
            send[sent] = now
            sent += 1
        poll(0)
        if swap_at is not None and swapper is None and now_pc - t0 >= swap_at:
            swapper = threading.Thread(target=on_swap, daemon=True, name="bench-swap")
            swapper.start()
        if now_pc >= next_check:
            group.check()
            next_check = now_pc + 1.0
        time.sleep(0.0005)
    elapsed = time.perf_counter() - t0
    p.flush(30)  # raises what was not delivered
    if swapper is not None:
        swapper.join(60)
    return n / elapsed if elapsed > 0 else 0.0


def _swap(settings: Settings, version: int, into: dict) -> None:
    from muse_stream.models.store import activate

    try:
        t0 = time.time()
        act = activate(settings, SWAP_INTENT, version)
        into.update({"activate_call_started": t0, "activate_call_returned": time.time(),
                     "activated_at_ms": act.activated_at,
                     "record_timestamp_ms": _activation_write_time(settings, SWAP_INTENT)})
    except (MuseError, KafkaOpError) as e:
        into["error"] = str(e)


def _swap_figures(swap: dict, reader: LatencyReader, rows, lat_ms: np.ndarray, send: np.ndarray,
                  rate: float) -> dict:
    if "error" in swap:
        return {"error": swap["error"]}
    write_ms = swap.get("record_timestamp_ms") or swap.get("activated_at_ms")
    out = {"model": reader.watch_model, "activation_record_ms": write_ms,
           "activate_call_s": round(swap["activate_call_returned"] - swap["activate_call_started"], 3)}
    if reader.first_watch_decided_at is None:
        out["error"] = f"no decision by {reader.watch_model} was seen"
        return out
    out["activation_to_first_new_decision_ms"] = reader.first_watch_decided_at - write_ms
    out["activation_to_first_new_decision_visible_ms"] = round(reader.first_watch_recv * 1000 - write_ms, 1)
    out["older_version_after_newer"] = versions_never_go_back(rows)
    around = (send * 1000 >= write_ms - 1000) & (send * 1000 <= write_ms + 2000)
    out["latency_ms_around_swap"] = latency_summary(lat_ms[around])
    return out
