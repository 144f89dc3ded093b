"""`muse-stream run`: the scoring workers."""

from __future__ import annotations

import argparse

from muse_stream.cli import add_config_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run scoring workers in the consumer group")
    add_config_args(p)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: runtime.workers)")
    p.add_argument("--slot", type=int, default=0,
                   help="first worker slot; slots name stable transactional ids, so give each host its own range")
    p.add_argument("--guarantee", choices=["exactly-once", "at-least-once"], default=None,
                   help="override runtime.processing_guarantee")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings
    from muse_stream.errors import ConfigError
    from muse_stream.logs import setup_logging
    from muse_stream.worker.supervisor import run_workers

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    if args.guarantee:
        settings = settings.with_overrides(runtime={"processing_guarantee": args.guarantee})
    workers = args.workers or settings.runtime.workers
    if workers < 1 or args.slot < 0:
        raise ConfigError("--workers must be >= 1 and --slot >= 0")
    setup_logging(verbose=args.verbose, fmt=settings.telemetry.log_format)
    return run_workers(settings, workers=workers, first_slot=args.slot, verbose=args.verbose)
