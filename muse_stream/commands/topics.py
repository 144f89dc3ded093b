"""`muse-stream topics create|list`: every topic the configuration names, created idempotently, or listed
with whether the cluster has it (exists / missing). Besides the workers' topics (kafka/topics.py), that is the
labels topic, which the user's labelling job writes and `deploy`'s recall guard reads."""

from __future__ import annotations

import argparse

from muse_stream.cli import add_config_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topics", help="create (idempotently) or list the topics the configuration names")
    p.add_argument("action", choices=["create", "list"])
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings
    from muse_stream.kafka.topics import (
        TopicSpec,
        choose_replication,
        create_topics,
        ensure_all,
        existing_topics,
        make_admin,
        planned_topics,
    )
    from muse_stream.tenants import seed_tenants

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    configured = settings.topics.replication_factor
    labels = TopicSpec(settings.topics.labels, settings.topics.decisions_partitions)
    if args.action == "list":
        # Asks the cluster (one line naming the address, exit 2, when none answers): a list that succeeds
        # against a dead broker would tell a script the topics are there.
        existing = existing_topics(settings)
        rf = configured if configured is not None else "auto (min(3, brokers))"
        for spec in [*planned_topics(settings), labels]:
            state = "exists" if spec.name in existing else "missing"
            print(f"{spec.name}\t{state}\tpartitions={spec.partitions}\treplication={rf}\t{spec.config or ''}")
        return 0
    results = ensure_all(settings)
    results |= create_topics(settings, [labels], replication_factor=configured)
    # Topics that existed keep the replication they were created with.
    print(f"new topics: {choose_replication(make_admin(settings), configured).describe()}")
    for name, outcome in results.items():
        print(f"{outcome:8} {name}")
    seeded = seed_tenants(settings)
    print(f"seeded {seeded} tenant record(s) on {settings.topics.tenants}")
    return 0
