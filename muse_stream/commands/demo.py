"""`muse-stream demo`: a seamless model update on real card transactions, end to end."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="replay real card transactions; deploy a retrained model on the live stream")
    p.add_argument("--events", type=int, default=None,
                   help="held-out transactions replayed per day (default: all 68,567; each goes to 3 tenants)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--rate", type=int, default=10_000,
                   help="offered events/s, kept through the deployment (default 10000; 0 = unpaced)")
    p.add_argument("--out", default="out", help="output folder (default ./out)")
    p.add_argument("--bootstrap", default=None,
                   help="an existing Kafka cluster (default: MUSE_BOOTSTRAP, else a local broker started and stopped)")
    p.add_argument("--config", default=None, help="settings file (default config/muse.toml)")
    p.add_argument("--keep-topics", action="store_true", help="keep the demo's topics afterwards")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from muse_stream.demo.report import RAW_FACTOR, plot, print_report
    from muse_stream.demo.run import DemoOptions, run_demo
    from muse_stream.errors import ConfigError

    if args.workers < 1 or (args.events is not None and args.events < 10) or args.rate < 0:
        raise ConfigError("--workers must be >= 1, --events >= 10 and --rate >= 0")
    import logging
    import sys
    import time

    # The demo speaks through its own lines; library INFO logs would bury them (the workers log to a file).
    logging.getLogger("muse_stream").setLevel(logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 150)
    opts = DemoOptions(events=args.events, workers=args.workers, rate=args.rate, out_dir=Path(args.out),
                       bootstrap=args.bootstrap, config=args.config, keep_topics=args.keep_topics,
                       progress=not args.no_progress)
    began = time.monotonic()
    res = run_demo(opts, console)
    res["workers"] = args.workers
    res["rate"] = args.rate
    rows = print_report(console, res)
    png = plot(res, res["out_dir"] / "demo.png")
    rb = res["readback"]
    exact = rb.count == res["expected"] and rb.duplicates == 0
    moved = [r for r in rows if r.raw_ratio >= RAW_FACTOR or r.raw_ratio <= 1 / RAW_FACTOR]
    console.print(f"\n{sum(r.kept for r in rows)} of {len(rows)} tenants kept their alert rate within ±10% across "
                  f"the swap; raw scores would have moved {len(moved)} of them by 2x or more.")
    judged = [b for r in rows for b in r.band_rates if b.within is not None]
    console.print(f"{sum(b.within for b in judged)} of {len(judged)} rate bands alerted within ±20% of their "
                  "configured rate before the swap.")
    console.print(f"picture: {png}\nworker log: {res['out_dir'] / 'workers.log'}\n"
                  f"the demo took {time.monotonic() - began:.0f} s")
    if not exact:
        console.print("[red]exactly-once check failed: see the counts above[/]")
        return 1
    dep = res["deployment"]
    if dep is None or dep.state != "done":
        console.print(f"[red]the deployment did not end done: {dep.steps[-1].detail if dep else res['deploy_error']}[/]")
        return 1
    if res["workers_exit"] != 0:
        console.print(f"[red]the workers exited with code {res['workers_exit']}[/]")
        return 1
    return 0
