"""`muse-stream status`: workers, lag, events/s, active and shadow versions, bands, alert rates and drift on
one screen (plain text when piped) or as JSON; exit 0 healthy, 1 unhealthy, 2 no cluster (telemetry/status.py
says what unhealthy means)."""

from __future__ import annotations

import argparse

from muse_stream.cli import add_config_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="one screen: workers, lag, events/s, versions, bands, alert rates, drift; exit 1 if unhealthy",
        description="Exit codes: 0 healthy; 1 unhealthy (no worker endpoint answers, a worker is not ready, or "
                    "the input is stalled: lag and no committed offset moving); 2 the cluster cannot be reached.")
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
    p.add_argument("--lag-window", type=float, default=None, metavar="S",
                   help="when the group has lag, read it again S seconds later to tell a stalled input "
                        "(default: max(2, 3 x runtime.commit_interval_ms); 0: no second read)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    import orjson

    from muse_stream.config import load_settings
    from muse_stream.errors import ConfigError
    from muse_stream.telemetry.status import check_cluster, collect, default_lag_window, worker_urls
    from muse_stream.telemetry.status_screen import make_console, render

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    workers = settings.runtime.workers if args.workers is None else args.workers
    if workers < 1 or args.slot < 0:
        raise ConfigError("--workers must be >= 1 and --slot >= 0")
    if args.lag_window is not None and not args.lag_window >= 0:
        raise ConfigError(f"--lag-window must be >= 0 seconds, not {args.lag_window}")
    for url in args.endpoint:
        try:
            u = urlsplit(url)
            ok = u.scheme in ("http", "https") and bool(u.hostname) and " " not in u.netloc
            u.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"--endpoint {url!r} is not an http(s) URL such as http://host:9400")
    check_cluster(settings)  # no cluster, or refused credentials: one line and a non-zero exit (cli.main)
    urls = args.endpoint or worker_urls(settings, workers=workers, first_slot=args.slot)
    window = default_lag_window(settings) if args.lag_window is None else args.lag_window
    report = collect(settings, urls, timeout=args.timeout, lag_window_s=window)
    if args.json:
        import sys

        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    else:
        render(report, make_console())
    return 0 if report["health"]["healthy"] else 1
