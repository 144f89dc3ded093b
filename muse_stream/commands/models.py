"""`muse-stream models list | show I[@V] | activate I@V [--at MS] | rollback I | shadow I@V|I --off [--json]`.

Every action asks the cluster first (one line naming the address, exit 2, when none answers), before any
reader, producer or transaction is made: those would log librdkafka's own errors and retry for minutes."""

from __future__ import annotations

import argparse
import time

import orjson

from muse_stream.cli import add_config_args
from muse_stream.errors import ConfigError


def parse_ref(ref: str, *, need_version: bool) -> tuple[str, int | None]:
    intent, sep, ver = ref.partition("@")
    if not intent or (sep and not ver.isdigit()) or (need_version and not sep):
        raise ConfigError(f"{ref!r}: expected INTENT@VERSION" if need_version else f"{ref!r}: expected INTENT[@VERSION]")
    return intent, int(ver) if sep else None


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, show, activate, roll back or shadow model versions")
    add_config_args(p)
    p.add_argument("action", choices=["list", "show", "activate", "rollback", "shadow"])
    p.add_argument("ref", nargs="?", help="INTENT or INTENT@VERSION")
    p.add_argument("--at", default=None, metavar="TIME",
                   help="activate: from this event time (epoch ms or ISO-8601, e.g. 2026-12-01T00:00:00Z)")
    p.add_argument("--off", action="store_true", help="shadow: stop shadow scoring for the intent")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout instead of text")
    p.set_defaults(func=run)


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


def _emit(doc) -> None:
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


def list_rows(reg) -> list[dict]:
    """One row per version on the topic, by intent then version: what `list` prints, as text or JSON."""
    rows = []
    for intent in sorted({i for i, _ in reg.versions} | set(reg.activations)):
        act = reg.activations.get(intent)
        shadow = reg.shadows.get(intent)
        for r in reg.versions_of(intent):
            active = bool(act and act.version == r.version)
            rows.append({"name": r.name, "intent": intent, "version": r.version, "created_at": r.created_at,
                         "features": len(r.features), "active": active,
                         "active_from": act.timeline[-1].from_time if active else None,
                         "active_before": not active and bool(act and any(e.version == r.version
                                                                          for e in act.timeline)),
                         "shadow": bool(shadow and shadow.version == r.version)})
    return rows


def _print_list(rows: list[dict], topic: str) -> None:
    if not rows:
        print(f"no model versions on {topic}")
    for r in rows:
        flags = []
        if r["active"]:
            since = r["active_from"]
            flags.append("active" + (f" from event time {since}" if since is not None else ""))
        elif r["active_before"]:
            flags.append("active before the switch")
        if r["shadow"]:
            flags.append("shadow")
        print(f"{r['name']:28} created {_when(r['created_at'])}  features={r['features']:3}  {' '.join(flags)}")


def describe_version(reg, intent: str, ver: int | None) -> dict:
    """What `show` prints, as text or JSON: the version (the active one when `ver` is None) and its contract."""
    if ver is None:
        ver = reg.active_version(intent)
        if ver is None:
            raise ConfigError(f"intent {intent!r} has no active version; name one as {intent}@N")
    rec = reg.versions.get((intent, ver))
    if rec is None:
        raise ConfigError(f"{intent}@{ver} is not on the models topic")
    act = reg.activations.get(intent)
    shadow = reg.shadows.get(intent)
    contract, problem = _contract(rec)
    return {"name": rec.name, "intent": intent, "version": ver, "created_at": rec.created_at,
            "sha256": rec.booster_sha256, "features": list(rec.features), "active": bool(act and act.version == ver),
            "shadow": bool(shadow and shadow.version == ver), "metadata": rec.metadata,
            "contract": contract.to_dict() if contract is not None else None, "contract_problem": problem,
            "tenant_maps": sorted(rec.transform.get("tenant_maps", {})),
            "timeline": [{"version": e.version, "from_time": e.from_time} for e in act.timeline] if act else []}


def _contract(rec):
    """The version's feature contract, and why it cannot be read (None, None: it records none)."""
    from muse_stream.errors import ModelError
    from muse_stream.models.feature_contract import FeatureContract

    if rec.feature_contract is None:
        return None, None
    try:
        return FeatureContract.from_dict(rec.feature_contract, rec.features), None
    except ModelError as e:
        return None, str(e)


