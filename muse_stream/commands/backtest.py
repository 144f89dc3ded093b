"""`muse-stream backtest`: a candidate model against the incumbent on a range of the input topic."""

from __future__ import annotations

import argparse
from pathlib import Path

from muse_stream.cli import add_config_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backtest", help="compare a candidate with the incumbent on a range of the input topic")
    add_config_args(p)
    p.add_argument("--intent", required=True)
    p.add_argument("--candidate", required=True, help="a booster file, or INTENT@VERSION from the models topic")
    p.add_argument("--from", dest="start", default="start",
                   help="range start: epoch ms, ISO time, offset:N, or start (default)")
    p.add_argument("--to", dest="end", default="end", help="range end (exclusive): as --from, or end (default)")
    p.add_argument("--labels", default=None, help="CSV, JSON lines or Parquet with columns event_id, label")
    p.add_argument("--calibration-fraction", type=float, default=0.3,
                   help="share of the range that fits a candidate without a transform (default 0.3)")
    p.add_argument("--negative-sampling-rate", type=float, default=None,
                   help="for a candidate file: negatives were kept at this rate in training")
    p.add_argument("--out", default=None, help="output folder (default out/backtest-<intent>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from muse_stream.analysis.backtest import PLOT_SKIPPED, run_backtest, summary_markdown, write_report
    from muse_stream.config import load_settings
    from muse_stream.kafka.ranges import parse_bound

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    start, end = parse_bound(args.start, default="start"), parse_bound(args.end, default="end")
    res = run_backtest(settings, intent=args.intent, candidate=args.candidate, start=start, end=end,
                       labels=args.labels, calibration_fraction=args.calibration_fraction,
                       negative_sampling_rate=args.negative_sampling_rate)
    out = Path(args.out or f"out/backtest-{args.intent}")
    paths = write_report(res, out)
    print(summary_markdown(res))
    print("written: " + ", ".join(str(p) for p in paths))
    if not any(p.suffix == ".png" for p in paths):
        print(PLOT_SKIPPED)
    return 0
