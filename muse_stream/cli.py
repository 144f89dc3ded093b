"""The `muse-stream` command line: one parser, one sub-command per module in muse_stream/commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from muse_stream.errors import MuseError

# Each module defines add(subparsers), whose parsers set `func` (args -> exit code).
COMMAND_MODULES = ["kafka", "topics", "run", "publish", "models", "demo", "bench", "backtest", "replay", "status",
                   "tail", "tenants", "validate", "deploy"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="muse-stream", description="Multi-tenant fraud scoring on Kafka.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name == f"{__package__}.commands.{name}":
                continue  # not built yet
            raise
        module.add(sub)
    return parser


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The options every Kafka-facing command shares."""
    p.add_argument("--config", default=None, help="TOML settings file (default: config/muse.toml)")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (overrides the config and MUSE_BOOTSTRAP)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from muse_stream.logs import setup_logging

    # Tools speak through their own output; only the workers (`run`) log at INFO.
    setup_logging(verbose=args.verbose, level=logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except MuseError as e:
        print(f"muse-stream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`muse-stream tail ... | head`): stop quietly, as Unix tools do. Point stdout at
        # devnull so the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        # The output cannot be written (a full disk: `tail > /dev/full`), or another file refused: one line, as
        # for every other error, and nothing more at the interpreter's exit flush.
        where = f": {e.filename}" if e.filename else ""
        print(f"muse-stream: error: {e.strerror or e}{where}", file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2  # an error, as every other; 1 is status's "unhealthy" and validate's "some dead-lettered"


if __name__ == "__main__":
    sys.exit(main())
