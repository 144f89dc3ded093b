"""`muse-stream tenants list | show ID | set ID ... | suspend ID | resume ID | remove ID`.

Every change reads the tenant's current record from the tenants topic, merges the options given, validates the
whole record (and its output topic, and its bands on each intent's reference) before anything is written, and
writes it through tenants.put_tenants: one fenced transaction per tenant, a band change with its event time.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from muse_stream.cli import add_config_args

_SET_HELP = """examples:
  muse-stream tenants set acme --band review=1% --band decline=0.1%
  muse-stream tenants set acme --band decline=0.995 --remove-band hold --from 2026-12-01T00:00:00Z
  muse-stream tenants set newco --intents card_fraud,account_takeover --default-intent card_fraud --band review=1%
A band is NAME=P% (an alert rate: the share of the intent's reference population that reaches it) or NAME=X
(a threshold in [0, 1] on the intent's reference scale)."""


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tenants", help="list, show and change tenant records (bands, intents, output topic)")
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, what in (("list", "every tenant on the tenants topic"), ("show", "one tenant, its bands per intent")):
        a = acts.add_parser(name, help=what)
        if name == "show":
            a.add_argument("tenant_id")
        a.add_argument("--json", action="store_true", help="one JSON document instead of text")
        add_config_args(a)
    s = acts.add_parser("set", help="create a tenant or change some of its fields", epilog=_SET_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("tenant_id")
    s.add_argument("--band", action="append", default=[], metavar="NAME=VALUE",
                   help="set one band: NAME=1%% (alert rate) or NAME=0.995 (threshold); repeatable")
    s.add_argument("--remove-band", action="append", default=[], metavar="NAME", help="drop one band; repeatable")
    s.add_argument("--intents", default=None, metavar="A,B", help="the intents the tenant may use (replaces them)")
    s.add_argument("--default-intent", default=None, metavar="X", help="the intent of events that name none "
                   "('' for none)")
    s.add_argument("--output-topic", default=None, metavar="T", help="the tenant's decision topic ('' for the "
                   "default <decisions_prefix><tenant>)")
    s.add_argument("--reuse-topic", action="store_true",
                   help="with --output-topic: take a topic that exists and holds records no tenant claims now "
                        "(a removed tenant's decisions, say); refused without it")
    s.add_argument("--from", dest="from_time", default=None, metavar="TIME",
                   help="band changes apply to events from this event time (epoch ms or ISO-8601); default: the "
                        "input topics' event-time watermark plus runtime.change_lead_ms")
    add_config_args(s)
    for name, what in (("suspend", "stop scoring the tenant's events (dead letters: tenant_suspended)"),
                       ("resume", "score the tenant's events again"),
                       ("remove", "delete a suspended tenant's record (a tombstone); see docs/tenants.md")):
        a = acts.add_parser(name, help=what)
        a.add_argument("tenant_id")
        add_config_args(a)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from muse_stream.commands import tenant_edit as edit
    from muse_stream.config import load_settings
    from muse_stream.models.bands import format_bands

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    if args.action == "list":
        return _list(settings, args.json)
    if args.action == "show":
        return _show(settings, args.tenant_id, args.json)
    if args.action == "remove":
        prev = edit.remove(settings, args.tenant_id)
        print(f"removed tenant {prev.tenant_id} (a tombstone on {settings.topics.tenants}). Its events now go to "
              f"{settings.topics.deadletter} as unknown_tenant; its decision topic {settings.output_topic(prev)} is "
              f"kept; once the tenants topic compacts, its band history is gone, so replays dead-letter its "
              f"earlier events too.")
        if any(t.tenant_id == prev.tenant_id for t in settings.tenants):
            print(f"note: the config file still names tenant {prev.tenant_id}: `muse-stream topics create` would "
                  "seed it again; delete it there", file=sys.stderr)
        return 0
    if args.action in ("suspend", "resume"):
        rec, _ = edit.apply_change(settings, args.tenant_id, suspended=args.action == "suspend")
        print(f"tenant {rec.tenant_id} {'suspended: its events go to dead letters as tenant_suspended' if rec.suspended else 'resumed: its events are scored again'}")
        return 0
    change = edit.parse_set(args)
    rec, replaced = edit.apply_change(settings, args.tenant_id, **change)
    print(f"tenant {rec.tenant_id} written to {settings.topics.tenants}")
    # A band change replaces the changes the record held from its time on: said here, never silently.
    for p in replaced:
        print(f"replaced the pending band change from {edit.utc(p.from_time)} ({p.from_time}): "
              f"{format_bands(p.bands) or 'no bands'}")
    _print_tenant(settings, edit.describe(settings, rec.tenant_id))
    return 0


def _list(settings, as_json: bool) -> int:
    from muse_stream.commands import tenant_edit as edit

    rows = edit.summaries(settings)
    if as_json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not rows:
        print(f"no tenants on {settings.topics.tenants}")
        return 0
    # Each column as wide as its widest cell (a pending band change or a long id included), so the output topic
    # stays in its column, as `column -t` would align it.
    cells = [("tenant", "state", "intents", "bands", "output topic")]
    cells += [(r["tenant_id"], r["state"], ",".join(r["intents"]) or "-", r["bands_text"] or "-",
               r["decision_topic"] or "-") for r in rows]
    widths = [max(len(c[k]) for c in cells) for k in range(4)]
    for c in cells:
        print("  ".join(f"{v:{w}}" for v, w in zip(c, widths)) + "  " + c[4])
    for r in rows:
        if r.get("refused"):
            kept = "no record of it is in force" if r["state"] == "refused" else "the one above is in force"
            print(f"note: the latest record of {r['tenant_id']} was refused ({r['refused']}); {kept}",
                  file=sys.stderr)
    return 0


def _show(settings, tenant_id: str, as_json: bool) -> int:
    from muse_stream.commands import tenant_edit as edit

    doc = edit.describe(settings, tenant_id)
    if as_json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_tenant(settings, doc)
    return 0


def _print_tenant(settings, doc: dict) -> None:
    r = doc["record"]
    if r is None:  # no record of the tenant was ever accepted: what was refused, and why
        rec = doc["refused_record"]
        print(f"tenant           {doc['tenant_id']}")
        print("state            refused: no record of it is in force (its events go to dead letters as "
              "unknown_tenant)")
        print(f"refused because  {doc['refused']}")
        print(f"latest record    {rec if isinstance(rec, str) else orjson.dumps(rec).decode()}")
        return
    print(f"tenant           {r['tenant_id']}")
    print(f"state            {doc['state']}")
    print(f"intents          {', '.join(r['intents'])}" + (f" (default {r['default_intent']})" if r["default_intent"]
                                                            else ""))
    print(f"decision topic   {doc['decision_topic']}" + ("" if r["output_topic"] else " (the default)"))
    pins = ", ".join(f"{i}@{v}" for i, v in r["pinned_versions"].items()) or "-"
    print(f"pinned versions  {pins}")
    for intent, bands in doc["bands"].items():
        print(f"bands on {intent} (in force now):" + ("" if bands else " none: every event is approve"))
        if bands:
            print(f"  {'band':14} {'given':>10} {'threshold':>12} {'reference rate':>15}")
        for b in bands:
            thr = "-" if b["threshold"] is None else f"{b['threshold']:.6g}"
            rate = "-" if b["reference_rate"] is None else f"{b['reference_rate']:.4%}"
            print(f"  {b['name']:14} {b['text']:>10} {thr:>12} {rate:>15}")
        if bands and doc["no_reference"].get(intent):
            print(f"  ({intent} has no reference yet: nothing was published for it, so its rate bands have no "
                  "threshold)")
    periods = doc["band_timeline"]
    if len(periods) > 1:
        print("band history (by event time; a time ahead of now is a change not in force yet):")
        for p in periods:
            print(f"  from {p['from_time'] if p['from_time'] is not None else 'the start':>15}  {p['bands_text']}")
    if doc.get("refused"):
        print(f"note: the latest record on the topic was refused ({doc['refused']}); this one is in force",
              file=sys.stderr)
