"""`muse-stream status`: workers, lag, events/s, active versions, alert rates and drift on one screen."""

from __future__ import annotations

import argparse

from muse_stream.cli import add_config_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="one screen: workers, lag, events/s, active versions, alert rates, drift"
    )
    add_config_args(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker slots to ask, from --slot (default: runtime.workers)",
    )
    p.add_argument(
        "--slot", type=int, default=0, help="first worker slot (its endpoint is metrics_port + slot)"
    )
    p.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="URL",
        help="a worker endpoint such as http://host:9400 (repeatable; replaces the slot ports)",
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each worker endpoint")
    p.add_argument("--json", action="store_true", help="print the report as JSON, for scripts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import orjson

    from muse_stream.config import load_settings
    from muse_stream.errors import ConfigError
    from muse_stream.telemetry.status import check_cluster, collect, render, worker_urls

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    workers = args.workers or settings.runtime.workers
    if workers < 1 or args.slot < 0:
        raise ConfigError("--workers must be >= 1 and --slot >= 0")
    check_cluster(settings)  # no cluster, or refused credentials: one line and a non-zero exit (cli.main)
    urls = args.endpoint or worker_urls(settings, workers=workers, first_slot=args.slot)
    report = collect(settings, urls, timeout=args.timeout)
    if args.json:
        import sys

        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        return 0
    from rich.console import Console

    render(report, Console())
    return 0
