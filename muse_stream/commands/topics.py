"""`muse-stream topics create|list [--json]`: every topic the product uses, created idempotently, or listed with
whether the cluster has it (exists / missing). Besides the workers' topics from the configuration
(kafka/topics.py), that is the labels topic, which the user's labelling job writes and `deploy`'s recall guard
reads, and the decision topic of each tenant recorded on the tenants topic (`tenants set` adds tenants the
configuration does not name, and may give one its own `--output-topic`)."""

from __future__ import annotations

import argparse

import orjson

from muse_stream.cli import add_config_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topics", help="create (idempotently) or list the topics muse-stream uses")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--json", action="store_true", help="list: one JSON document on stdout instead of text")
    add_config_args(p)
    p.set_defaults(func=run)


def _tenant_topics(settings, known: set[str], *, tenants_topic_exists: bool = True) -> list:
    """The decision topics of the tenants on the tenants topic, but those in `known` (the configuration's);
    none while the tenants topic does not exist (`topics create` makes it)."""
    from muse_stream.kafka.topics import TopicSpec
    from muse_stream.tenants import read_tenant_registry

    if not tenants_topic_exists:
        return []
    reg = read_tenant_registry(settings)
    names = sorted({reg.output_topic(tid) for tid in reg.tenants} - known)
    return [TopicSpec(name, settings.topics.decisions_partitions) for name in names]


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings
    from muse_stream.errors import ConfigError
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

    if args.json and args.action != "list":
        raise ConfigError("--json is for `topics list` (run it after `topics create`)")
    settings = load_settings(args.config, bootstrap=args.bootstrap)
    configured = settings.topics.replication_factor
    labels = TopicSpec(settings.topics.labels, settings.topics.decisions_partitions)
    planned = [*planned_topics(settings), labels]
    if args.action == "list":
        # Asks the cluster (one line naming the address, exit 2, when none answers): a list that succeeds
        # against a dead broker would tell a script the topics are there.
        existing = existing_topics(settings)
        specs = planned + _tenant_topics(settings, {s.name for s in planned},
                                         tenants_topic_exists=settings.topics.tenants in existing)
        rows = [{"name": s.name, "state": "exists" if s.name in existing else "missing", "partitions": s.partitions,
                 "replication": configured if configured is not None else "auto", "config": s.config}
                for s in specs]
        if args.json:
            print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
            return 0
        rf = configured if configured is not None else "auto (min(3, brokers))"
        for r in rows:
            # key=value pairs, comma-separated, as Kafka's own tools print a topic's configs.
            config = ",".join(f"{k}={v}" for k, v in r["config"].items())
            print(f"{r['name']}\t{r['state']}\tpartitions={r['partitions']}\treplication={rf}\t{config}")
        return 0
    results = ensure_all(settings)
    results |= create_topics(settings, [labels], replication_factor=configured)
    # Topics that existed keep the replication they were created with.
    print(f"new topics: {choose_replication(make_admin(settings), configured).describe()}")
    seeded = seed_tenants(settings)
    # Tenants added with `tenants set` have no topic in the configuration; the workers would create theirs at
    # their first start, but then `topics list` would show them missing after a create.
    results |= create_topics(settings, _tenant_topics(settings, {s.name for s in planned}),
                             replication_factor=configured)
    for name, outcome in results.items():
        print(f"{outcome:8} {name}")
    print(f"seeded {seeded} tenant record(s) on {settings.topics.tenants}")
    return 0
