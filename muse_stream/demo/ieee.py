"""The second demo: entity features on real e-commerce data (IEEE-CIS), offline and through Kafka.

    python -m muse_stream.demo.ieee [--offline] [--columns raw|all] [--eval-days N] [--workers N]
    ./scripts/demo_ieee.sh  (the same, after the usual set-up)

It loads the data (fetched once into the cache), computes every transaction's entity features by brute
force, trains the same XGBoost with and without them on days 1-121 and reports AUC and recall at a 1% alert
rate on days 152-183. Then, unless --offline, it replays the evaluation window (with a 7-day warm-up) through
a real broker to two workers that compute the entity features themselves, reads the decisions back with
read_committed, and reports the same figures from the decisions, checks exactly one output per input, and
that every evaluated event's stream features equal the offline ones. Exit 0 when both checks hold.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from muse_stream.demo import ieee_models as im
from muse_stream.errors import MuseError

HEADER = ["| model | events | frauds | AUC | recall at 1% |", "|---|---:|---:|---:|---:|"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo_ieee", description=__doc__.split("\n\n")[0])
    p.add_argument("--offline", action="store_true", help="offline figures only, no Kafka")
    p.add_argument("--columns", choices=("raw", "all"), default="raw",
                   help="base features: the event's own fields (raw, default) or every column (all: adds the "
                        "data provider's C and V counters)")
    p.add_argument("--eval-days", type=int, default=None,
                   help="replay only the first N days of the evaluation window through Kafka (default: all 32)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--bootstrap", default=None, help="an existing cluster (default: MUSE_BOOTSTRAP, else a local "
                                                     "broker started and stopped)")
    p.add_argument("--config", default=None)
    p.add_argument("--out", default="out")
    p.add_argument("--keep-topics", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except MuseError as e:
        print(f"demo_ieee: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from muse_stream.demo.ieee_data import load_ieee

    def say(text: str) -> None:
        print(text, flush=True)

    t0 = time.monotonic()
    say("loading the IEEE-CIS transactions (fetched once into the cache) ...")
    data = load_ieee()
    say(f"computing {len(im.SPEC.feature_names())} entity features of {len(data):,} transactions by brute force "
        f"({im.ENTITY} = {'+'.join(im.ENTITY_PARTS)}; windows {', '.join(im.SPEC.windows)}) ...")
    feats = im.entity_features(data)
    say(f"training with and without them ({args.columns} base features) ...")
    pair = im.train_pair(data, feats, args.columns)
    y = data.y[pair.eval_rows]
    result: dict = {"columns": args.columns, "train_days": im.TRAIN_DAYS, "eval_days": im.EVAL_DAYS,
                    "entity": im.ENTITY, "spec": im.SPEC.to_record(),
                    "offline": {"without": vars(im.figures(pair.base_scores, y)),
                                "with": vars(im.figures(pair.stateful_scores, y))}}
    say(f"\noffline, days {im.EVAL_DAYS[0]}-{im.EVAL_DAYS[1] - 1}, {args.columns} base features:")
    say("\n".join([*HEADER, im.figures(pair.base_scores, y).row("without entity features"),
                   im.figures(pair.stateful_scores, y).row("with entity features")]))
    ok = True
    if not args.offline:
        ok = _through_kafka(args, data, feats, pair, result, say)
    result["seconds"] = round(time.monotonic() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ieee.json").write_text(json.dumps(result, indent=1, default=str))
    say(f"\nfigures: {out / 'ieee.json'} ({result['seconds']:.0f} s)")
    return 0 if ok else 1


def _through_kafka(args, data, feats, pair: im.Pair, result: dict, say) -> bool:
    from muse_stream.demo import ieee_stream as st

    opts = st.StreamOptions(eval_days=args.eval_days, workers=args.workers, bootstrap=args.bootstrap,
                            config=args.config, out_dir=Path(args.out), keep_topics=args.keep_topics)
    res = st.run_stream(opts, data, feats, pair, say)
    got, rows = res["collected"], res["evaluated"]
    y = data.y[rows]
    days = (im.EVAL_DAYS[0], im.EVAL_DAYS[0] + (args.eval_days or im.EVAL_DAYS[1] - im.EVAL_DAYS[0]))
    # The offline scores of the same rows, to set beside the stream's.
    where = np.searchsorted(pair.eval_rows, rows)
    lines = [*HEADER]
    figs = {}
    for name, prefix, offline in (("without", "p", pair.base_scores), ("with", "s", pair.stateful_scores)):
        scores = st.stream_scores(data, rows, got, prefix)
        scored = ~np.isnan(scores)
        f = im.figures(scores[scored], y[scored])
        figs[name] = {**vars(f), "max_abs_diff_vs_offline": float(np.nanmax(np.abs(scores - offline[where])))}
        lines += [im.figures(offline[where], y).row(f"{name} entity features, offline"),
                  f.row(f"{name} entity features, through Kafka")]
    compared, differ, first = st.compare_features(data, feats, rows, got)
    say(f"\nthrough Kafka ({args.workers} workers, exactly-once), days {days[0]}-{days[1] - 1} "
        f"(after a {im.WARMUP_DAYS}-day warm-up):")
    say("\n".join(lines))
    say(f"{res['expected']:,} events in, {got.count:,} outputs read back in {res['seconds']:.0f} s "
        f"({len(got.scores):,} decisions, dead letters {dict(got.dead) or 'none'}, {got.duplicates} duplicates); "
        f"raw scores differ from the offline ones by at most "
        f"{max(v['max_abs_diff_vs_offline'] for v in figs.values()):.2g}")
    say(f"entity features of {compared:,} evaluated events: {compared - differ:,} equal to the offline brute "
        f"force, {differ} differ" + (f" (first: {first})" if first else ""))
    result["kafka"] = {**figs, "days": days, "events_in": res["expected"], "outputs": got.count,
                       "dead_letters": dict(got.dead), "duplicates": got.duplicates, "seconds": res["seconds"],
                       "features_compared": compared, "features_differ": differ, "workers": args.workers}
    exact = got.count == res["expected"] and got.duplicates == 0
    if not exact:
        say("exactly-once check failed: see the counts above")
    if res["workers_exit"] != 0:
        say(f"the workers exited with code {res['workers_exit']}; see {res['out_dir']}")
    return exact and differ == 0 and compared == rows.size and res["workers_exit"] == 0


if __name__ == "__main__":
    sys.exit(main())
