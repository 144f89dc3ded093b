"""`muse-stream replay`: the real pipeline over a range of the input topic, into topics of its own."""

from __future__ import annotations

import argparse

from muse_stream.cli import add_config_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="score a range of the input topic into a separate namespace of topics")
    add_config_args(p)
    p.add_argument("--from", dest="start", default="start", help="epoch ms, ISO time, offset:N, or start")
    p.add_argument("--to", dest="end", default="end", help="exclusive end, as --from, or end (default)")
    p.add_argument("--run-id", default=None, help="names the output topics (default: the time)")
    p.add_argument("--prefix", default="muse.replay.", help="topic prefix (default muse.replay.)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from muse_stream.analysis.replay import run_replay
    from muse_stream.config import load_settings
    from muse_stream.kafka.ranges import parse_bound

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    res = run_replay(settings, start=parse_bound(args.start, default="start"), end=parse_bound(args.end, default="end"),
                     run_id=args.run_id, prefix=args.prefix)
    print(f"replay {res.run_id}: {res.events} events -> {res.decisions} decisions, {res.dead_letters} dead letters "
          f"in {res.seconds:.1f} s")
    for t in res.topics:
        print(f"  {t}")
    return 0
