"""`muse-stream kafka start|stop|status`: the local development broker."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kafka", help="start, stop or inspect the local development broker")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, default=9092, help="broker port on 127.0.0.1 (default 9092)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from muse_stream.kafka.local import LocalBroker

    broker = LocalBroker(args.port)
    if args.action == "start":
        print(broker.start().describe())
        return 0
    if args.action == "stop":
        stopped = broker.stop()
        print(f"stopped the broker at {broker.bootstrap}" if stopped else f"no broker of ours was running at {broker.bootstrap}")
        return 0
    status = broker.status()
    print(status.describe())
    return 0 if status.up else 1
