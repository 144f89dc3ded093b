"""One RocksDB store (rocksdict) per assigned input partition, its pending writes, and its restore from the
changelog.

Consistency with the changelog (which is written inside the worker's transaction, with the decisions and
offsets): a batch's writes wait in `pending`, read by later batches of the same transaction, and reach
RocksDB only once the transaction has committed (`apply`); an abort drops them. The store records a sync
offset, a changelog offset at which it held exactly what the changelog holds below it. A changelog record is
the whole value of its key (or a tombstone), so replaying the changelog from any earlier point to its end
gives the same state: on assignment the store replays from its sync offset (from 0 when the folder is new or
was deleted), which also covers a worker killed between a commit and its local apply.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaError, TopicPartition
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager, WriteOptions

from muse_stream.errors import KafkaOpError

logger = logging.getLogger(__name__)
SYNC_KEY = b"\x00sync"  # no state key starts with a zero byte
FRONT_RANK, RECENT = 16, 64  # the sweep's front (PartitionStore.advance): 16th newest, median of the last 64
# One block cache and one memtable budget for all of a process's stores, so a worker's memory does not grow
# with its partitions (RocksDB's defaults give each store 2 x 64 MB of memtables); bloom filters because
# most look-ups of a batch with many entities are misses (an entity's first event).
_CACHE_BYTES, _MEMTABLE_BYTES = 32 << 20, 64 << 20
_shared: dict = {}


def _opts() -> Options:
    if not _shared:
        _shared["cache"] = Cache(_CACHE_BYTES)
        _shared["memtables"] = WriteBufferManager(_MEMTABLE_BYTES, False)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    table.set_block_cache(_shared["cache"])
    o = Options(raw_mode=True)
    o.create_if_missing(True)
    o.set_block_based_table_factory(table)
    o.set_write_buffer_size(16 << 20)
    o.set_memtable_whole_key_filtering(True)  # a miss in the memtable skips its skiplist too
    o.set_memtable_prefix_bloom_ratio(0.1)
    o.set_write_buffer_manager(_shared["memtables"])
    return o


def _open(path: Path) -> Rdict:
    """No write-ahead log (as Kafka Streams' RocksDB stores): the changelog is the store's log. A crash loses
    at most the writes since the last memtable flush, the sync offset among them (one column family flushes
    in write order), and the restore replays the changelog from the older sync offset that survived."""
    db = Rdict(str(path), _opts())
    w = WriteOptions()
    w.disable_wal = True
    db.set_write_options(w)
    return db


class PartitionStore:
    """The state of one input partition: RocksDB, plus the open transaction's writes."""

    def __init__(self, path: Path, topic: str, partition: int) -> None:
        self.path, self.topic, self.partition = path, topic, partition
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = _open(path)
        self.pending: dict[bytes, bytes | None] = {}
        self.cursor = b""  # where the next sweep resumes (key order, wrapping at the end)
        self.checked: set[str] = set()  # intents whose spec record this store holds (specs.Specs.check)
        self.front: int | None = None  # the sweep's event-time front on the partition (see `advance`)
        self._newest = np.empty(0, dtype=np.int64)  # the FRONT_RANK newest event times scored here
        self._recent = np.empty(0, dtype=np.int64)  # the RECENT last event times scored here

    def advance(self, times: np.ndarray) -> None:
        """A batch's scored event times (duplicates left out), in arrival order. The front is the lower of the
        FRONT_RANK-th newest event time scored on the partition and the median of the last RECENT scored there
        (and it never goes back): events stamped far ahead (a producer's clock, a typo) move it only when there
        are at least FRONT_RANK of them and they are most of the recent events, so a few cannot make the sweep
        take every entity of a historical stream for idle. None until FRONT_RANK events were scored."""
        if not len(times):
            return
        times = times.astype(np.int64, copy=False)
        both = np.concatenate([self._newest, times])
        if len(both) > FRONT_RANK:
            both = np.partition(both, len(both) - FRONT_RANK)[-FRONT_RANK:]
        self._newest = both
        recent = np.concatenate([self._recent, times])[-RECENT:]
        self._recent = recent
        if len(both) == FRONT_RANK:
            mid = int(np.partition(recent, (len(recent) - 1) // 2)[(len(recent) - 1) // 2])  # the lower median
            candidate = min(int(both.min()), mid)
            self.front = candidate if self.front is None else max(self.front, candidate)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Values as the open transaction sees them: its own writes first, then RocksDB (one multi-get)."""
        pend = self.pending
        missing = sorted(k for k in keys if k not in pend)  # key order: RocksDB's blocks read in sequence
        found = dict(zip(missing, self.db.get(missing))) if missing else {}
        return [pend[k] if k in pend else found[k] for k in keys]

    def stage(self, key: bytes, value: bytes | None) -> None:
        self.pending[key] = value

    def apply(self) -> int:
        """The transaction committed: its writes go to RocksDB in one write batch."""
        n = len(self.pending)
        if n:
            wb = WriteBatch(raw_mode=True)
            for k, v in self.pending.items():
                if v is None:
                    wb.delete(k)
                else:
                    wb.put(k, v)
            self.db.write(wb)
            self.pending = {}
        return n

    def drop(self) -> None:
        self.pending = {}

    def sweep(self, budget: int, expired) -> list[bytes]:
        """Up to `budget` committed keys from the cursor on: those `expired(key, value)` says to delete (keys
        the open transaction wrote are skipped: their new values are not in RocksDB yet). One pass over the
        store takes (entities / budget) calls; the cursor survives only in memory, a restart starts over."""
        it = self.db.iter()
        it.seek(self.cursor)
        out, seen, wrapped = {}, 0, not self.cursor
        while seen < budget:
            if not it.valid():
                self.cursor = b""
                if wrapped:
                    break
                wrapped = True
                it.seek_to_first()
                continue
            k = it.key()
            seen += 1
            if k[:1] != b"\x00" and k not in self.pending and expired(k, it.value()):
                out[k] = None
            self.cursor = k + b"\0"
            it.next()
        return list(out)

    @property
    def sync_offset(self) -> int:
        raw = self.db.get(SYNC_KEY)
        return int.from_bytes(raw, "big") if raw else 0

    def set_sync(self, offset: int) -> None:
        self.db[SYNC_KEY] = offset.to_bytes(8, "big")

    def wipe(self) -> None:
        """Start empty (the changelog was recreated behind the store's back)."""
        self.db.close()
        Rdict.destroy(str(self.path), _opts())
        self.db = _open(self.path)

    def close(self) -> None:
        self.pending = {}
        self.db.close()

    def entity_keys(self) -> list[bytes]:
        """Every committed entity key (tests and tools; a full scan), not the store's own (a zero byte first)."""
        it, out = self.db.iter(), []
        it.seek_to_first()
        while it.valid():
            if it.key()[:1] != b"\x00":
                out.append(it.key())
            it.next()
        return out


def restore(stores: list[PartitionStore], consumer, changelog_of, *, heartbeat=lambda: None,
            timeout: float = 30.0) -> tuple[dict[tuple[str, int], int], float]:
    """Bring each store up to the end of its changelog partition (read_committed), all through one assignment
    so the partitions' fetches overlap; returns (records per (topic, partition), seconds).

    `consumer`: a read_committed consumer with enable.partition.eof, assigned by hand (no group);
    `changelog_of(input topic)`: the changelog topic's name."""
    t0 = time.monotonic()
    todo: dict[tuple[str, int], PartitionStore] = {}
    assign, counts = [], {(s.topic, s.partition): 0 for s in stores}
    for store in stores:
        changelog = changelog_of(store.topic)
        tp = TopicPartition(changelog, store.partition)
        try:
            lo, hi = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        except Exception as e:  # noqa: BLE001 - KafkaException: say which changelog
            raise KafkaOpError(f"reading the end of {changelog}[{store.partition}]: {e}") from None
        start = store.sync_offset
        if start > hi:
            logger.warning("state %s[%d]: the store is past the changelog's end (%d > %d): the topic was "
                           "recreated; restoring from scratch", store.topic, store.partition, start, hi)
            store.wipe()
            start = 0
        if start < hi:
            todo[(changelog, store.partition)] = store
            assign.append(TopicPartition(changelog, store.partition, max(start, lo)))
    if not todo:
        return counts, time.monotonic() - t0
    consumer.assign(assign)
    ends: dict[tuple[str, int], int] = {}
    try:
        while len(ends) < len(todo):
            msgs = consumer.consume(10_000, 0.1)
            heartbeat()
            if time.monotonic() - t0 > 3600:
                raise KafkaOpError(f"restoring {sorted(todo)} took over an hour")
            batches: dict[tuple[str, int], WriteBatch] = {}
            for m in msgs:
                key = (m.topic(), m.partition())
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ends[key] = m.offset()
                        continue
                    raise KafkaOpError(f"restoring {key[0]}[{key[1]}]: {err.str()}", error=err)
                wb = batches.get(key)
                if wb is None:
                    wb = batches[key] = WriteBatch(raw_mode=True)
                v = m.value()
                if v is None:
                    wb.delete(m.key())
                else:
                    wb.put(m.key(), v)
                store = todo[key]
                counts[(store.topic, store.partition)] += 1
            for key, wb in batches.items():
                todo[key].db.write(wb)
    finally:
        consumer.unassign()
    for key, store in todo.items():
        store.set_sync(max(ends[key], store.sync_offset))
    return counts, time.monotonic() - t0


def remove_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
