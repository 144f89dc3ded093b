"""Replaying a range of the input topic through the real scoring pipeline into a namespace of its own.

Decisions go to <prefix><run-id>.decisions.<tenant> and dead letters to <prefix><run-id>.deadletter, never
to a live topic: a replay whose topics would name a live decision or dead-letter topic is refused.

Entity state: when an intent keeps state, each partition is read from its start, as the live workers read it,
into stores of the replay's own (a temporary folder; nothing is read from or written to the changelogs), and
only the range's events are written out. So a replayed event sees the entity state live saw: its features,
duplicates and late events come out as live's did.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass

import orjson

from muse_stream.config import Settings
from muse_stream.errors import ConfigError
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.ranges import Bound, RangeReader
from muse_stream.kafka.topics import TopicSpec, create_topics, existing_topics
from muse_stream.models.bands import ReferenceCache
from muse_stream.models.store import read_models
from muse_stream.scoring.deadletter import write_dead_letters
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.state.engine import StateEngine
from muse_stream.tenants import TenantRegistry, read_tenants

logger = logging.getLogger(__name__)
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class ReplayResult:
    run_id: str
    events: int
    decisions: int
    dead_letters: int
    topics: list[str]
    seconds: float


def replay_topics(prefix: str, run_id: str) -> tuple[str, str]:
    """(decisions prefix, dead-letter topic) of a replay run."""
    return f"{prefix}{run_id}.decisions.", f"{prefix}{run_id}.deadletter"


def check_not_live(settings: Settings, tenants: dict, dec_prefix: str, dead_topic: str) -> None:
    live = {settings.output_topic(t) for t in tenants.values()} | {settings.topics.deadletter, settings.topics.events,
                                                                   settings.topics.models, settings.topics.tenants}
    ours = {f"{dec_prefix}{tid}" for tid in tenants} | {dead_topic}
    clash = sorted(ours & live)
    if clash or dec_prefix.startswith(settings.topics.decisions_prefix):
        raise ConfigError(f"refusing to replay into live topics {clash or [dec_prefix + '*']}: "
                          "choose another --prefix or --run-id")


def run_replay(settings: Settings, *, start: Bound, end: Bound, run_id: str | None = None,
               prefix: str = "muse.replay.") -> ReplayResult:
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    if not _RUN_ID.match(run_id):
        raise ConfigError("--run-id must be 1-64 letters, digits, '_' or '-'")
    tenants = read_tenants(settings)
    dec_prefix, dead_topic = replay_topics(prefix, run_id)
    check_not_live(settings, tenants, dec_prefix, dead_topic)
    if any(t.startswith(f"{prefix}{run_id}.") for t in existing_topics(settings)):
        raise ConfigError(f"replay run {run_id!r} already has topics; choose another --run-id")
    models = read_models(settings, load=True)
    registry = TenantRegistry(settings, tenants, log_changes=False,
                              references=ReferenceCache(lambda: models.references))  # rate bands, as live
    scorer = BatchScorer(registry, models, max_abs_feature=settings.runtime.max_abs_feature,
                         max_event_bytes=settings.runtime.max_event_bytes,
                         output_topic=lambda tid: f"{dec_prefix}{tid}", intents=settings.intents)
    topics = [f"{dec_prefix}{tid}" for tid in sorted(tenants)] + [dead_topic]
    create_topics(settings, [TopicSpec(t, settings.topics.decisions_partitions) for t in topics],
                  replication_factor=settings.topics.replication_factor)
    stateful = any(i.state is not None for i in settings.intents)
    reader = RangeReader(settings, settings.topics.events, Bound("start") if stateful else start, end)
    producer = OutputProducer(producer_config(settings), name="replay producer")
    folder = tempfile.mkdtemp(prefix="muse-replay-state-") if stateful else None
    t0 = time.monotonic()
    n_in = n_dec = n_dead = 0
    try:
        first = reader.offsets(start) if stateful else {}
        if stateful:
            scorer.state = StateEngine.offline(settings, folder, reader.topic, reader.starts)
        for batch in reader.batches(settings.batch.max_events):
            out = scorer.process(batch, int(time.time() * 1000))
            if stateful:
                scorer.state.replayed()
                batch, out = _in_range(batch, out, first)
            producer.produce_all(out.decisions)
            write_dead_letters(producer, dead_topic, out.dead)
            n_in += len(batch)
            n_dec += len(out.decisions)
            n_dead += len(out.dead)
        producer.flush(60)  # raises what was not delivered
    finally:
        reader.close()
        if stateful:
            if scorer.state is not None:
                scorer.state.close()
            shutil.rmtree(folder, ignore_errors=True)
    return ReplayResult(run_id, n_in, n_dec, n_dead, topics, time.monotonic() - t0)


def _in_range(batch: list, out, first: dict[int, int]):
    """The batch's events at or past the range's first offset of their partition, and their outputs; the
    earlier ones only built the state."""
    keep = [m for m in batch if m.offset() >= first[m.partition()]]
    if len(keep) == len(batch):
        return batch, out
    out.dead = [d for d in out.dead if d.msg.offset() >= first[d.msg.partition()]]
    if keep:
        src = [orjson.loads(v)["source"] for _, _, v in out.decisions]
        out.decisions = [d for d, s in zip(out.decisions, src) if s["offset"] >= first[s["partition"]]]
    else:
        out.decisions = []
    return keep, out

