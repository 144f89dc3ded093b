"""The entity-state floor for `muse-stream bench --state` (run "state-floor"): a worker whose state step does
only what any implementation of issue 13's design must do per event, and nothing else, so that the bench
can say how much of the state's cost is the design's and how much is this code's.

Per event of a stateful intent: its entity's record read from the partition's RocksDB store (one multi-get per
store and batch, the open transaction's writes first), a record of the size a one-event record has staged in
its place, written to RocksDB after the commit, and one changelog record produced in the transaction. No event
is parsed for state, no window computed, no duplicate looked for, nothing swept: the model's state columns
stay missing. Everything else (the loop, scoring, decisions, the commit) is the real worker's.
"""

from __future__ import annotations

from muse_stream.kafka.topics import changelog_topic
from muse_stream.state.engine import StateEngine
from muse_stream.state.windows import entry_dtype
from muse_stream.worker.runtime import Worker


class FloorEngine(StateEngine):
    def compute(self, cols, groups: list) -> tuple[list, list]:
        self._cols, self._debug = {}, {}
        for model, rows in groups:
            plan = self.plans.get(model.intent)
            if plan is None:
                continue
            value = plan.head + bytes(entry_dtype(len(plan.nums), len(plan.dists)).itemsize)
            by_store: dict[tuple[str, int], list[bytes]] = {}
            head = model.intent.encode() + b"\0"
            for m, tid in zip(cols.msgs[rows].tolist(), cols.tids[rows].tolist()):
                by_store.setdefault((m.topic(), m.partition()), []).append(head + tid.encode() + b"\0" + m.key())
            for (topic, partition), keys in by_store.items():
                store = self.stores[(topic, partition)]
                store.get_many(keys)
                changelog = changelog_topic(self.settings, topic)
                store.pending.update((k, value) for k in keys)
                self._batch.extend((changelog, partition, k, value) for k in keys)
        return groups, []


class FloorWorker(Worker):
    def __init__(self, settings, **kw) -> None:
        super().__init__(settings, **kw)
        self.state = FloorEngine(settings, slot=self.slot, heartbeat=lambda: self._heartbeat())
        self.scorer.state = self.state
