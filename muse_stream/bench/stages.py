"""Where a batch's time goes inside the scorer, stage by stage: in process, the real BatchScorer on the bench's
events (bench/telemetry_overhead.py builds the stack), with each function the scorer calls wrapped by a timer
for the length of the measurement, and Telemetry.on_batch after it, as the worker calls it.

Stages: parse_validate (the event contract and routing: admit_columns), feature_matrix (group_matrix: the
float32 matrix and the value limits), predict (model_outputs: the booster
and its checks), transform (the score transform), bands (thresholds per tenant), reasons (reason codes, when the
scorer has them), format (the scorer's decision writer, when it has one), other (what no timer covers: grouping,
refusals, and the decision loop of a scorer without a writer), then telemetry. A stage whose function the
scorer no longer calls by that name is reported as None, and its time shows in other.

`python -m muse_stream.bench.stages` prints the figures.
"""

from __future__ import annotations

import argparse
import importlib
import time
from contextlib import contextmanager

import orjson

STAGES = ("parse_validate", "feature_matrix", "predict", "transform", "bands", "reasons", "format", "other",
          "telemetry")
# (module, attribute path, stage): looked up when measuring, so a renamed function is reported, not a crash;
_TIMED = (
    ("muse_stream.scoring.scorer", "admit_columns", "parse_validate"),
    ("muse_stream.scoring.columns", "group_matrix", "feature_matrix"),  # called by columns.matrices
    ("muse_stream.scoring.scorer", "model_outputs", "predict"),
    ("muse_stream.models.transform", "ScoreTransform.apply", "transform"),
    ("muse_stream.scoring.scorer", "BatchScorer._bands", "bands"),
    ("muse_stream.scoring.reasons", "ReasonCodes.add", "reasons"),
)


@contextmanager
def _timers(ns: dict[str, int], scorer):
    """Wrap each timed function (module function or class method, and the scorer's decision writer when it has
    one) so its calls add to ns[stage]; restore after."""
    undo = []
    targets = []
    for module, path, stage in _TIMED:
        try:
            owner = importlib.import_module(module)
        except ImportError:
            continue
        *parents, attr = path.split(".")
        for p in parents:
            owner = getattr(owner, p, None)
        targets.append((owner, attr, stage))
    targets.append((scorer, "_write", "format"))  # the writer of the decision bytes (compiled or Python)
    for owner, attr, stage in targets:
        fn = getattr(owner, attr, None) if owner is not None else None
        if fn is None:
            continue

        def timed(*args, _fn=fn, _stage=stage, **kwargs):
            t = time.perf_counter_ns()
            try:
                return _fn(*args, **kwargs)
            finally:
                ns[_stage] += time.perf_counter_ns() - t

        setattr(owner, attr, timed)
        undo.append((owner, attr, fn))
        ns.setdefault(stage, 0)
    try:
        yield
    finally:
        for owner, attr, fn in reversed(undo):
            setattr(owner, attr, fn)


def measure(*, batch_sizes: tuple[int, ...] = (2000, 25), events: int = 40_000, trees: int = 200,
            depth: int = 6, seed: int = 0) -> dict:
    """Microseconds per event in each stage, for each batch size (`events` events per size, after a warm-up
    batch), and the scorer's total per batch."""
    from muse_stream.bench.telemetry_overhead import batches, setup
    from muse_stream.telemetry import Telemetry

    stack = setup(trees=trees, depth=depth, seed=seed)
    scorer, tel = stack.scorer, Telemetry(stack.worker)
    out: dict = {"trees": trees, "depth": depth, "scorer_path": _scorer_path(), "by_batch_size": {}}
    try:
        for size in batch_sizes:
            n_batches = max(2, events // size)
            data = batches(n_batches + 1, size, seed)
            ns: dict[str, int] = {"total": 0, "telemetry": 0}
            with _timers(ns, scorer):
                for i, msgs in enumerate(data):
                    if i == 1:  # the first batch warms caches and the boosters up: not counted
                        ns.update(dict.fromkeys(ns, 0))  # in place: the timers hold this dict
                    t0 = time.perf_counter_ns()
                    res = scorer.process(msgs, int(time.time() * 1000))
                    t1 = time.perf_counter_ns()
                    tel.on_batch(res, msgs, t0, t1)
                    ns["total"] += t1 - t0
                    ns["telemetry"] += time.perf_counter_ns() - t1
            counted = n_batches * size
            per = {k: ns[k] / 1000.0 / counted for k in ns}
            inner = [k for k in STAGES if k not in ("other", "telemetry")]
            stages = {k: (round(per[k], 3) if k in per else None) for k in inner}
            # What no timer covers: grouping, refusals, the decision loop when no writer is timed.
            stages["other"] = round(per["total"] - sum(per[k] for k in inner if k in per), 3)
            stages["telemetry"] = round(per["telemetry"], 3)
            out["by_batch_size"][str(size)] = {
                "batches": n_batches, "us_per_event": stages,
                "scorer_us_per_event": round(per["total"], 3),
                "scorer_us_per_batch": round(ns["total"] / 1000.0 / n_batches, 1),
                "telemetry_share_of_scorer_pct": round(100.0 * ns["telemetry"] / ns["total"], 2) if ns["total"] else None,
            }
    finally:
        tel.close()
    return out


def _scorer_path() -> str | None:
    """Which parse path the scorer runs (compiled or pure Python), when the scorer says."""
    try:
        return importlib.import_module("muse_stream.scoring.native").active_path()
    except (ImportError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m muse_stream.bench.stages", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=40_000, help="events per batch size (default 40,000)")
    p.add_argument("--batch-sizes", default="2000,25", help="comma-separated (default 2000,25)")
    p.add_argument("--trees", type=int, default=200)
    args = p.parse_args(argv)
    sizes = tuple(int(x) for x in args.batch_sizes.split(","))
    print(orjson.dumps(measure(batch_sizes=sizes, events=args.events, trees=args.trees),
                       option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
