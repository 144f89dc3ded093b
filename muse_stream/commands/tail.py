"""`muse-stream tail TOPIC`: a topic's committed records as JSON lines, for people and scripts.

Like Kafka's console consumer with `--isolation-level read_committed`: an aborted transaction's records are
never shown. The reader is assigned every partition by hand and commits nothing, so tailing a topic never
moves a consumer group or disturbs the workers. One JSON object per record on stdout:

    {"topic", "partition", "offset", "timestamp" (epoch ms or null), "key", "key_format", "headers",
     "value", "value_format"}

value_format says how the bytes were made printable: "json" (the value parsed), "text" (UTF-8 that is not
JSON, as a JSON string: control characters escaped), "base64" (bytes that are not UTF-8) or null (a
tombstone). key_format is "text", "base64" or null. Headers are an object of name -> value (text or
"base64:..."); a name that repeats maps to a list. Dead letters keep their muse.* headers and original bytes.

`--reason` selects dead letters, so without TOPIC it reads the dead-letter topic even with `--tenant` (which
then filters it on the value's tenant_id), and a reason that is not one of the product's (scoring/deadletter.py
Reason) is refused: a typo would otherwise print nothing and exit 0, like a topic with no such records.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time

from muse_stream.cli import add_config_args

NO_END_S = 60.0  # without --follow: longest wait for a partition's end (an open transaction holds it back)


def _reader_gone(out) -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on the write end)."""
    import select

    try:
        p = select.poll()
        p.register(out.fileno(), select.POLLERR)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):  # not a file descriptor (a test's buffer), or no poll
        return False


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tail", help="print a topic's committed records as JSON lines (decisions, dead letters, any)",
                       description="Print a topic's committed records (read_committed) as JSON lines. Without "
                                   "--from-beginning: records written from now on, until interrupted or --count. "
                                   "With it: from the first record to the end the topic had at the start, or on "
                                   "with --follow.")
    add_config_args(p)
    p.add_argument("topic", nargs="?", default=None,
                   help="the topic (default: the dead-letter topic with --reason, else the tenant's decision "
                        "topic with --tenant)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at each partition's first record and stop at the end it had at the start")
    p.add_argument("-f", "--follow", action="store_true",
                   help="with --from-beginning: keep reading new records until interrupted (without "
                        "--from-beginning tail always waits for new records, as Kafka's console consumer does)")
    p.add_argument("-n", "--count", type=_positive, default=None, metavar="N", help="stop after N records")
    p.add_argument("--tenant", default=None, metavar="ID",
                   help="without TOPIC or --reason: that tenant's decision topic; else only records whose tenant_id "
                        "is ID")
    p.add_argument("--reason", default=None, metavar="R",
                   help="only dead letters with that reason (header muse.reason); without TOPIC: the dead-letter "
                        f"topic, with --tenant too. One of: {', '.join(_reasons())}")
    p.set_defaults(func=run)


def _reasons() -> list[str]:
    from muse_stream.scoring.deadletter import Reason

    return [r.value for r in Reason]


def _check_reason(reason: str | None) -> None:
    from muse_stream.errors import ConfigError

    if reason is not None and reason not in _reasons():
        raise ConfigError(f"--reason {reason!r} is not a dead-letter reason (reasons: {', '.join(_reasons())})")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _printable(raw: bytes | None, *, parse_json: bool) -> tuple[object, str | None]:
    import orjson

    if raw is None:
        return None, None
    if parse_json:
        try:
            return orjson.loads(raw), "json"
        except orjson.JSONDecodeError:
            pass
    try:
        return raw.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def _headers(pairs) -> dict:
    out: dict = {}
    for name, raw in pairs or ():
        value, fmt = _printable(raw, parse_json=False)
        value = f"base64:{value}" if fmt == "base64" else value
        if name in out:
            prev = out[name]
            out[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[name] = value
    return out


def to_record(msg) -> dict:
    """One consumed message as the JSON object `tail` prints."""
    key, key_format = _printable(msg.key(), parse_json=False)
    value, value_format = _printable(msg.value(), parse_json=True)
    ts_type, ts = msg.timestamp()
    return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
            "timestamp": ts if ts_type else None, "key": key, "key_format": key_format,
            "headers": _headers(msg.headers()), "value": value, "value_format": value_format}


def _wanted(rec: dict, tenant: str | None, reason: str | None) -> bool:
    if reason is not None and rec["headers"].get("muse.reason") != reason:
        return False
    if tenant is not None:
        v = rec["value"]
        return isinstance(v, dict) and v.get("tenant_id") == tenant
    return True


