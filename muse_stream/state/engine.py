"""Entity state for a worker: the stores of its assigned partitions, a batch's state features, duplicates and
partition-key checks, and the changelog records that go into the worker's open transaction.

The interface the scorer and worker use (scoring/scorer.py, worker/runtime.py):
- `compute(cols, groups)` after routing, before any feature matrix: returns (groups without the refused rows,
  [(row, reason value, detail, extra headers)] to dead-letter). Reasons: "duplicate_event" (headers
  muse.first.partition / muse.first.offset name the first occurrence), "wrong_partition_key",
  "missing_field" (no entity value).
- `fill(model, x32, rows)`: writes the state columns the version reads into its float32 matrix.
- `decorate(decisions)`: with `debug`, each decision of a stateful intent gains "state": {name: value}.
- `produce(producer)`: the batch's store writes, to the changelog, inside the open transaction.
- `committed()` / `aborted()`: the loop's commit and abort; `assign(partitions)` / `release(partitions)` on
  rebalances (assign restores each store before any of its events is scored).

Changelog: one compacted topic per (consumer group, input topic), `<group>.<input>.state-changelog`, its
partitions matching the input's. One store per input partition holds every stateful intent (keys start with
the intent), so a partition restores with one read, and the topic count does not grow with intents.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import KafkaException, TopicPartition

from muse_stream.config import Settings
from muse_stream.errors import AbortRequired, ConfigError
from muse_stream.kafka.clients import make_consumer, reader_config
from muse_stream.kafka.topics import COMPACTED, TopicSpec, changelog_topic, create_topics
from muse_stream.state import batch
from muse_stream.state.reading import capture_fields, read_rows
from muse_stream.state.specs import Specs
from muse_stream.state.store import PartitionStore, restore
from muse_stream.state.windows import _HEAD, Plan, entry_dtype, hash_many, shape

logger = logging.getLogger(__name__)
_NAN = math.nan
SWEEP_PER_BATCH = 128  # keys examined per store and batch: a pass over 1M entities in ~8,000 batches
MAX_RECORD_BYTES = 512 * 1024


def state_folder(settings: Settings, slot: int) -> Path:
    return Path(settings.runtime.state_dir) / settings.runtime.group_id / f"slot-{slot}"


def check_state_dir(settings: Settings) -> None:
    """A config with entity state needs a state folder its workers can write: made (with its parents) and
    written to once, before any worker starts; one that cannot be is a ConfigError in one line, not a worker
    crashing on its first assignment."""
    if not any(i.state is not None for i in settings.intents):
        return
    where = Path(settings.runtime.state_dir) / settings.runtime.group_id
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"runtime.state_dir {settings.runtime.state_dir!r}: the workers cannot keep their entity "
                          f"state in {str(where)!r}: {e.strerror or e}") from None


class StateEngine:
    def __init__(self, settings: Settings, *, slot: int, heartbeat=lambda: None) -> None:
        self.settings = settings
        self.plans = {i.name: Plan(i.state) for i in settings.intents if i.state is not None}
        self.capture = capture_fields(self.plans.values())  # what the scanner keeps for read_rows
        self.folder = state_folder(settings, slot)
        self.heartbeat = heartbeat
        self.stores: dict[tuple[str, int], PartitionStore] = {}
        self._reader = None
        self._batch: list[tuple[str, int, bytes, bytes | None]] = []
        self._cols: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # intent -> (row positions, features)
        self._debug: dict[tuple[str, int, int], bytes] = {}
        self._synced = 0.0
        self.stats = {"late": 0, "duplicates": 0, "wrong_partition_key": 0, "restored_records": 0,
                      "restore_seconds": 0.0, "state_ns": 0, "swept": 0, "capped": 0, "adapted": 0, "unreadable": 0}
        self.specs = Specs(self.stats)
        self.sweep_per_batch = SWEEP_PER_BATCH
        self.max_record_bytes = MAX_RECORD_BYTES

    @classmethod
    def offline(cls, settings: Settings, folder: str, topic: str, partitions) -> StateEngine:
        """An engine of its own over `topic` (a replay's, validate's): empty stores in `folder`, one per
        partition, no changelog read or written (`replayed` applies each batch)."""
        data = settings.model_dump()
        data["runtime"]["state_dir"] = folder
        engine = cls(Settings.model_validate(data), slot=0)
        for p in partitions:
            engine.stores[(topic, p)] = PartitionStore(engine.folder / f"{topic}-{p}", topic, p)
        return engine

    @property
    def enabled(self) -> bool:
        return bool(self.plans)

    # ---- topics and rebalances ------------------------------------------------------------------

    def ensure_topics(self) -> None:
        t = self.settings.topics
        create_topics(self.settings, [TopicSpec(changelog_topic(self.settings, i), t.events_partitions, COMPACTED)
                                      for i in t.inputs], replication_factor=t.replication_factor)

    def assign(self, partitions) -> None:
        """Open and restore the store of each partition (before any of its events is scored), all together."""
        new = [PartitionStore(self.folder / f"{tp.topic}-{tp.partition}", tp.topic, tp.partition)
               for tp in partitions if (tp.topic, tp.partition) not in self.stores]
        if not new:
            return
        try:
            counts, secs = restore(new, self.reader(), lambda topic: changelog_topic(self.settings, topic),
                                   heartbeat=self.heartbeat)
        except BaseException:
            for s in new:
                s.close()
            raise
        n = sum(counts.values())
        self.stores.update(((s.topic, s.partition), s) for s in new)
        self.stats["restored_records"] += n
        self.stats["restore_seconds"] += secs
        logger.info("state: restored %d records into %d store(s) in %.2f s (%.0f records/s)", n, len(new), secs,
                    n / secs if secs > 0 else 0.0,
                    extra={"fields": {"event": "state_restore", "partitions": [[s.topic, s.partition] for s in new],
                                      "records": n, "seconds": round(secs, 3)}})

    def release(self, partitions) -> None:
        """Revoked or lost: close the stores. Writes not yet applied are dropped; they are in the changelog if
        their transaction commits, and the next assignment replays them from the store's sync offset."""
        for tp in partitions:
            store = self.stores.pop((tp.topic, tp.partition), None)
            if store is not None:
                store.close()

    def reader(self):
        if self._reader is None:
            self._reader = make_consumer(reader_config(self.settings, **{"enable.partition.eof": True}),
                                         "state restore consumer")
        return self._reader

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.stores = {}
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # ---- the transaction ------------------------------------------------------------------------

    def committed(self) -> None:
        """The open transaction committed: apply its writes; now and then record the sync offsets."""
        wrote = [s for s in self.stores.values() if s.apply()]
        if wrote and time.monotonic() - self._synced > 5.0:
            self._synced = time.monotonic()
            for s in wrote:  # we own the partition and just committed: its end is what we hold
                try:
                    _, hi = self.reader().get_watermark_offsets(
                        _tp(changelog_topic(self.settings, s.topic), s.partition), timeout=5.0, cached=False)
                except KafkaException as e:
                    logger.warning("state: reading a changelog end: %s", e)
                    return
                s.set_sync(hi)

    def replayed(self) -> None:
        """A replay's batch is done (analysis/replay.py): its writes go straight to the replay's own stores; no
        changelog record is produced and no sync offset recorded."""
        self._batch = []
        for s in self.stores.values():
            s.apply()

    def aborted(self) -> None:
        for s in self.stores.values():
            s.drop()
            s.checked = set()  # the spec records staged with the batch went with it: stage them again

    def produce(self, producer) -> None:
        """This batch's writes to the changelog, in the open transaction (partition = the input partition)."""
        client = producer.client
        for topic, partition, key, value in self._batch:
            while True:
                try:
                    client.produce(topic, value, key, partition=partition)
                    break
                except BufferError:
                    producer.poll(0.05)
                except KafkaException as e:
                    raise producer._produce_error(topic, e.args[0]) from None
        self._batch = []

    # ---- a batch --------------------------------------------------------------------------------

    def compute(self, cols, groups: list) -> tuple[list, list]:
        """State features of the batch's stateful rows (see the module docstring)."""
        t0 = time.perf_counter_ns()
        self._cols, self._debug, refused = {}, {}, []
        by_intent: dict[str, list[np.ndarray]] = {}
        for model, rows in groups:
            if model.intent in self.plans:
                by_intent.setdefault(model.intent, []).append(rows)
        drop: set[int] = set()
        for intent, parts in by_intent.items():
            rows = np.sort(np.concatenate(parts))
            refused += self._intent(intent, self.plans[intent], cols, rows, drop)
        if drop:
            groups = [(m, r[~np.isin(r, list(drop))]) for m, r in groups]
            groups = [(m, r) for m, r in groups if r.size]
        self._sweep()
        self.stats["state_ns"] += time.perf_counter_ns() - t0
        return groups, refused

    def _sweep(self) -> None:
        """Delete, a bounded number of keys per store and batch, the entities idle for longer than their
        retention plus lateness behind the partition's event-time front (PartitionStore.advance: a few events
        stamped far ahead cannot move it; and capped by the wall clock): their deletes are changelog tombstones
        in this transaction. Exact for every later event no older than the front minus lateness
        (docs/models.md)."""
        wall = time.time_ns() // 1_000_000
        for (topic, partition), store in self.stores.items():
            if store.front is None:
                continue
            now = min(store.front, wall)
            horizon = {i.encode(): now - p.keep_ms - p.lateness_ms for i, p in self.plans.items()}
            gone = store.sweep(self.sweep_per_batch, functools.partial(_expired, horizon=horizon))
            if gone:
                changelog = changelog_topic(self.settings, topic)
                store.pending.update((k, None) for k in gone)
                self._batch.extend((changelog, partition, k, None) for k in gone)
                self.stats["swept"] += len(gone)

    def _intent(self, intent: str, plan: Plan, cols, rows: np.ndarray, drop: set) -> list:
        spec, refused = plan.spec, []
        feats = np.full((len(rows), len(plan.names)), _NAN)
        got = read_rows(intent, plan, cols, rows, self.settings.runtime.max_abs_feature)
        kept, code, ents = got.kept, got.code, got.entities
        refused += got.refused
        drop.update(r[0] for r in got.refused)
        self.stats["wrong_partition_key"] += got.wrong
        if len(kept):
            # Each store's entities (codes in order of first appearance) read with one multi-get.
            raws: list = [None] * len(ents)
            by_store: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
            for c, (topic, partition, skey) in enumerate(ents):
                by_store.setdefault((topic, partition), []).append((c, skey))
            stores_of = np.empty(len(ents), dtype=np.int64)
            for s, its in enumerate(by_store.values()):
                stores_of[[c for c, _ in its]] = s
            for (topic, partition), its in by_store.items():
                store = self.stores.get((topic, partition))
                if store is None:  # the partition went in a rebalance inside this batch's consume: read it again
                    raise AbortRequired(f"state: {topic}[{partition}] is not assigned to this worker")
                if intent not in store.checked:
                    self._batch.extend(self.specs.check(store, intent, plan, changelog_topic(self.settings, topic)))
                for (c, _), raw in zip(its, store.get_many([k for _, k in its])):
                    raws[c] = raw
            hd, n = plan.head, len(plan.head)
            for c in [c for c, r in enumerate(raws) if r is not None and r[:n] != hd]:
                raws[c] = self.specs.adapt(plan, raws[c], self.stores.values())
            kept_rows = rows[kept]
            times = cols.times[kept_rows].astype(np.int64)
            out = np.full((len(kept), len(plan.names)), _NAN)
            kind, first, values = batch.run(plan, raws, code, times, got.offsets,
                                            hash_many([str(e) for e in cols.eids[kept_rows].tolist()]), got.nums,
                                            got.dists, out)
            scored = kind != batch.DUP  # a producer's retries of one event are not news of the time
            for s, (topic, partition) in enumerate(by_store):  # each partition's event-time front, for the sweep
                mine = scored if len(by_store) == 1 else scored & (stores_of[code] == s)
                self.stores[(topic, partition)].advance(times[mine])
            feats[kept] = out
            self._cap(plan, values)
            self.stats["late"] += int((kind == batch.LATE).sum())
            for j in np.flatnonzero(kind == batch.DUP).tolist():
                i = int(kept_rows[j])
                m = cols.msgs[i]
                self.stats["duplicates"] += 1
                why = f"event id {cols.eids[i]!r} first seen at {m.topic()}[{m.partition()}]@{first[j]}"
                refused.append((i, "duplicate_event", why, [("muse.first.partition", str(m.partition()).encode()),
                                                            ("muse.first.offset", str(first[j]).encode())]))
                drop.add(i)
            for (topic, partition), its in by_store.items():
                store, changelog = self.stores[(topic, partition)], changelog_topic(self.settings, topic)
                store.pending.update((k, values[c]) for c, k in its)
                self._batch.extend((changelog, partition, k, values[c]) for c, k in its)
        pos_of = np.full(len(cols.msgs), -1, dtype=np.intp)
        pos_of[rows] = np.arange(len(rows))
        self._cols[intent] = (pos_of, feats)
        if spec.debug:
            for pos, i in enumerate(rows.tolist()):
                if i not in drop:
                    m = cols.msgs[i]  # keyed by the input record: event ids may repeat across tenants and intents
                    self._debug[(m.topic(), m.partition(), m.offset())] = orjson.dumps(
                        dict(zip(plan.names, [None if math.isnan(v) else v for v in feats[pos].tolist()])))
        refused.sort(key=lambda r: r[0])
        return refused

    def _cap(self, plan: Plan, values: list) -> None:
        """An entity record over max_record_bytes keeps its newest entries only (a changelog record must stay
        under the broker's message.max.bytes, 1 MB by default): its long windows then miss the oldest events,
        and their duplicates go unseen. Counted ("capped"), never a failed batch."""
        limit = self.max_record_bytes
        size = entry_dtype(len(plan.nums), len(plan.dists)).itemsize
        keep = (limit - _HEAD.size) // size * size
        for c, v in enumerate(values):
            if len(v) > limit:
                values[c] = v[:_HEAD.size] + v[len(v) - keep:]
                self.stats["capped"] += 1

    def fill(self, model, x32: np.ndarray, rows: np.ndarray) -> None:
        """The version's state columns, for its kept rows (batch positions `rows`, x32's rows in order)."""
        got = self._cols.get(model.intent)
        if got is None:
            return
        pos_of, feats = got
        names = self.plans[model.intent].names
        where = {n: j for j, n in enumerate(names)}
        pos = pos_of[rows]
        for j, name in enumerate(model.features):
            k = where.get(name)
            if k is not None:
                x32[:, j] = feats[pos, k]

    def decorate(self, decisions: list) -> None:
        """Debug: append "state" to each decision of a debug intent (the brute-force test reads it)."""
        if not self._debug:
            return
        dbg = self._debug
        for n, (topic, key, value) in enumerate(decisions):
            src = orjson.loads(value)["source"]  # debug only: one parse per decision
            s = dbg.get((src["topic"], src["partition"], src["offset"]))
            if s is not None:
                decisions[n] = (topic, key, value[:-1] + b',"state":' + s + b"}")


def _tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def _expired(key: bytes, value: bytes, horizon: dict) -> bool:
    """Whether an entity's record is past its intent's horizon (its newest entry, the last row, older; a record
    of an older layout by its own row size), or no record at all; keys of intents no longer stateful, and the
    stores' own keys (a zero byte first), are left alone."""
    cut = horizon.get(key[:key.find(b"\0")]) if key[:1] != b"\0" else None
    if cut is None:
        return False
    got = shape(value)
    if got is None or len(value) <= got[0]:
        return True
    last = len(value) - entry_dtype(got[1], got[2]).itemsize  # rows in time order: the last one is the newest
    return int.from_bytes(value[last:last + 8], "little", signed=True) < cut


