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
    from pydantic import ValidationError

    from muse_stream.config import error_text, load_settings
    from muse_stream.errors import ConfigError
    from muse_stream.logs import setup_logging
    from muse_stream.state.engine import check_state_dir
    from muse_stream.worker.supervisor import run_workers

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    # The flags are validated as the config's own fields (runtime.workers is 1..256), then win over the file.
    override = {k: v for k, v in (("processing_guarantee", args.guarantee), ("workers", args.workers)) if v}
    if override:
        try:
            settings = settings.with_overrides(runtime=override)
        except ValidationError as e:
            raise ConfigError(f"run: {error_text(e).replace('runtime.workers', '--workers')}") from None
    check_state_dir(settings)
    workers = settings.runtime.workers
    setup_logging(verbose=args.verbose, fmt=settings.telemetry.log_format)
    return run_workers(settings, workers=workers, first_slot=args.slot, verbose=args.verbose)
