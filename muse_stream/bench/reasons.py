"""What reason codes cost: in-process scorer throughput with them off and on, at a given flagged share.

The demo's models (trained on the ULB card data as `./scripts/demo.sh` trains them) score real held-out
transactions as event JSON, in batches of `batch_size`, through the real BatchScorer; the tenants' review
band is set at the quantile of those events' served scores that flags `share` of them. Three scorers run on
the same batches, their order rotated every batch (off, fast, xgboost; fast, xgboost, off; ...) so drift of
the machine cancels out of the per-batch ratios: reason codes off (reason_codes = 0), on by the TreeSHAP
tables (scoring/treeshap.py, when the extension is built) and on by XGBoost's pred_contribs; the drop is the
median of the paired batches' time ratios.
`python -m muse_stream.bench.reasons` or `muse-stream bench --reasons-only`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import orjson

from muse_stream.bench.inprocess import active_registry

INTENT = "card_fraud"
TENANT_IDS = ("cautious_bank", "balanced_pay", "lenient_shop")  # the demo's tenants, events round-robin


def _registry(booster, features: list[str], transform, reference):
    return active_registry([(INTENT, booster, features, transform, reference)], source="bench")


def _batches(x: np.ndarray, features: list[str], n_batches: int, size: int) -> list[list]:
    from confluent_kafka import Message

    now = int(time.time() * 1000)
    out, seq = [], 0
    for _ in range(n_batches):
        msgs = []
        for _ in range(size):
            value = orjson.dumps({"event_id": f"e-{seq}", "tenant_id": TENANT_IDS[seq % 3], "event_time": now,
                                  "features": dict(zip(features, x[seq].tolist()))})
            msgs.append(Message(topic="bench.events", partition=seq % 8, offset=seq // 8, key=b"e-%d" % seq,
                                value=value, timestamp=(1, now)))
            seq += 1
        out.append(msgs)
    return out


def tree_shape(booster) -> dict:
    """Trees, mean leaves per tree and the deepest leaf: exact TreeSHAP's cost per row grows with
    trees x leaves x depth^2, a prediction's with trees x depth."""
    dumps = booster.get_dump()
    leaves = [line.count("\t") for d in dumps for line in d.splitlines() if "leaf=" in line]
    return {"trees": len(dumps), "leaves_per_tree": round(len(leaves) / len(dumps), 1), "max_depth": max(leaves)}


def _timed(scorer, batches: list[list]) -> tuple[float, int, int]:
    """(seconds in BatchScorer.process, decisions, decisions with reasons) over the batches."""
    seconds, n, with_reasons = 0.0, 0, 0
    for msgs in batches:
        t0 = time.perf_counter()
        out = scorer.process(msgs, 0)
        seconds += time.perf_counter() - t0
        n += len(out.decisions)
        with_reasons += sum(1 for d in out.decisions if b'"reasons"' in d[2])
    return seconds, n, with_reasons


