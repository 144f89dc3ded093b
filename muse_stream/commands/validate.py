"""`muse-stream validate EVENTS_FILE --intent X [--json]`: what the live workers would do with a file of events.

Each line of the file is one event, the bytes a producer would publish (a trailing \\r is dropped; blank lines
are skipped). The events go through the live event contract (scoring/contract.py) with the tenants and the
models topic as they are now: parse, routing, unknown features under the intent's policy, value limits and the
version's own outputs; with entity state, the entity field and repeated event ids (a file has no Kafka keys,
so those are not checked). Nothing is written to Kafka.

Exit codes: 0 every event would be scored; 1 some would be dead-lettered; 2 the file, the config or the
cluster could not be used (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import orjson

from muse_stream.cli import add_config_args
from muse_stream.errors import ConfigError, DataError

BATCH = 5000


class _Line:
    """One line of the file as the contract reads an input record: its value (and, for reports, its line)."""

    __slots__ = ("lineno", "raw")

    def __init__(self, lineno: int, raw: bytes) -> None:
        self.lineno, self.raw = lineno, raw

    def value(self) -> bytes:
        return self.raw

    # Where entity state (state/reading.py) looks: one partition of one topic, the line as its offset, no key.
    def topic(self) -> str:
        return "file"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.lineno

    def key(self) -> None:
        return None


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a file of events (JSON lines) against the live contract offline",
                       description="Check a file of events, one JSON event per line, as the live workers would: "
                                   "how many they would score, and how many they would dead-letter, per reason. "
                                   "Exit 0: all scored; 1: some dead-lettered; 2: an error.")
    add_config_args(p)
    p.add_argument("events_file", metavar="EVENTS_FILE", help="one event per line, as producers publish them "
                   "('-' for standard input)")
    p.add_argument("--intent", required=True, help="the intent whose active version the events are for")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=run)


def read_lines(path: str | Path) -> list[_Line]:
    """The file's events, one per line; `-` is standard input."""
    if str(path) == "-":  # as Unix tools read it, so `some-dump | muse-stream validate - --intent X` works
        return _split(sys.stdin.buffer.read(), "standard input")
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, not a file of events") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e.strerror}") from None
    return _split(data, str(p))


def _split(data: bytes, name: str) -> list[_Line]:
    lines = [_Line(i, line[:-1] if line.endswith(b"\r") else line)
             for i, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    if not lines:
        raise DataError(f"{name}: no events (expected one JSON event per line)")
    return lines


def check_events(lines: list[_Line], tenants, models, *, max_event_bytes: int, max_abs_feature: float,
                 state=None) -> dict:
    """The live contract over the lines: counts of what would be scored (per version) and dead-lettered (per
    reason), with the first line and detail of each reason. `state`: a StateEngine (file_state) when an intent
    keeps entity state: it sees the events the matrices kept, and the model reads its features, as live."""
    from muse_stream.scoring import native
    from muse_stream.scoring.columns import contract_pass
    from muse_stream.scoring.contract import Router

    router = Router(tenants, models)  # the registries do not change while the file is checked
    dead: Counter[str] = Counter()
    scored: Counter[str] = Counter()
    examples: dict[str, dict] = {}
    for k in range(0, len(lines), BATCH):
        batch = lines[k:k + BATCH]
        # The live scorer's own pass, compiled scanner and entity state (its features in the model's matrix)
        # included.
        _, groups, refused = contract_pass(batch, router, max_event_bytes, max_abs_feature, native.module(),
                                           state=state)
        if state is not None:
            state.replayed()
        for i, r in refused:
            dead[r.reason.value] += 1
            ex = examples.get(r.reason.value)
            if ex is None or batch[i].lineno < ex["line"]:
                examples[r.reason.value] = {"line": batch[i].lineno, "detail": r.detail}
        for model, rows, _ in groups:
            scored[model.name] += int(rows.size)
    return {"events": len(lines), "scored": sum(scored.values()), "versions": dict(sorted(scored.items())),
            "dead_letters": {r: dead[r] for r in sorted(dead, key=lambda r: examples[r]["line"])},  # as first met
            "examples": examples}


def file_state(settings, folder: str):
    """A StateEngine over the file as one partition in a temporary store, or None when no intent keeps state.
    A file has no Kafka keys, so keys are not checked (wrong_key = "count"); a missing or unusable entity
    field and a repeated event id are found as the workers find them."""
    from muse_stream.config import Settings
    from muse_stream.state.engine import StateEngine

    if not any(i.state is not None for i in settings.intents):
        return None
    data = settings.model_dump()
    for i in data["intents"]:
        if i["state"] is not None:
            i["state"]["wrong_key"] = "count"
    return StateEngine.offline(Settings.model_validate(data), folder, "file", [0])


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings
    from muse_stream.models.store import read_models
    from muse_stream.tenants import read_tenants

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    # A misspelt intent is the config's to name, before Kafka is asked: the models topic would only say that it
    # has no active version. (A config naming no intents leaves the models topic to decide, as workers do.)
    settings.require_intent(args.intent)
    lines = read_lines(args.events_file)  # a bad file is one line before Kafka is touched
    models = read_models(settings, load=True)
    active = models.active_version(args.intent)
    if active is None:
        raise ConfigError(f"intent {args.intent!r} has no active version on {settings.topics.models}: the live "
                          "workers would dead-letter its events (no_active_model)")
    with tempfile.TemporaryDirectory(prefix="muse-validate-state-") as folder:
        state = file_state(settings, folder)
        try:
            report = check_events(lines, read_tenants(settings), models,
                                  max_event_bytes=settings.runtime.max_event_bytes,
                                  max_abs_feature=settings.runtime.max_abs_feature, state=state)
        finally:
            if state is not None:
                state.close()
    name = f"{args.intent}@{active}"
    policy = models.unknown_features(args.intent)
    report = {"file": str(args.events_file), "intent": args.intent, "active_version": name,
              "unknown_features": "reject" if policy.reject else "ignore", **report}
    other = sum(n for v, n in report["versions"].items() if not v.startswith(f"{args.intent}@"))
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        dead = report["dead_letters"]
        print(f"{args.events_file}: {report['events']} events, as the live workers would take them now "
              f"(active {name}, unknown_features = {report['unknown_features']})")
        print(f"  scored           {report['scored']:8}" + (f"  ({other} by another intent's version)" if other else ""))
        print(f"  dead-lettered    {sum(dead.values()):8}")
        for reason, n in dead.items():
            ex = report["examples"][reason]
            print(f"    {reason:18} {n:6}  first at line {ex['line']}: {ex['detail'][:200]}")
    return 1 if report["dead_letters"] else 0
