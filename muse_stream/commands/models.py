"""`muse-stream models list | show I[@V] | activate I@V [--at MS] | rollback I | shadow I@V|I --off`."""

from __future__ import annotations

import argparse
import time

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
    p.add_argument("--at", type=int, default=None, metavar="MS", help="activate: from event time MS (epoch ms)")
    p.add_argument("--off", action="store_true", help="shadow: stop shadow scoring for the intent")
    p.set_defaults(func=run)


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


def _print_contract(rec) -> None:
    """The version's feature contract: each feature's calibration range and missing rate."""
    from muse_stream.errors import ModelError
    from muse_stream.models.feature_contract import FeatureContract

    if rec.feature_contract is None:
        print("  contract    none recorded (a version published by hand, or before feature contracts)")
        return
    try:
        c = FeatureContract.from_dict(rec.feature_contract, rec.features)
    except ModelError as e:
        print(f"  contract    unreadable: {e}")
        return
    print(f"  contract    {len(c.features)} features over {c.rows} calibration events (min, max of the "
          "non-missing values; missing rate)")
    for line in c.lines():
        print(f"    {line}")


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings
    from muse_stream.models import store as modelstore

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    if args.action == "list":
        reg = modelstore.read_models(settings)
        intents = sorted({i for i, _ in reg.versions} | set(reg.activations))
        if not intents:
            print(f"no model versions on {settings.topics.models}")
        for intent in intents:
            act = reg.activations.get(intent)
            shadow = reg.shadows.get(intent)
            for r in reg.versions_of(intent):
                flags = []
                if act and act.version == r.version:
                    since = act.timeline[-1].from_time
                    flags.append("active" + (f" from event time {since}" if since is not None else ""))
                elif act and any(e.version == r.version for e in act.timeline):
                    flags.append("active before the switch")
                if shadow and shadow.version == r.version:
                    flags.append("shadow")
                print(f"{r.name:28} created {_when(r.created_at)}  features={len(r.features):3}  {' '.join(flags)}")
        return 0
    if not args.ref:
        raise ConfigError(f"models {args.action} needs INTENT or INTENT@VERSION")
    if args.action == "show":
        intent, ver = parse_ref(args.ref, need_version=False)
        reg = modelstore.read_models(settings)
        if ver is None:
            ver = reg.active_version(intent)
            if ver is None:
                raise ConfigError(f"intent {intent!r} has no active version; name one as {intent}@N")
        rec = reg.versions.get((intent, ver))
        if rec is None:
            raise ConfigError(f"{intent}@{ver} is not on the models topic")
        act = reg.activations.get(intent)
        print(f"{rec.name}\n  created     {_when(rec.created_at)}\n  sha256      {rec.booster_sha256}\n"
              f"  features    {', '.join(rec.features)}\n  active      {bool(act and act.version == ver)}")
        for k, v in rec.metadata.items():
            print(f"  {k:11} {v}")
        _print_contract(rec)
        tmaps = sorted(rec.transform.get("tenant_maps", {}))
        print(f"  tenant maps {', '.join(tmaps) or 'none'}")
        if act:
            timeline = ", ".join(f"v{e.version}" + (f" from {e.from_time}" if e.from_time else "") for e in act.timeline)
            print(f"  timeline    {timeline}")
        return 0
    if args.action == "activate":
        intent, ver = parse_ref(args.ref, need_version=True)
        act = modelstore.activate(settings, intent, ver, activate_at=args.at)
        since = act.timeline[-1].from_time
        print(f"{intent}@{act.version} active" + (f" from event time {since}" if since is not None else "") +
              (f" (was {intent}@{act.previous})" if act.previous else ""))
        return 0
    if args.action == "rollback":
        intent, _ = parse_ref(args.ref, need_version=False)
        act = modelstore.rollback(settings, intent)
        since = act.timeline[-1].from_time
        print(f"rolled back {intent} to version {act.version}" + (f" from event time {since}" if since is not None else ""))
        return 0
    intent, ver = parse_ref(args.ref, need_version=not args.off)
    modelstore.set_shadow(settings, intent, None if args.off else ver)
    print(f"shadow for {intent}: {'off' if args.off else f'{intent}@{ver}'}")
    return 0
