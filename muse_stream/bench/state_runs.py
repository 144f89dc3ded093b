"""The bench's entity-state section (`muse-stream bench --state`): the same pre-produced input scored
exactly-once by one worker without and with entity state (3 windows x 3 aggregates on card_id, each event
keyed by its card), the state step's cost per event, the changelog restore rate after a lost state folder, and
the workers' peak RSS.

The input: --state-events events of one tenant and intent, the first --state-entities of them one per card
(a random order, so the stores hold that many distinct entities), the rest drawn at random from the same
cards; event times 1 ms apart. Runs: off, floor, on (and back: on, floor, off with --state-pairs 2). The
floor (bench/state_floor.py) does per event only the store read, write and changelog record that any
implementation of this design needs: what state costs at the least, beside what it costs here.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable

import numpy as np
from confluent_kafka import TopicPartition

from muse_stream.bench.load import POOL_SIZE, EventFactory
from muse_stream.bench.runs import BenchContext, throughput_run
from muse_stream.config import Settings
from muse_stream.errors import KafkaOpError, MuseError
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.topics import TopicSpec

SPEC = {"entity": ["card_id"], "windows": ["10m", "1h", "24h"], "aggregates": ["count", "sum:amount", "max:amount"]}
_MODES = {"off": "off", "on": "on", "floor": "floor (bench/state_floor.py: the design's minimum per event)"}
TENANT, INTENT = "acme_bank", "card_fraud"  # acme_bank's default intent is card_fraud (bench/load.py)


def _produce(settings: Settings, topic: str, n: int, entities: int, factory: EventFactory) -> dict:
    p = OutputProducer(producer_config(settings, **{"linger.ms": 20, "batch.size": 1_000_000,
                                                    "queue.buffering.max.messages": 500_000}), name="pre-produce")
    rng = np.random.default_rng(5)
    first = rng.permutation(entities)[:n]
    cards = np.concatenate([first, rng.integers(0, entities, max(0, n - entities))]).tolist()
    pool = factory._pool
    t0, base = time.monotonic(), int(time.time() * 1000) - n
    for i, card in enumerate(cards):
        key = b"c%d" % card
        v = b'{"event_id":"s-%d","tenant_id":"%s","event_time":%d,"card_id":"%s","features":%s}' % (
            i, TENANT.encode(), base + i, key, pool[(i * 7919) % POOL_SIZE])
        while True:
            try:
                p.client.produce(topic, v, key)
                break
            except BufferError:
                p.poll(0.05)
                if time.monotonic() - t0 > 900:
                    raise KafkaOpError(f"pre-producing to {topic} timed out") from None
        if i & 8191 == 0:
            p.poll(0)
    p.flush(300.0)
    return {"events": n, "distinct_entities": len(set(cards)), "seconds": round(time.monotonic() - t0, 1)}


def _with_state(base: Settings, state: bool, state_dir: str) -> Settings:
    data = base.model_dump()
    data["intents"] = [{**i, "state": SPEC if state and i["name"] == INTENT else None} for i in data["intents"]]
    data["runtime"]["state_dir"] = state_dir
    return Settings.model_validate(data)


def _restore(s: Settings, input_topic: str, partitions: int) -> dict:
    """A worker's state folder deleted, then every partition's store restored from its changelog (the code a
    worker runs on assignment), timed."""
    from muse_stream.state.engine import StateEngine, state_folder

    shutil.rmtree(state_folder(s, 0), ignore_errors=True)
    eng = StateEngine(s, slot=0)
    t0 = time.monotonic()
    try:
        eng.assign([TopicPartition(input_topic, p) for p in range(partitions)])
    finally:
        eng.close()
    secs = time.monotonic() - t0
    n = eng.stats["restored_records"]
    return {"records": n, "seconds": round(secs, 2), "records_per_s": round(n / secs) if secs > 0 else None}


def run_state(ctx: BenchContext, report: dict, groups: list[str], say: Callable[[str], None], *, events: int,
              entities: int, pairs: int, timeout: float) -> None:
    """report["state"]: the runs, their comparison, the in-process step, the restore; failures recorded."""
    from muse_stream.bench.state import run as step_run
    from muse_stream.kafka.topics import changelog_topic

    topic = f"{ctx.prefix}state.in"
    out: dict = {"spec": SPEC, "events": events, "entities": entities, "runs": []}
    report["state"] = out
    folder = tempfile.mkdtemp(prefix="muse-bench-state-")
    try:
        ctx.create(ctx.base, [TopicSpec(topic, ctx.partitions)])
        say(f"state: pre-producing {events:,} events over {entities:,} cards into {topic}")
        out["load"] = _produce(ctx.base, topic, events, entities, ctx.factory)
        sctx = {on: dataclasses.replace(ctx, base=_with_state(ctx.base, on, folder), input_topic=topic, events=events)
                for on in (False, True)}
        order = ["off", "floor", "on"] + (["on", "floor", "off"] if pairs > 1 else [])
        for k, mode in enumerate(order):
            on = mode != "off"
            name = f"state-{mode}{'' if k < 3 else '.ab2'}"
            say(f"run {name}: runtime, 1 worker, exactly-once, entity state {_MODES[mode]}")
            groups.append(f"{ctx.prefix}{name}")
            try:
                r = throughput_run(sctx[on], name, kind="state-floor" if mode == "floor" else "runtime", workers=1,
                                   guarantee="exactly-once", timeout=timeout)
                say(f"  {r['events_per_s']:,} events/s, peak RSS {r.get('peak_rss_mb_max')} MB; "
                    f"check: {'ok' if r['check']['exactly_once'] else r['check']}")
            except MuseError as e:
                r = {"run": name, "error": str(e)}
                report["errors"].append(f"{name}: {e}")
                say(f"  failed: {e}")
            r["state"] = "floor" if mode == "floor" else on
            if on:
                ctx.topics.append(changelog_topic(sctx[on].settings_for(name, guarantee="exactly-once"), topic))
                if mode == "on" and "error" not in r and "restore" not in out:
                    say("  state folder deleted: restoring every partition from the changelog")
                    try:
                        out["restore"] = _restore(sctx[on].settings_for(name, guarantee="exactly-once"), topic,
                                                  ctx.partitions)
                        say(f"  {out['restore']['records']:,} records in {out['restore']['seconds']} s")
                    except MuseError as e:
                        report["errors"].append(f"state restore: {e}")
            out["runs"].append(r)
        say(f"state: the state step in process ({min(events, 200_000):,} events, {entities:,} cards)")
        with tempfile.TemporaryDirectory(prefix="muse-bench-step-") as tmp:
            out["in_process"] = step_run(min(events, 200_000), entities, ctx.base.batch.max_events, tmp)
        out["in_process"].pop("peak_rss_mb", None)  # the bench process's, not a worker's: the runs report those
        out.update(_compare(out["runs"]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _compare(runs: list[dict]) -> dict:
    """Mean events/s and worker CPU per event of each side, what state costs on top, and the floor's share."""
    def side(mode: str) -> tuple[float | None, float | None, float | None]:
        rs = [r for r in runs if _mode(r) == mode and "error" not in r]
        if not rs:
            return None, None, None
        eps = sum(r["events_per_s"] for r in rs) / len(rs)
        cpu = [r["cpu_s_per_1k_events"] for r in rs if r.get("cpu_s_per_1k_events") is not None]
        rss = max((r.get("peak_rss_mb_max") or 0) for r in rs) or None
        return eps, (sum(cpu) / len(cpu) if cpu else None), rss
    off, on = side("off"), side("on")
    res: dict = {"events_per_s_off": _r(off[0], 0), "events_per_s_on": _r(on[0], 0),
                 "peak_rss_mb_on": on[2]}
    if off[0] and on[0]:
        res["slowdown"] = round(1 - on[0] / off[0], 3)
        res["wall_us_per_event_state"] = round((1 / on[0] - 1 / off[0]) * 1e6, 2)
    if off[1] is not None and on[1] is not None:
        res["cpu_us_per_event_state"] = round((on[1] - off[1]) * 1e3, 2)
    floor = side("floor")
    if off[0] and floor[0]:
        res["events_per_s_floor"] = _r(floor[0], 0)
        res["floor_slowdown"] = round(1 - floor[0] / off[0], 3)
        if floor[1] is not None and off[1] is not None:
            res["cpu_us_per_event_floor"] = round((floor[1] - off[1]) * 1e3, 2)
    return res