def _print_version(doc: dict) -> None:
    from muse_stream.models.feature_contract import FeatureContract

    yes = {True: "yes", False: "no"}
    print(f"{doc['name']}\n  created     {_when(doc['created_at'])}\n  sha256      {doc['sha256']}\n"
          f"  features    {', '.join(doc['features'])}\n  active      {yes[doc['active']]}\n"
          f"  shadow      {yes[doc['shadow']]}")
    # Metadata keys are free-form and longer than the labels above: a block of their own, aligned on the
    # longest; values as --json writes them (null, true, 0.5), text as it is.
    meta = doc["metadata"]
    if meta:
        print("  metadata")
        width = max(map(len, meta))
        for k, v in meta.items():
            print(f"    {k:{width}}  {v if isinstance(v, str) else orjson.dumps(v).decode()}")
    # The version's feature contract: each feature's calibration range and missing rate.
    c = doc["contract"]
    if doc["contract_problem"] is not None:
        print(f"  contract    unreadable: {doc['contract_problem']}")
    elif c is None:
        print("  contract    none recorded (a version published by hand, or before feature contracts)")
    else:
        print(f"  contract    {len(c['features'])} features over {c['rows']} calibration events (min, max of the "
              "non-missing values; missing rate)")
        for line in FeatureContract.from_dict(c, doc["features"]).lines():
            print(f"    {line}")
    print(f"  tenant maps {', '.join(doc['tenant_maps']) or 'none'}")
    if doc["timeline"]:
        print("  timeline    " + ", ".join(f"v{e['version']}" + (f" from {e['from_time']}" if e["from_time"] else "")
                                       for e in doc["timeline"]))


def _activation_doc(intent: str, act, changed: bool = True) -> dict:
    return {"intent": intent, "version": act.version, "from_time": act.timeline[-1].from_time,
            "previous": act.previous, "changed": changed}


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings
    from muse_stream.kafka.ranges import parse_event_time
    from muse_stream.models import store as modelstore
    from muse_stream.telemetry.status import check_cluster

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    if args.action != "list" and not args.ref:
        raise ConfigError(f"models {args.action} needs INTENT or INTENT@VERSION")
    need_version = args.action == "activate" or (args.action == "shadow" and not args.off)
    intent, ver = parse_ref(args.ref, need_version=need_version) if args.ref else (None, None)
    at = None if args.at is None else parse_event_time(args.at, "--at")
    # One metadata request before anything else: without it a dead address meant librdkafka's log lines, then
    # an error not naming the address, and (shadow) init_transactions retried for minutes.
    check_cluster(settings)
    if args.action == "list":
        rows = list_rows(modelstore.read_models(settings))
        if args.json:
            _emit(rows)
        else:
            _print_list(rows, settings.topics.models)
        return 0
    if args.action == "show":
        doc = describe_version(modelstore.read_models(settings), intent, ver)
        if args.json:
            _emit(doc)
        else:
            _print_version(doc)
        return 0
    if args.action in ("activate", "rollback"):
        if args.action == "activate":
            act, changed = modelstore.activate_change(settings, intent, ver, activate_at=at)
        else:
            act, changed = modelstore.rollback(settings, intent), True
        doc = _activation_doc(intent, act, changed)
        since = doc["from_time"]
        if args.json:
            _emit(doc)
        elif not changed:
            print(f"{intent}@{act.version} is already active" +
                  (f" from event time {since}" if since is not None else "") + "; nothing written")
        elif args.action == "activate":
            print(f"{intent}@{act.version} active" + (f" from event time {since}" if since is not None else "") +
                  (f" (was {intent}@{act.previous})" if act.previous else ""))
        else:
            print(f"rolled back {intent} to version {act.version}" +
                  (f" from event time {since}" if since is not None else ""))
        return 0
    shadow = None if args.off else ver
    modelstore.set_shadow(settings, intent, shadow)
    if args.json:
        _emit({"intent": intent, "shadow": shadow})
    else:
        print(f"shadow for {intent}: {'off' if args.off else f'{intent}@{ver}'}")
    return 0
