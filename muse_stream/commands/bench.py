"""`muse-stream bench`: throughput against the Kafka ceiling, latency at an offered rate, and a model swap.

Against the configured cluster (--config / --bootstrap), or the local broker, started for the bench when
none answers and none was named, and stopped afterwards only then. Everything the bench creates is named
bench.<run id>.* and deleted at the end unless --keep-topics.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime

from muse_stream.cli import add_config_args

logger = logging.getLogger(__name__)
RUNS = ("ceiling", "runtime", "no-telemetry", "runtime-w", "pinned", "runtime-alo", "floor", "latency", "swap",
        "stages")  # the runs bench/suite.py makes, in order, that --skip names


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the runtime: throughput vs the Kafka ceiling, latency, swap")
    add_config_args(p)
    p.add_argument("--events", type=int, default=300_000,
                   help="events pre-produced for the throughput runs (default 300,000)")
    p.add_argument("--partitions", type=int, default=8, help="input topic partitions (default 8)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the multi-worker run (default 2)")
    p.add_argument("--rate", type=float, default=5000.0,
                   help="offered events/s of the latency and swap runs (default 5,000, where the latency targets "
                        "are set; at another rate they are reported, not judged)")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="length of each latency run (default 20)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds at the start of a latency run not counted")
    p.add_argument("--trees", type=int, default=200, help="trees per synthetic booster (depth 6; default 200)")
    p.add_argument("--batch-max-events", type=int, default=None, help="override batch.max_events")
    p.add_argument("--batch-max-wait-ms", type=int, default=None, help="override batch.max_wait_ms")
    p.add_argument("--commit-interval-ms", type=int, default=None, help="override runtime.commit_interval_ms")
    p.add_argument("--ab-pairs", type=int, default=2,
                   help="telemetry on/off pairs of the 1-worker exactly-once run, interleaved (default 2: A B B A)")
    p.add_argument("--stage-events", type=int, default=40_000,
                   help="events per batch size for the in-process stage breakdown (default 40,000)")
    p.add_argument("--skip", default="", help=f"comma-separated runs to skip: {', '.join(RUNS)}")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="where to write the JSON report (default: out/bench/bench-<run id>.json)")
    p.add_argument("--keep-topics", action="store_true", help="keep the bench's topics and groups afterwards")
    p.add_argument("--reasons-only", action="store_true",
                   help="only what reason codes cost: in-process scorer events/s off vs on at 2%% and 10%% flagged")
    p.add_argument("--state", action="store_true",
                   help="add the entity-state section: exactly-once without state, with the design's floor "
                        "(a store read, write and changelog record per event, nothing computed) and with state; "
                        "restore, RSS")
    p.add_argument("--state-only", action="store_true", help="run only the entity-state section")
    p.add_argument("--state-events", type=int, default=1_200_000, help="events of the state runs (default 1.2M)")
    p.add_argument("--state-entities", type=int, default=1_000_000,
                   help="distinct cards of the state runs (default 1,000,000)")
    p.add_argument("--state-pairs", type=int, default=1, help="off/floor/on rounds of the state runs (2: A B C C B A)")
    from muse_stream.bench.reasons import add_args as add_reasons_args

    add_reasons_args(p)
    p.set_defaults(func=run)


def _broker(settings, given: bool):
    """(broker we started or None, broker pid if local and ours, broker version). Starts one when allowed."""
    from muse_stream.errors import BrokerError
    from muse_stream.kafka.local import LocalBroker, answers_metadata

    boot = settings.kafka.bootstrap_servers
    host, _, port = boot.split(",")[0].rpartition(":")
    local = host in ("127.0.0.1", "localhost") and port.isdigit()
    started = None
    if not answers_metadata(boot, timeout=5.0):
        if given or not local:
            raise BrokerError(f"no Kafka broker answers at {boot}")
        print(f"no broker answers at {boot}: starting a local one for the bench", file=sys.stderr)
        started = LocalBroker(int(port), set_aside_newer=True)
        started.start()
    if local:
        st = LocalBroker(int(port)).status()
        return started, st.pid, st.version
    return started, None, None


def _delete(settings, topics: list[str], groups: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    from muse_stream.kafka.clients import admin_config

    admin = AdminClient(admin_config(settings))
    for name, fut in (admin.delete_topics(topics, operation_timeout=30) if topics else {}).items():
        try:
            fut.result(timeout=60)
        except Exception as e:  # noqa: BLE001 - cleanup is best effort, and says what it left
            logger.warning("could not delete topic %s: %s", name, e)
    if groups:
        try:
            for fut in admin.delete_consumer_groups(groups, request_timeout=30).values():
                try:
                    fut.result(timeout=60)
                except Exception as e:  # noqa: BLE001 - a group that never committed does not exist
                    logger.debug("consumer group not deleted: %s", e)
        except Exception as e:  # noqa: BLE001
            logger.warning("could not delete consumer groups: %s", e)


def run(args: argparse.Namespace) -> int:
    from muse_stream.errors import ConfigError

    if args.state_events < 1 or args.state_entities < 1 or args.state_pairs < 1 or args.reasons_rounds < 1:
        raise ConfigError("--state-events, --state-entities, --state-pairs and --reasons-rounds must be positive")
    if args.reasons_only:  # in process, no broker (bench/reasons.py)
        from muse_stream.bench.reasons import run as run_reasons

        return run_reasons(args, args.json)
    from pydantic import ValidationError

    from muse_stream.bench.load import (
        INTENTS,
        SWAP_INTENT,
        TENANTS,
        EventFactory,
        ModelSpec,
        preproduce,
        train_and_publish,
    )
    from muse_stream.bench.report import (
        add_ratios,
        check_writable,
        evaluate_targets,
        format_report,
        machine_info,
        telemetry_ab,
        versions_info,
        write_json,
    )
    from muse_stream.bench.runs import BenchContext
    from muse_stream.bench.suite import run_latency, run_stages, run_throughput
    from muse_stream.config import Settings, error_text, load_settings
    from muse_stream.kafka.topics import COMPACTED, TopicSpec
    from muse_stream.tenants import put_tenants

    skip = {s.strip() for s in args.skip.split(",") if s.strip()} | (set(RUNS) if args.state_only else set())
    if skip - set(RUNS):
        raise ConfigError(f"--skip: unknown run(s) {sorted(skip - set(RUNS))}; known: {', '.join(RUNS)}")
    if skip >= set(RUNS) and not (args.state or args.state_only):
        raise ConfigError("--skip leaves no run to make (add --state for the entity-state section, or skip less)")
    if (args.events < 1 or args.partitions < 1 or args.workers < 1 or not 0 < args.rate < float("inf")
            or not 0 < args.latency_seconds < float("inf") or args.ab_pairs < 1 or args.stage_events < 1
            or args.trees < 1):
        raise ConfigError("--events, --partitions, --workers, --rate, --latency-seconds, --ab-pairs, "
                          "--stage-events and --trees must be positive (and finite)")
    if not 0 <= args.warmup < args.latency_seconds:
        raise ConfigError("--warmup must be at least 0 and shorter than --latency-seconds")
    loaded = load_settings(args.config, bootstrap=args.bootstrap)
    given = bool(args.bootstrap or os.environ.get("MUSE_BOOTSTRAP") or args.config)
    started_at = datetime.now(UTC)
    t_begin = time.monotonic()
    run_id = started_at.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    prefix = f"bench.{run_id}."
    json_path = args.json or os.path.join("out", "bench", f"bench-{run_id}.json")
    check_writable(json_path)  # before minutes of runs, not after them

    data = loaded.model_dump()
    data["tenants"] = [t.model_dump() for t in TENANTS]
    data["intents"] = [{"name": i} for i in INTENTS]
    data["topics"].update(events=f"{prefix}in", events_partitions=args.partitions, models=f"{prefix}models",
                          tenants=f"{prefix}tenants", deadletter=f"{prefix}setup.deadletter",
                          decisions_prefix=f"{prefix}setup.decisions.", shadow_prefix=f"{prefix}setup.shadow.")
    data["runtime"].update(group_id=f"{prefix}setup", transactional_id_prefix=prefix.rstrip("."))
    if args.batch_max_events is not None:
        data["batch"]["max_events"] = args.batch_max_events
    if args.batch_max_wait_ms is not None:
        data["batch"]["max_wait_ms"] = args.batch_max_wait_ms
    if args.commit_interval_ms is not None:
        data["runtime"]["commit_interval_ms"] = args.commit_interval_ms
    try:
        base = Settings.model_validate(data)
    except ValidationError as e:  # --batch-max-events 0: one line naming the field, as for a config file
        raise ConfigError(f"bench settings: {error_text(e)}") from None

    started, broker_pid, broker_version = _broker(base, given)
    factory = EventFactory()
    ctx = BenchContext(base=base, prefix=prefix, input_topic=base.topics.events, events=args.events,
                       partitions=args.partitions, factory=factory, broker_pid=broker_pid, verbose=args.verbose)
    report: dict = {
        "schema": "muse-stream-bench/1", "run_id": run_id, "started_at": started_at.isoformat(),
        "command": ["muse-stream", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("muse-stream") else None,
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "machine": machine_info(), "versions": versions_info(broker_version),
        "parameters": {
            "events": args.events, "partitions": args.partitions, "workers": args.workers,
            "offered_rate": args.rate, "latency_seconds": args.latency_seconds, "warmup_s": args.warmup,
            "bootstrap": base.kafka.bootstrap_servers, "broker_started_by_bench": started is not None,
            "batch_max_events": base.batch.max_events, "batch_max_wait_ms": base.batch.max_wait_ms,
            "commit_interval_ms": base.runtime.commit_interval_ms,
            "transaction_timeout_ms": base.runtime.transaction_timeout_ms,
            "decisions_partitions": base.topics.decisions_partitions, "offered_load_producer_linger_ms": 0,
            "tenants": [t.tenant_id for t in TENANTS], "intents": list(INTENTS), "features": 30, "models": [],
            "skipped": sorted(skip),
        },
        "throughput": [], "latency": [], "swap": None, "pinned": None, "stages": None, "errors": [],
    }
    groups: list[str] = []
    say = (lambda msg: print(msg, file=sys.stderr, flush=True))
    # A SIGTERM (`timeout`, a CI job's end) stops the run as Ctrl-C does: workers stopped, topics deleted, the
    # partial report written.
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        ctx.create(base, [TopicSpec(base.topics.models, 1, COMPACTED), TopicSpec(base.topics.tenants, 1, COMPACTED),
                          TopicSpec(base.topics.events, args.partitions)])
        put_tenants(base, list(TENANTS))
        say(f"bench {run_id}: training and publishing the models ({args.trees} trees, depth 6)")
        specs = [ModelSpec("card_fraud", seed=1, rounds=args.trees, shift=0.0),
                 ModelSpec("account_takeover", seed=2, rounds=args.trees, shift=0.0)]
        for spec in specs:
            report["parameters"]["models"].append(train_and_publish(base, spec, activate=True))
        swap_spec = ModelSpec(SWAP_INTENT, seed=3, rounds=args.trees, shift=0.5)
        report["parameters"]["models"].append(train_and_publish(base, swap_spec, activate=False))
        swap_version = int(report["parameters"]["models"][-1]["model"].rsplit("@", 1)[1])
        say(f"pre-producing {args.events:,} events into {base.topics.events} ({args.partitions} partitions)")
        report["load"] = preproduce(base, base.topics.events, args.events, factory)
        say(f"  {report['load']['events_per_s']:,} events/s, {report['load']['mean_event_bytes']} bytes each")

        tp_timeout = max(300.0, args.events / 2000.0)
        run_throughput(ctx, report, groups, say, skip=skip, workers=args.workers, ab_pairs=args.ab_pairs,
                       timeout=tp_timeout)
        add_ratios(report["throughput"])
        run_latency(ctx, report, groups, say, skip=skip, rate=args.rate, seconds=args.latency_seconds,
                    warmup=args.warmup, swap_version=swap_version)
        run_stages(report, say, skip=skip, trees=args.trees, events=args.stage_events)
        if args.state or args.state_only:
            from muse_stream.bench.state_runs import run_state

            run_state(ctx, report, groups, say, events=args.state_events, entities=args.state_entities,
                      pairs=args.state_pairs, timeout=max(300.0, args.state_events / 2000.0))
    except KeyboardInterrupt:
        report["errors"].append("interrupted")
        print(f"muse-stream bench: interrupted; the partial report goes to {json_path}", file=sys.stderr)
        raise
    finally:
        report["telemetry_ab"] = telemetry_ab(report["throughput"])
        report["targets"] = evaluate_targets(report)
        from muse_stream.bench.state_runs import format_state, state_targets

        report["targets"] += state_targets(report)
        report["duration_s"] = round(time.monotonic() - t_begin, 1)
        report["finished_at"] = datetime.now(UTC).isoformat()
        checks = [r.get("check", {}).get("exactly_once") for r in
                  [*report["throughput"], *report["latency"], *([report["swap"]] if report["swap"] else []),
                   *(report.get("state") or {}).get("runs", [])]]
        # A report without a Kafka run (only the in-process stages) has no check to fail.
        report["ok"] = not report["errors"] and all(c is True for c in checks)
        path = write_json(report, json_path)
        if not args.keep_topics:
            try:
                _delete(base, ctx.topics, groups)
            except Exception as e:  # noqa: BLE001 - never hide the run's own outcome behind cleanup
                logger.warning("could not delete the bench topics (%s*): %s", prefix, e)
        if started is not None:
            started.stop()
        signal.signal(signal.SIGTERM, previous_term)
    print(format_report(report))
    if report.get("state"):
        print(format_state(report))
    print(f"JSON report: {path}")
    return 0 if report["ok"] else 1


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
