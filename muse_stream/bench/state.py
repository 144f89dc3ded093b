"""The entity-state benchmark: the state engine's own cost per event, with 3 windows x 3 aggregates on one
entity field over many distinct entities, a real RocksDB store on disk, and the process's peak RSS.

    python -m muse_stream.bench.state --events 300000 --entities 1000000 [--folder DIR]

It drives StateEngine.compute over batches of real confluent_kafka Messages (as a worker's batches), applies
each batch's writes as a commit does, and reports µs per event and events/s of the state step alone. The
changelog restore rate needs a broker and is measured by the worker's own log line (`state ...: restored N
records in S s`), which docs/results.md quotes.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import orjson
from confluent_kafka import Message

from muse_stream.config import Settings
from muse_stream.scoring.columns import scan_values
from muse_stream.scoring.native import module
from muse_stream.state.engine import StateEngine
from muse_stream.state.store import PartitionStore

T0 = 1_700_000_000_000


def _settings(folder: str) -> Settings:
    return Settings.model_validate({
        "intents": [{"name": "card_fraud", "state": {"entity": ["card_id"], "windows": ["10m", "1h", "24h"],
                                                     "aggregates": ["count", "sum:amount", "max:amount"]}}],
        "tenants": [{"tenant_id": "acme", "intents": ["card_fraud"], "bands": {"review": 0.9}}],
        "runtime": {"state_dir": folder}})


def run(events: int, entities: int, batch: int, folder: str) -> dict:
    engine = StateEngine(_settings(folder), slot=0)
    engine.stores[("bench", 0)] = PartitionStore(engine.folder / "bench-0", "bench", 0)
    engine._synced = float("inf")  # no broker here: no sync offsets are read
    rng = np.random.default_rng(1)
    model = SimpleNamespace(intent="card_fraud")
    spent = cpu = 0  # wall and CPU time (a loaded machine's wall time includes waiting for a core)
    for start in range(0, events, batch):
        n = min(batch, events - start)
        cards = rng.integers(0, entities, n)
        amounts = rng.integers(1, 1000, n)
        msgs = []
        for j in range(n):
            i = start + j
            t = T0 + i * 10
            ev = {"event_id": f"e{i}", "tenant_id": "acme", "event_time": t, "card_id": f"c{cards[j]}",
                  "features": {"amount": int(amounts[j])}}
            msgs.append(Message(topic="bench", partition=0, offset=i, key=ev["card_id"].encode(),
                                value=orjson.dumps(ev)))
        cols = _columns(msgs, engine.capture)  # what the worker's scanner hands the state (the scorer's cost)
        t1, c1 = time.perf_counter_ns(), time.process_time_ns()
        engine.compute(cols, [(model, np.arange(n))])
        engine._batch = []  # no broker here: the changelog records are what a worker would produce
        engine.committed()
        spent += time.perf_counter_ns() - t1
        cpu += time.process_time_ns() - c1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine.close()
    return {"events": events, "entities": entities, "us_per_event": round(spent / 1e3 / events, 2),
            "cpu_us_per_event": round(cpu / 1e3 / events, 2),
            "events_per_s": round(events / (spent / 1e9)), "peak_rss_mb": round(peak_mb, 1)}


def _columns(msgs: list, capture: tuple[str, ...]) -> SimpleNamespace:
    """The batch's columns as the worker's state step gets them (scoring/columns.py): the scanner's kept fields
    where it is built, else nothing kept (the state then parses each event itself)."""
    values = [m.value() for m in msgs]
    native = module()
    n = len(msgs)
    if native is None or not capture:
        eids = np.array([orjson.loads(v)["event_id"] for v in values], dtype=object)
        times = np.array([orjson.loads(v)["event_time"] for v in values], dtype=np.int64)
        return SimpleNamespace(msgs=_objects(msgs), eids=eids, tids=_objects(["acme"] * n), times=times)
    eids, codes, _, times, names, x, present, captured = scan_values(native, values, 1 << 20, capture)
    return SimpleNamespace(msgs=_objects(msgs), eids=_objects(eids), tids=_objects(["acme"] * n), times=times,
                           scanned=codes >= 0, names=names, x=x, present=present, captured=captured)


def _objects(items: list) -> np.ndarray:
    return np.fromiter(items, dtype=object, count=len(items))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--folder", default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="muse-state-bench-") as tmp:
        print(orjson.dumps(run(a.events, a.entities, a.batch, a.folder or tmp)).decode())


if __name__ == "__main__":
    main()