def _mode(run: dict) -> str:
    return "floor" if run.get("state") == "floor" else "on" if run.get("state") is True else "off"


def _r(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits) if digits else round(x)


def state_targets(report: dict) -> list[dict]:
    st = report.get("state") or {}
    slow, rss = st.get("slowdown"), st.get("peak_rss_mb_on")
    return [{"target": "exactly-once events/s with entity state vs without: slowdown", "value": slow,
             "limit": "<= 0.25", "met": None if slow is None else slow <= 0.25},
            {"target": "peak RSS per worker with entity state, MB", "value": rss, "limit": "< 400",
             "met": None if rss is None else rss < 400}] if st else []


def format_state(report: dict) -> str:
    st = report.get("state")
    if not st:
        return ""
    ip, rs = st.get("in_process") or {}, st.get("restore") or {}
    lines = [(f"Entity state ({', '.join(st['spec']['aggregates'])} over {', '.join(st['spec']['windows'])} on "
             f"card_id; {st['events']:,} events, {(st.get('load') or {}).get('distinct_entities')} distinct "
             "cards; 1 worker, exactly-once)")]
    for r in st["runs"]:
        lines.append(f"  {r['run']:<16} {r.get('events_per_s', 'failed')!s:>8} events/s  CPU s/1k "
                     f"{r.get('cpu_s_per_1k_events')}  peak RSS {r.get('peak_rss_mb_max')} MB")
    lines += [(f"  with state / without: {st.get('events_per_s_on')} / {st.get('events_per_s_off')} events/s "
              f"(slowdown {st.get('slowdown')}; target <= 0.25)"),
              (f"  the design's floor alone (a read, a write and a changelog record per event; no features): "
              f"{st.get('events_per_s_floor')} events/s (slowdown {st.get('floor_slowdown')}, "
              f"{st.get('cpu_us_per_event_floor')} us worker CPU per event)"),
              (f"  state per event: {st.get('cpu_us_per_event_state')} us worker CPU, "
              f"{st.get('wall_us_per_event_state')} us wall (runs); in process {ip.get('us_per_event')} us wall, "
              f"{ip.get('cpu_us_per_event')} us CPU"),
              (f"  restore after a lost state folder: {rs.get('records')} records in {rs.get('seconds')} s "
              f"({rs.get('records_per_s')} records/s)")]
    return "\n".join(lines)
