"""The guards a deployment must pass, judged on events the fit did not see: per tenant and band the new/old
alert-rate ratio (with its confidence interval), the rank agreement of old and new scores, the PSI of the new
mapped scores against the incumbent's served ones, and, with labels, each band's recall.

Pure numpy on arrays of one window: `old` (the incumbent's served scores), `new` (the candidate's mapped
scores), the tenant of each event and, optionally, its label (1, 0, or NaN when unknown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from muse_stream.analysis.evaluation import psi
from muse_stream.deployspec import DeployGuards

# tenant -> [(band, threshold on the reference scale)]
TenantBands = Mapping[str, Sequence[tuple[str, float]]]


@dataclass(frozen=True)
class GuardRow:
    guard: str  # "alert rate" | "rank" | "psi" | "recall"
    tenant: str  # "*" for the intent as a whole
    band: str
    figure: str  # what was measured, as printed
    limit: str  # what it had to be
    ok: bool | None  # None: not judged (too few alerts or positives)


@dataclass(frozen=True)
class Judgement:
    rows: tuple[GuardRow, ...]
    events: int

    @property
    def failed(self) -> list[GuardRow]:
        return [r for r in self.rows if r.ok is False]

    @property
    def passed(self) -> bool:
        return not self.failed

    def reason(self) -> str:
        return "; ".join(f"{r.guard} {r.tenant}/{r.band} {r.figure} (limit {r.limit})" for r in self.failed)

    def to_dict(self) -> dict:
        return {"events": self.events, "passed": self.passed, "rows": [asdict(r) for r in self.rows]}


def ratio_interval(k_new: int, k_old: int, confidence: float) -> tuple[float, float, float]:
    """new/old alert counts on the same events: the ratio and its interval on the log scale, with each count
    treated as Poisson and the two as independent. They are positively correlated (the same events), so this
    interval is wider than the paired one: it errs towards letting a deployment pass on small counts, never
    towards refusing one on noise. A zero count gets half an alert (the interval then stays finite)."""
    kn, ko = max(k_new, 0.5), max(k_old, 0.5)
    r = kn / ko
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    h = z * math.sqrt(1.0 / kn + 1.0 / ko)
    return r, r * math.exp(-h), r * math.exp(h)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Mid-ranks (ties share their mean rank)."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(0.5 * (starts + ends - 1), ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    d = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / d if d > 0 else 0.0


def judge(old: np.ndarray, new: np.ndarray, tenants: np.ndarray, bands: TenantBands, g: DeployGuards,
          labels: np.ndarray | None = None) -> Judgement:
    """Every guard on one window; see the module docstring."""
    rows: list[GuardRow] = []
    tol = g.ratio_tolerance
    for tid in sorted(bands):
        m = tenants == tid
        n = int(m.sum())
        if not n:
            continue
        o, w = old[m], new[m]
        lab = None if labels is None else labels[m]
        for band, thr in bands[tid]:
            k_o, k_n = int((o >= thr).sum()), int((w >= thr).sum())
            r, lo, hi = ratio_interval(k_n, k_o, g.confidence)
            judged = max(k_o, k_n) >= g.min_alerts
            ok = None if not judged else not (lo > 1 + tol or hi < 1 - tol)
            rows.append(GuardRow("alert rate", tid, band,
                                 f"{k_n}/{k_o} = {r:.3f} [{lo:.3f}, {hi:.3f}] of {n}",
                                 f"1±{tol:g}" + ("" if judged else f", judged from {g.min_alerts} alerts"), ok))
            if lab is None:
                continue
            pos = lab == 1
            n_pos = int(pos.sum())
            if not n_pos:
                continue
            rec_o, rec_n = float(np.mean(o[pos] >= thr)), float(np.mean(w[pos] >= thr))
            judged = n_pos >= g.min_positives
            rows.append(GuardRow("recall", tid, band, f"{rec_n:.3f} vs {rec_o:.3f} of {n_pos} frauds",
                                 f">= old - {g.recall_margin:g}" + ("" if judged else f", judged from "
                                                                    f"{g.min_positives} frauds"),
                                 None if not judged else rec_n >= rec_o - g.recall_margin))
    rho = spearman(old, new)
    rows.append(GuardRow("rank", "*", "*", f"spearman {rho:.3f}", f">= {g.min_rank_correlation:g}",
                         rho >= g.min_rank_correlation))
    p = psi(old, new)
    rows.append(GuardRow("psi", "*", "*", f"{p:.4f}", f"<= {g.psi_max:g}", p <= g.psi_max))
    return Judgement(tuple(rows), int(old.size))


def table_lines(j: Judgement) -> list[str]:
    """The guard table as printed by `deploy`."""
    out = [f"  {'guard':11} {'tenant':16} {'band':10} {'measured':44} {'limit':28} verdict"]
    for r in j.rows:
        verdict = "-" if r.ok is None else ("ok" if r.ok else "FAIL")
        out.append(f"  {r.guard:11} {r.tenant:16} {r.band:10} {r.figure:44} {r.limit:28} {verdict}")
    return out
