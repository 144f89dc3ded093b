"""`muse-stream run`: the scoring workers."""

from __future__ import annotations

import argparse

from muse_stream.cli import add_config_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run scoring workers in the consumer group")
    add_config_args(p)
    p.add_argument("--workers", type=_at_least(1), default=None,
                   help="worker processes, each supervised: restarted when it crashes or stalls "
                        "(default: runtime.workers)")
    p.add_argument("--slot", type=_at_least(0), default=0,
                   help="first worker slot; slots name stable transactional ids, so give each host its own range")
    p.add_argument("--guarantee", choices=["exactly-once", "at-least-once"], default=None,
                   help="override runtime.processing_guarantee")
    p.set_defaults(func=run)


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings
    from muse_stream.logs import setup_logging
    from muse_stream.worker.supervisor import run_workers

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    if args.guarantee:
        settings = settings.with_overrides(runtime={"processing_guarantee": args.guarantee})
    # `is None`, not `or`: the parser already refuses --workers 0; the config's count is validated >= 1.
    workers = settings.runtime.workers if args.workers is None else args.workers
    setup_logging(verbose=args.verbose, fmt=settings.telemetry.log_format)
    return run_workers(settings, workers=workers, first_slot=args.slot, verbose=args.verbose)