def measure(*, model: str = "incumbent", shares=(0.02, 0.10), batch_size: int = 2000, batches: int = 10,
            rounds: int = 7, reasons: int = 3) -> dict:
    """Events/s of BatchScorer.process with reason codes off and on, per flagged share, A/B interleaved."""
    from muse_stream.config import IntentConfig, Settings, TenantConfig
    from muse_stream.demo import scenario
    from muse_stream.demo.datasets import load_ulb
    from muse_stream.demo.ulb_models import MODEL_FEATURES, model_matrix
    from muse_stream.scoring import treeshap
    from muse_stream.scoring.reasons import contributions
    from muse_stream.scoring.scorer import BatchScorer
    from muse_stream.tenants import TenantRegistry

    ulb = load_ulb()
    live = scenario.train_card_incumbent(ulb)
    booster, transform = live.booster, live.transform
    if model == "retrained":
        booster, transform, _ = scenario.train_card_retrained(ulb, live)
    models = _registry(booster, MODEL_FEATURES, transform, live.reference)
    served = models.get(INTENT, 1)  # loaded as a worker loads it: nthread = 1
    rows = scenario.replay_rows(ulb, None)[: batches * batch_size]
    x = model_matrix(ulb, rows).astype(np.float32)
    scores = served.transform.apply(served.predict(x).astype(np.float64))
    data = _batches(x, MODEL_FEATURES, batches, batch_size)

    # What one flagged row costs on its own, next to a prediction: the why behind the figures.
    flag = x[:200]
    t0 = time.perf_counter()
    ex = treeshap.explainer(served.booster, x.shape[1])  # built as a worker builds it, on first use
    build_ms = (time.perf_counter() - t0) * 1000
    ext = treeshap.module()
    fast_ok = ext is not None and ex.tables is not None
    shap_us, fast_us = _per_row(lambda: contributions(served.booster, flag), len(flag)), None
    if fast_ok:
        fast_us = _per_row(lambda: treeshap.contributions(ex.tables, flag, ext), len(flag))
    predict_us = _per_row(lambda: served.predict(x), len(x))

    result = {"model": f"demo {model} ({INTENT})", **tree_shape(served.booster), "batch_size": batch_size,
              "batches_per_run": batches, "rounds": rounds, "reason_codes": reasons, "nthread": 1,
              "predict_us_per_row": round(predict_us, 2), "contribs_us_per_row": round(shap_us, 1),
              "fast_path": ex.describe() if ext is not None else treeshap.active_path(),
              "fast_us_per_row": None if fast_us is None else round(fast_us, 2),
              "tables_mb": round(ex.tables.nbytes / 1e6, 2) if fast_ok else None,
              "tables_build_ms": round(build_ms, 1), "shares": []}
    arms = ("off", "fast", "xgboost") if fast_ok else ("off", "xgboost")
    for share in shares:
        thr = float(np.quantile(scores, 1.0 - share))
        tenants = {t: TenantConfig(tenant_id=t, intents=(INTENT,), bands={"review": thr}) for t in TENANT_IDS}
        settings = Settings(intents=(IntentConfig(name=INTENT),), tenants=tuple(tenants.values()))
        scorers = {}
        for arm in arms:
            scorers[arm] = BatchScorer(TenantRegistry(settings, tenants, log_changes=False), models,
                                       max_abs_feature=1e30, max_event_bytes=1_000_000,
                                       output_topic=lambda tid: f"bench.decisions.{tid}",
                                       intents=(IntentConfig(name=INTENT, reason_codes=0 if arm == "off" else reasons),))
            scorers[arm].reasons.native = False if arm == "xgboost" else None
            _timed(scorers[arm], data[:2])  # warm-up: first calls, caches
        # Arms interleaved batch by batch, their order rotated every batch, so the machine's drift (which at
        # this machine's scale moves a whole run by several percent) falls on every arm alike; each arm's
        # figure is its median batch, and the drop the median of the paired per-batch ratios.
        secs: dict[str, list[float]] = {arm: [] for arm in arms}
        flagged = 0
        for r in range(rounds):
            for b, msgs in enumerate(data):
                k = (r * len(data) + b) % len(arms)
                for arm in arms[k:] + arms[:k]:
                    sec, _, with_reasons = _timed(scorers[arm], [msgs])
                    secs[arm].append(sec)
                    if r == 0 and arm != "off":
                        flagged += with_reasons if arm == arms[1] else 0
        t_off = statistics.median(secs["off"]) / batch_size  # seconds per event, reason codes off
        n_events = batches * batch_size
        row = {"flagged_share_target": share, "flagged_share": round(flagged / n_events, 4),
               "events_per_s_off": round(1.0 / t_off)}
        for arm in arms[1:]:
            ratios = [off / on for off, on in zip(secs["off"], secs[arm])]
            ratio = statistics.median(ratios)
            q = statistics.quantiles(ratios, n=10)
            # Seconds per flagged row on top (c): the drop is s*c / (t + s*c), 5% at s = t/c/19.
            c_row = t_off * (1.0 / ratio - 1.0) / max(flagged / n_events, 1e-9)
            row[arm] = {"events_per_s": round(batch_size / statistics.median(secs[arm])),
                        "ratio_on_off": round(ratio, 4),
                        "ratio_range": [round(q[0], 4), round(q[-1], 4)],  # 10th to 90th percentile of batches
                        "throughput_drop_pct": round(100.0 * (1.0 - ratio), 1),
                        "us_per_flagged_row": round(c_row * 1e6, 1),
                        "flagged_share_at_5pct_drop": round(t_off / c_row / 19.0, 4) if c_row > 0 else None}
        result["shares"].append(row)
    return result


def _per_row(call, rows: int, repeat: int = 5) -> float:
    """Microseconds per row of the best of `repeat` calls (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6 / rows


def format_result(r: dict) -> str:
    head = (f"reason codes ({r['reason_codes']} per flagged decision), {r['model']}: {r['trees']} trees, "
            f"{r['leaves_per_tree']} leaves per tree, depth {r['max_depth']}; in-process BatchScorer, batches of "
            f"{r['batch_size']:,}, nthread 1, {r['rounds']} rounds of {r['batches_per_run']} batches, arms taking turns "
            "batch by batch")
    fast = "-" if r["fast_us_per_row"] is None else f"{r['fast_us_per_row']} us"
    lines = [head,
             f"  fast path: {r['fast_path']}",
             (f"  per row (best of 5, 200 rows): predict {r['predict_us_per_row']} us, contributions by the tables "
              f"{fast}, by pred_contribs {r['contribs_us_per_row']} us"),
             "  flagged   path        events/s   on/off (p10-p90)       drop   us/flagged row   5% drop at"]
    for s in r["shares"]:
        lines.append(f"  {100 * s['flagged_share']:6.2f}%   off       {s['events_per_s_off']:10,}")
        for arm in ("fast", "xgboost"):
            if arm not in s:
                continue
            a = s[arm]
            at = a["flagged_share_at_5pct_drop"]
            lines.append(f"            {arm:8}  {a['events_per_s']:10,}   {a['ratio_on_off']:.3f} "
                         f"({a['ratio_range'][0]:.3f}-{a['ratio_range'][1]:.3f})   {a['throughput_drop_pct']:5.1f}%"
                         f"   {a['us_per_flagged_row']:14.1f}   " + ("-" if at is None else f"{100 * at:.2f}% flagged"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m muse_stream.bench.reasons", description=__doc__.split("\n")[0])
    add_args(p)
    args = p.parse_args(argv)
    return run(args)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reasons-model", choices=("incumbent", "retrained", "both"), default="both",
                   help="which demo model scores (default both: the demo's card model before and after its swap)")
    p.add_argument("--reasons-rounds", type=int, default=7, help="A/B rounds over the batches per flagged share (default 7)")


def run(args: argparse.Namespace, json_path: str | None = None) -> int:
    names = ("incumbent", "retrained") if args.reasons_model == "both" else (args.reasons_model,)
    results = []
    for name in names:
        r = measure(model=name, rounds=args.reasons_rounds)
        print(format_result(r), flush=True)
        results.append(r)
    if json_path:
        from pathlib import Path

        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_bytes(orjson.dumps({"schema": "muse-stream-bench-reasons/2", "results": results},
                                                 option=orjson.OPT_INDENT_2))
        print(f"JSON report: {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