def _topic_for(args: argparse.Namespace, settings) -> tuple[str, str | None]:
    """The topic to read, and the tenant filter still to apply (None when the topic is the tenant's own)."""
    from muse_stream.errors import ConfigError
    from muse_stream.tenants import read_tenant_registry

    if args.topic:
        return args.topic, args.tenant
    if args.reason:  # dead letters are on the dead-letter topic, whichever tenant's they are
        return settings.topics.deadletter, args.tenant
    if args.tenant:
        reg = read_tenant_registry(settings)
        if args.tenant in reg.tenants:
            return settings.output_topic(reg.tenants[args.tenant]), None
        if args.tenant in reg.refused:
            # Only refused records: the tenant's decisions, if any, are where its refused record says (the
            # topic it would have), or on its default decision topic. Reading them changes nothing.
            return _refused_topic(settings, args.tenant, reg.refused_records.get(args.tenant)), None
        raise ConfigError(f"no tenant {args.tenant!r} on {settings.topics.tenants} "
                          f"(tenants: {', '.join(sorted(reg.tenants)) or 'none'})")
    raise ConfigError("tail needs a TOPIC, --tenant ID or --reason R")


def _refused_topic(settings, tenant: str, raw: bytes | None) -> str:
    """The output_topic a refused record names, when it is a usable topic name; else the default one."""
    import orjson

    from muse_stream.config import TenantConfig

    try:
        named = orjson.loads(raw or b"null")
        named = named.get("output_topic") if isinstance(named, dict) else None
        if isinstance(named, str) and named:
            return settings.output_topic(TenantConfig(tenant_id=tenant, intents=("-",), output_topic=named))
    except (orjson.JSONDecodeError, ValueError):
        pass  # not JSON, or no valid topic name: the default is where its decisions would be
    return settings.topics.decisions_topic(tenant)


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings
    from muse_stream.telemetry.status import check_cluster

    _check_reason(args.reason)  # an argument error, before the cluster is asked anything
    settings = load_settings(args.config, bootstrap=args.bootstrap)
    check_cluster(settings)  # no cluster: one line naming the address, exit 2
    topic, tenant = _topic_for(args, settings)
    # A closed pipe (`tail ... | head`) ends here as in every command: cli.main turns BrokenPipeError into 141.
    return _tail(settings, topic, args, tenant)


def _tail(settings, topic: str, args: argparse.Namespace, tenant: str | None) -> int:
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition

    from muse_stream.errors import KafkaOpError
    from muse_stream.kafka.clients import make_consumer, reader_config

    c = make_consumer(reader_config(settings, **{"enable.partition.eof": True, "fetch.wait.max.ms": 100}),
                      f"tail {topic}")
    try:
        try:
            md = c.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as e:
            raise KafkaOpError.wrap(f"reading {topic}", e.args[0]) from None
        if md is None or md.error is not None or not md.partitions:
            raise KafkaOpError(f"topic {topic} does not exist at {settings.kafka.bootstrap_servers}")
        start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
        parts = [TopicPartition(topic, p, start) for p in sorted(md.partitions)]
        # The ends as they are now: without --follow, what is past them was written after tail started.
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
        c.assign(parts)
        # New records only (no --from-beginning) means waiting for them, as Kafka's console consumer does.
        follow = args.follow or not args.from_beginning
        todo = {p for p, end in ends.items() if end > 0}
        out = sys.stdout.buffer
        shown, last_progress = 0, time.monotonic()
        while follow or todo:
            lines = []
            for msg in c.consume(num_messages=500, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(msg.partition())
                        continue
                    raise KafkaOpError.wrap(f"reading {topic}", err)
                last_progress = time.monotonic()
                p = msg.partition()
                if not follow and (p not in todo or msg.offset() >= ends[p]):
                    todo.discard(p)
                    continue
                if not follow and msg.offset() + 1 >= ends[p]:
                    todo.discard(p)
                rec = to_record(msg)
                if _wanted(rec, tenant, args.reason):
                    try:
                        lines.append(orjson.dumps(rec))
                    except TypeError:  # nested deeper than orjson writes (it reads more): the value as text
                        rec["value"], rec["value_format"] = _printable(msg.value(), parse_json=False)
                        lines.append(orjson.dumps(rec))
                    shown += 1
                    if args.count is not None and shown >= args.count:
                        break
            if lines:
                out.write(b"\n".join(lines) + b"\n")
                out.flush()  # a script reading the pipe sees each batch at once
            if args.count is not None and shown >= args.count:
                break
            if follow and not lines and _reader_gone(out):
                raise BrokenPipeError  # `tail -f | head -1`: stop now, not at the next record's write
            if not follow and todo:
                # Reached the end of what the consumer may read (read_committed: the last stable offset)?
                pos = {tp.partition: tp.offset for tp in c.position([TopicPartition(topic, p) for p in todo])}
                todo = {p for p in todo if pos.get(p, -1) < ends[p]}
                if todo and time.monotonic() - last_progress > NO_END_S:
                    raise KafkaOpError(f"{topic}: partitions {sorted(todo)} did not reach their end within "
                                       f"{NO_END_S:.0f}s (an open transaction holds them back?)")
        return 0
    finally:
        c.close()
