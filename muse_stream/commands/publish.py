"""`muse-stream publish`: fit a version's transform on a calibration set and publish it to the models topic."""

from __future__ import annotations

import argparse

from muse_stream.cli import add_config_args


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="publish a model version (booster + fitted transform)")
    add_config_args(p)
    p.add_argument("--intent", default=None)
    p.add_argument("--booster", default=None, help="XGBoost model file (UBJSON or JSON) with feature names")
    p.add_argument("--calibration", default=None,
                   help="events the model did not train on: CSV, JSON lines or Parquet, one column per feature")
    p.add_argument("--from-shadow", default=None, metavar="INTENT@VERSION",
                   help="instead of a file: refit a shadow version on its shadow window and publish it anew")
    p.add_argument("--window", default="1h", help="with --from-shadow: how far back the window reaches (e.g. 30m)")
    p.add_argument("--label-column", default=None)
    p.add_argument("--tenant-column", default=None, help="fit tenant-level maps for tenants with enough events")
    p.add_argument("--min-tenant-events", type=int, default=2000)
    prior = p.add_mutually_exclusive_group()
    prior.add_argument("--negative-sampling-rate", type=float, default=None,
                       help="training kept negatives at this rate (posterior correction)")
    prior.add_argument("--train-prevalence", type=float, default=None, help="fraud rate of the training set")
    p.add_argument("--prod-prevalence", type=float, default=None, help="fraud rate in production")
    p.add_argument("--no-align", action="store_true",
                   help="fit onto the fixed reference even when an incumbent can score the calibration set")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--activate", action="store_true", help="activate now, in the same transaction")
    when.add_argument("--activate-at", type=int, default=None, metavar="MS",
                      help="activate for events with event_time >= MS (epoch ms)")
    when.add_argument("--shadow", action="store_true", help="score it in shadow beside the active version")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings
    from muse_stream.errors import ConfigError
    from muse_stream.models.lifecycle import publish_from_files
    from muse_stream.tenants import read_tenants

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    # Arguments first, before Kafka is asked anything: a refusal is one line, and nothing is written.
    if args.from_shadow:
        from muse_stream.commands.models import parse_ref

        _check_intent(settings, parse_ref(args.from_shadow, need_version=True)[0])
        if args.booster or args.calibration or args.activate_at is not None or args.shadow:
            raise ConfigError("--from-shadow takes neither --booster, --calibration, --activate-at nor --shadow")
    elif args.intent:
        _check_intent(settings, args.intent)
        for flag, path in (("--booster", args.booster), ("--calibration", args.calibration)):
            check_file(flag, path)
    tenants = list(read_tenants(settings).values()) or list(settings.tenants)
    if args.from_shadow:
        from muse_stream.commands.models import parse_ref
        from muse_stream.models.lifecycle import parse_duration, publish_from_shadow

        intent, ver = parse_ref(args.from_shadow, need_version=True)
        rep = publish_from_shadow(settings, intent=intent, version=ver, window_ms=parse_duration(args.window),
                                  min_tenant_events=args.min_tenant_events, activate=args.activate, tenants=tenants)
        _print_report(rep, "active" if args.activate else "published, not active")
        return 0
    if not (args.intent and args.booster and args.calibration):
        raise ConfigError("publish needs --intent, --booster and --calibration (or --from-shadow INTENT@VERSION)")
    if args.train_prevalence is not None and args.prod_prevalence is None:
        raise ConfigError("--train-prevalence needs --prod-prevalence")
    rep = publish_from_files(
        settings, intent=args.intent, booster_path=args.booster, calibration_path=args.calibration,
        label_column=args.label_column, tenant_column=args.tenant_column,
        negative_sampling_rate=args.negative_sampling_rate, train_prevalence=args.train_prevalence,
        prod_prevalence=args.prod_prevalence, align=not args.no_align, activate=args.activate,
        activate_at=args.activate_at, min_tenant_events=args.min_tenant_events, tenants=tenants, shadow=args.shadow)
    state = "active" if args.activate else (f"active from event time {args.activate_at}" if args.activate_at
                                            else "shadow" if args.shadow else "published, not active")
    _print_report(rep, state)
    return 0


def _check_intent(settings, intent: str) -> None:
    """An intent the configuration does not name would get a version, and a reference that can never be
    replaced, on the models topic: refused."""
    from muse_stream.errors import ConfigError

    known = [i.name for i in settings.intents]
    if intent not in known:
        raise ConfigError(f"intent {intent!r} is not in the configuration's [[intents]] "
                          f"({', '.join(known) or 'none named'}); nothing was published")


def check_file(flag: str, path: str | None) -> None:
    """A missing or unreadable file is one line naming it (its content is checked where it is parsed)."""
    import os

    from muse_stream.errors import DataError

    if path is None:
        return
    if os.path.isdir(path):
        raise DataError(f"{flag} {path}: is a directory, not a file")
    if not os.path.isfile(path):
        raise DataError(f"{flag} {path}: file not found")
    if not os.access(path, os.R_OK):
        raise DataError(f"{flag} {path}: not readable")


def _print_report(rep, state: str) -> None:
    print(f"published {rep.record.name} ({state}); transform "
          f"{'aligned to ' + rep.aligned_to if rep.aligned_to else 'onto the fixed reference'}")
    if rep.rows:
        # Each band as given, as a threshold on the reference scale, and the share of the reference population
        # at or above it; then the alert rates on the calibration set.
        print(f"{'tenant':16} {'band':10} {'given':>8} {'threshold':>10} {'ref rate':>9} {'incumbent':>10} "
              f"{'new raw':>9} {'new':>9}   (alert rate on the calibration set)")
        for r in rep.rows:
            inc_s = "-" if r.incumbent is None else f"{r.incumbent:.4%}"
            print(f"{r.tenant:16} {r.band:10} {r.spec:>8} {r.threshold:10.6g} {r.reference_rate:9.4%} {inc_s:>10} "
                  f"{r.raw:9.4%} {r.new:9.4%}")
