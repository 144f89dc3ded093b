"""`muse-stream deploy MODEL --intent X [--calibration FILE]` and `muse-stream deploy --watch DIR`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from muse_stream.cli import add_config_args
from muse_stream.errors import ConfigError

MODEL_SUFFIXES = (".ubj", ".json")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="take a model file to live: shadow, fit, guards, activate, watch, roll back")
    add_config_args(p)
    p.add_argument("model", nargs="?", help="an XGBoost booster file (UBJSON or JSON)")
    p.add_argument("--intent", default=None, help="the intent the model serves (with --watch: files at DIR's top)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="a calibration file (CSV/Parquet) for the shadow version's contract and first map")
    p.add_argument("--watch", default=None, metavar="DIR",
                   help="keep running: deploy each new model file dropped in DIR (or DIR/<intent>/), one at a time")
    p.add_argument("--abort", action="store_true",
                   help="end the intent's open deployment (refused, or rolled back once activated); shadow off")
    p.set_defaults(func=run)


def _intent_of(path: Path, root: Path, default: str | None) -> str | None:
    return path.parent.name if path.parent != root else default


def run(args: argparse.Namespace) -> int:
    from muse_stream.config import load_settings

    settings = load_settings(args.config, bootstrap=args.bootstrap)
    if args.abort:
        if not args.intent or args.model or args.watch or args.calibration:
            raise ConfigError("deploy --abort takes --intent INTENT and nothing else")
        from muse_stream.deploy.controller import Deployer

        rec = Deployer(settings, args.intent).abort()
        print(f"deployment {rec.name}: {rec.state} ({rec.steps[-1].detail})")
        return 0
    if args.watch is None:
        if not args.model or not args.intent:
            raise ConfigError("deploy needs MODEL and --intent INTENT (or --watch DIR)")
        settings.require_intent(args.intent)
        # publish's own check, so a directory is called one here too (the readers would say "not found").
        from muse_stream.commands.publish import check_file

        check_file("model", args.model)
        check_file("--calibration", args.calibration)
        return _deploy_one(settings, args.intent, Path(args.model), args.calibration)
    return watch_dir(settings, Path(args.watch), args.intent)


def _deploy_one(settings, intent: str, model: Path, calibration) -> int:
    from muse_stream.deploy.controller import Deployer

    rec = Deployer(settings, intent).deploy(model, calibration=calibration)
    print(f"deployment {rec.name}: {rec.state}" + (f" ({rec.steps[-1].detail})" if rec.state != "done" else ""))
    return 0 if rec.state == "done" else 1


def watch_dir(settings, root: Path, intent: str | None, *, stop=None, poll_s: float = 2.0) -> int:
    """Deploy each model file that appears in `root` (intent from --intent) or `root/<intent>/`, oldest first,
    one at a time; a file whose booster an earlier deployment of its intent already took is skipped."""
    import threading

    from muse_stream.deploy.controller import Deployer
    from muse_stream.errors import MuseError
    from muse_stream.models.lifecycle import load_booster
    from muse_stream.models.records import sha256_hex
    from muse_stream.models.store import read_models

    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder")
    stop = stop or threading.Event()
    print(f"watching {root} for model files ({', '.join(MODEL_SUFFIXES)}); Ctrl-C to stop")
    tried: set[tuple[str, float]] = set()
    last: dict[str, tuple[int, float]] = {}  # each file's (size, mtime) at the previous round
    while not stop.is_set():
        files = sorted((p for p in root.rglob("*") if p.suffix in MODEL_SUFFIXES and p.is_file()),
                       key=lambda p: p.stat().st_mtime)
        for path in files:
            st = path.stat()
            key, target = (str(path), st.st_mtime), _intent_of(path, root, intent)
            if key in tried or target is None:
                continue
            # A file still being written would be read half-way: taken only once its size and time have held
            # for a whole round and it is a second old.
            before, last[str(path)] = last.get(str(path)), (st.st_size, st.st_mtime)
            if before != (st.st_size, st.st_mtime) or time.time() - st.st_mtime < 1.0:
                continue
            tried.add(key)
            try:
                booster, _ = load_booster(path)
                sha = sha256_hex(bytes(booster.save_raw("ubj")))
                done = [d for (i, _), d in sorted(read_models(settings).deployments.items())
                        if i == target and d.final and d.booster_sha256 == sha]
                if done:
                    print(f"{path}: skipped: {target} has deployed this booster before ({done[-1].name} of "
                          f"{done[-1].model}, {done[-1].state}; sha256 {sha[:12]})")
                    continue
                print(f"new model file {path} for {target}")
                rec = Deployer(settings, target, stop=stop).deploy(path)
                print(f"deployment {rec.name}: {rec.state}")
            except MuseError as e:
                msg = str(e)  # most errors name the file already
                print(msg if path.name in msg else f"{path}: {msg}")
        stop.wait(poll_s)
    return 0
