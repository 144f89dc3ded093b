"""Quality check of the score transform on the ULB card data.

An incumbent model goes live: its calibration window fixes the intent's reference, and tenants set
thresholds for the top 0.5%, 1% and 5% of traffic. A retrained model (longer window, negatives
undersampled, other hyperparameters) replaces it. On a final held-out window neither model saw, we
compare alert rates (retrained / incumbent) at those thresholds: with raw scores, with the retrained
model mapped onto the fixed reference, and with it aligned to the incumbent on a shared calibration
window (the default). Exits non-zero unless raw scores are off by 2x or more at every level and the
aligned transform brings every ratio within 0.9-1.1.

--scan also repeats the comparison over other calibration/held-out splits (reported, not gated).

Run: .venv/bin/python scripts/ulb_transform_check.py [--scan]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from muse_stream.analysis.evaluation import auc
from muse_stream.demo.datasets import ULB, load_ulb
from muse_stream.demo.ulb_models import (
    DEFAULT_WINDOWS,
    model_matrix,
    score,
    train_models,
    train_retrained,
    window_mask,
)
from muse_stream.errors import MuseError
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.transform import ScoreTransform, fit_score_transform

TOP_FRACTIONS = (0.005, 0.01, 0.05)
RATIO_BAND = (0.9, 1.1)
RAW_OFF_FACTOR = 2.0
# Alternative (calibration start, held-out start) splits for --scan; the retrained model trains up to
# the calibration start, the held-out window runs to the end of the data.
SCAN_SPLITS = [(c, h) for c in (100_800.0, 108_000.0, 115_200.0, 122_400.0) for h in (136_800.0, 144_000.0)]


@dataclass(frozen=True)
class Incumbent:
    booster: xgb.Booster
    transform: ScoreTransform
    reference: ReferenceDistribution
    raw_thresholds: np.ndarray  # tuned on its raw scores when it went live
    ref_thresholds: np.ndarray  # the same traffic fractions on the reference scale


@dataclass(frozen=True)
class Level:
    frac: float
    inc_raw: float
    new_raw: float
    inc_ref: float
    new_fixed: float
    new_aligned: float

    @property
    def ratio_raw(self) -> float:
        return self.new_raw / self.inc_raw

    @property
    def ratio_fixed(self) -> float:
        return self.new_fixed / self.inc_ref

    @property
    def ratio_aligned(self) -> float:
        return self.new_aligned / self.inc_ref

    @property
    def passed(self) -> bool:
        raw_off = self.ratio_raw >= RAW_OFF_FACTOR or self.ratio_raw <= 1 / RAW_OFF_FACTOR
        return raw_off and RATIO_BAND[0] <= self.ratio_aligned <= RATIO_BAND[1]


def window_scores(ulb: ULB, booster: xgb.Booster, window: tuple[float, float]) -> np.ndarray:
    return score(booster, model_matrix(ulb, window_mask(ulb.time, window)))


def go_live(ulb: ULB, booster: xgb.Booster, window: tuple[float, float]) -> Incumbent:
    """The intent's first model: its calibration window defines the reference and the tenants' thresholds."""
    raw = window_scores(ulb, booster, window)
    st, ref = fit_score_transform(raw)
    levels = [1 - f for f in TOP_FRACTIONS]
    return Incumbent(booster, st, ref, np.quantile(raw, levels), ref.quantile(levels))


def compare(
    ulb: ULB, inc: Incumbent, new: xgb.Booster, beta: float, calibration: tuple, holdout: tuple
) -> tuple[list[Level], dict[str, float]]:
    """Fit the retrained model's transforms on `calibration`; alert rates of both models on `holdout`."""
    inc_cal, new_cal = window_scores(ulb, inc.booster, calibration), window_scores(ulb, new, calibration)
    st_fixed, _ = fit_score_transform(new_cal, reference=inc.reference, negative_sampling_rate=beta)
    st_aligned, _ = fit_score_transform(
        new_cal,
        reference=inc.reference,
        incumbent_ref_scores=inc.transform.apply(inc_cal),
        negative_sampling_rate=beta,
    )
    inc_hold, new_hold = window_scores(ulb, inc.booster, holdout), window_scores(ulb, new, holdout)
    inc_ref, fixed, aligned = (
        inc.transform.apply(inc_hold),
        st_fixed.apply(new_hold),
        st_aligned.apply(new_hold),
    )
    levels = [
        Level(
            frac=frac,
            inc_raw=float(np.mean(inc_hold >= t_raw)),
            new_raw=float(np.mean(new_hold >= t_raw)),
            inc_ref=float(np.mean(inc_ref >= t_ref)),
            new_fixed=float(np.mean(fixed >= t_ref)),
            new_aligned=float(np.mean(aligned >= t_ref)),
        )
        for frac, t_raw, t_ref in zip(TOP_FRACTIONS, inc.raw_thresholds, inc.ref_thresholds, strict=True)
    ]
    y = ulb.y[window_mask(ulb.time, holdout)]
    aucs = {
        "incumbent": auc(inc_hold, y),
        "incumbent transformed": auc(inc_ref, y),
        "retrained": auc(new_hold, y),
        "retrained fixed": auc(fixed, y),
        "retrained aligned": auc(aligned, y),
    }
    return levels, aucs


