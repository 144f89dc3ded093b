"""The scorer's per-event cost on its two paths, compiled and pure Python, A/B interleaved: in process, the
benchmark's events (bench/telemetry_overhead.py: 30 features, 4 tenants, 2 intents, boosters of 200 trees)
with reason codes off, so the figures are parsing, matrices and formatting, not TreeSHAP.

Per batch, both paths run on the same messages one after the other (the order alternating), so a busy machine
slows both alike. Printed: median microseconds per event of parse + routing + matrix (admit_columns and
group_matrix) and of the whole BatchScorer.process, per path, and the ratio; and whether both paths gave the
same decision bytes on every batch.

    .venv/bin/python scripts/parse_ab.py [--batches 60] [--batch-size 2000] [--trees 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson
from confluent_kafka import Message

from muse_stream.bench.telemetry_overhead import _INTENTS, batches, setup
from muse_stream.config import IntentConfig
from muse_stream.scoring import native
from muse_stream.scoring.columns import admit_columns, group_matrix
from muse_stream.scoring.contract import Router
from muse_stream.scoring.scorer import BatchScorer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--trees", type=int, default=200)
    args = p.parse_args(argv)
    stack = setup(trees=args.trees)
    intents = tuple(IntentConfig(name=i, reason_codes=0) for i in _INTENTS)
    paths = {"native": native.module(True), "python": None}
    scorers = {name: BatchScorer(stack.tenants, stack.models, max_abs_feature=1e30, max_event_bytes=1_000_000,
                                 output_topic=lambda tid: f"bench.decisions.{tid}", intents=intents,
                                 native=mod is not None) for name, mod in paths.items()}
    parse_us: dict[str, list[float]] = {n: [] for n in paths}
    total_us: dict[str, list[float]] = {n: [] for n in paths}
    same = True
    # Only the bytes are kept between batches; each batch's Messages are made just before it is scored and
    # dropped after, as in a worker (a heap holding every batch's Messages makes the garbage collector's full
    # passes, and so every figure, several microseconds per event slower).
    data = [[(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()) for m in b]
            for b in batches(args.batches + 2, args.batch_size)]
    for k, fields in enumerate(data):
        msgs = [Message(topic=t, partition=p, offset=o, key=key, value=v, timestamp=ts)
                for t, p, o, key, v, ts in fields]
        order = list(paths) if k % 2 else list(reversed(paths))
        outs = {}
        for name in order:
            router = Router(stack.tenants.tenants, stack.models)
            t0 = time.perf_counter_ns()
            cols, groups, _ = admit_columns(msgs, router, 1_000_000, paths[name])
            for model, rows in groups:
                group_matrix(cols, rows, model.features, 1e30, model.unknown)
            t1 = time.perf_counter_ns()
            outs[name] = scorers[name].process(msgs, 1_700_000_000_000)
            t2 = time.perf_counter_ns()
            if k >= 2:  # the first two batches warm caches and the boosters up
                parse_us[name].append((t1 - t0) / 1e3 / len(msgs))
                total_us[name].append((t2 - t1) / 1e3 / len(msgs))
        same &= outs["native"].decisions == outs["python"].decisions
    report = {"batches": args.batches, "batch_size": args.batch_size, "trees": args.trees, "reason_codes": 0,
              "active_path_by_default": native.active_path(), "identical_decisions": same}
    for label, figures in (("parse_route_matrix_us_per_event", parse_us), ("process_us_per_event", total_us)):
        med = {n: round(statistics.median(v), 3) for n, v in figures.items()}
        report[label] = {**med, "python/native": round(med["python"] / med["native"], 2)}
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