def print_table(levels: list[Level]) -> None:
    print(
        "| top x | incumbent raw | retrained raw | ratio raw "
        "| incumbent ref-scale | fixed-ref | ratio | aligned | ratio |"
    )
    print("|" + "------:|" * 9)
    for lv in levels:
        print(
            f"| {lv.frac:.1%} | {lv.inc_raw:.3%} | {lv.new_raw:.3%} | {lv.ratio_raw:.2f} "
            f"| {lv.inc_ref:.3%} | {lv.new_fixed:.3%} | {lv.ratio_fixed:.2f} | {lv.new_aligned:.3%} | "
            f"{lv.ratio_aligned:.2f}{'' if lv.passed else ' FAIL'} |"
        )


def _fmt(xs) -> str:
    return " / ".join(f"{x:.2f}" for x in xs)


def scan(ulb: ULB, inc: Incumbent, beta: float) -> None:
    print()
    print("Sensitivity (not gated): other calibration / held-out splits, ratios at top 0.5% / 1% / 5%")
    print()
    print("| calibration | held-out | raw | fixed-ref | aligned | aligned in 0.9-1.1 |")
    print("|---|---|---|---|---|---|")
    for cal_start, hold_start in SCAN_SPLITS:
        w = dataclasses.replace(
            DEFAULT_WINDOWS,
            retrained_train=(0.0, cal_start),
            calibration=(cal_start, hold_start),
            holdout=(hold_start, float("inf")),
        )
        new = train_retrained(ulb, w, negative_sampling_rate=beta)
        levels, _ = compare(ulb, inc, new, beta, w.calibration, w.holdout)
        print(
            f"| {cal_start:.0f}-{hold_start:.0f} | {hold_start:.0f}-end "
            f"| {_fmt(lv.ratio_raw for lv in levels)} | {_fmt(lv.ratio_fixed for lv in levels)} "
            f"| {_fmt(lv.ratio_aligned for lv in levels)} | "
            f"{'yes' if all(lv.passed for lv in levels) else 'no'} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", action="store_true", help="also report other window splits (not gated)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    t0 = time.perf_counter()
    ulb = load_ulb()
    t_load = time.perf_counter()
    w = DEFAULT_WINDOWS
    models = train_models(ulb, w)
    t_train = time.perf_counter()
    beta = models.negative_sampling_rate
    inc = go_live(ulb, models.incumbent, w.incumbent_calibration)
    levels, aucs = compare(ulb, inc, models.retrained, beta, w.calibration, w.holdout)
    t_eval = time.perf_counter()

    def count(win: tuple[float, float]) -> int:
        return int(window_mask(ulb.time, win).sum())

    frauds = int(ulb.y[window_mask(ulb.time, w.holdout)].sum())
    print(
        f"ULB windows (Time, s): incumbent train {w.incumbent_train[0]:.0f}-{w.incumbent_train[1]:.0f}, "
        f"reference {w.incumbent_calibration[0]:.0f}-{w.incumbent_calibration[1]:.0f}; "
        f"retrained train {w.retrained_train[0]:.0f}-{w.retrained_train[1]:.0f} "
        f"(negatives kept at beta={beta}); "
        f"calibration {w.calibration[0]:.0f}-{w.calibration[1]:.0f} ({count(w.calibration)} events); "
        f"held-out {w.holdout[0]:.0f}-end ({count(w.holdout)} events, {frauds} frauds)"
    )
    print("held-out AUC: " + ", ".join(f"{k} {v:.4f}" for k, v in aucs.items()))
    print()
    print(
        "Alert rates on the held-out window at thresholds set for the top x% of traffic; "
        "ratio = retrained / incumbent"
    )
    print()
    print_table(levels)
    print()
    print(
        f"time: load {t_load - t0:.1f}s, train {t_train - t_load:.1f}s, "
        f"fit+evaluate {t_eval - t_train:.2f}s, total {t_eval - t0:.1f}s"
    )
    ok = all(lv.passed for lv in levels)
    if ok:
        print(
            f"PASS: aligned ratios within {RATIO_BAND[0]}-{RATIO_BAND[1]}; "
            f"raw ratios off by >= {RAW_OFF_FACTOR:g}x"
        )
    else:
        print(
            f"FAIL: need raw ratios off by >= {RAW_OFF_FACTOR:g}x and aligned ratios within "
            f"{RATIO_BAND[0]}-{RATIO_BAND[1]} at every level"
        )
    if args.scan:
        scan(ulb, inc, beta)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MuseError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
