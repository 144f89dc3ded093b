"""A version's feature contract: the features it reads and what its calibration data looked like in each.

Recorded on the version record at publish, from the calibration set the transform is fitted on: per feature,
the observed range (min and max over its non-missing values) and the share of missing values. Telemetry
compares live traffic with it (telemetry/features.py), `models show` prints it, and `validate` checks a file
of events against the version's features.

Also here: an intent's policy for event features its version does not know (`unknown_features` in the
intent's config), which the event contract (scoring/contract.py) applies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from muse_stream.errors import ModelError

# Field names from events become metric labels: past this many distinct (intent, field) pairs, the rest are
# counted under OTHER_FIELD, so a producer sending random names cannot grow a worker's memory or metrics.
MAX_TRACKED_FIELDS = 200
OTHER_FIELD = "(other)"
MAX_FIELD_CHARS = 100


@dataclass(frozen=True)
class FeatureContract:
    """Per feature (in the version's order): observed range over non-missing values (None when every value
    was missing) and missing rate, over `rows` calibration events."""

    features: tuple[str, ...]
    rows: int
    low: tuple[float | None, ...]
    high: tuple[float | None, ...]
    missing: tuple[float, ...]

    @classmethod
    def from_matrix(cls, features: Sequence[str], x: np.ndarray) -> FeatureContract:
        """From the calibration matrix as the version scores it (float32, NaN missing): the ranges are then in
        the values live scoring compares them with."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != len(features) or not len(x):
            raise ModelError(f"a feature contract needs a non-empty matrix of {len(features)} columns, "
                             f"not shape {x.shape}")
        nan = np.isnan(x)
        present = ~nan.all(axis=0)
        with np.errstate(invalid="ignore"):
            low = np.where(nan, np.inf, x).min(axis=0)
            high = np.where(nan, -np.inf, x).max(axis=0)
        return cls(tuple(features), len(x),
                   tuple(float(v) if p else None for v, p in zip(low.tolist(), present.tolist())),
                   tuple(float(v) if p else None for v, p in zip(high.tolist(), present.tolist())),
                   tuple(nan.mean(axis=0).tolist()))

    @classmethod
    def from_table(cls, table: Mapping[str, np.ndarray], features: Sequence[str]) -> FeatureContract:
        """From calibration columns (models/tabular.read_table), taken as float32, as publish scores them."""
        return cls.from_matrix(features, np.column_stack([np.asarray(table[f], dtype=np.float32) for f in features]))

    def to_dict(self) -> dict:
        return {"rows": self.rows,
                "features": {f: {"min": lo, "max": hi, "missing_rate": m}
                             for f, lo, hi, m in zip(self.features, self.low, self.high, self.missing)}}

    @classmethod
    def from_dict(cls, d: Mapping, features: Sequence[str]) -> FeatureContract:
        """The recorded contract of a version whose features are `features`; ModelError when it does not fit."""
        try:
            per = d["features"]
            rows = int(d["rows"])
            if list(per) != list(features):
                raise ModelError("its features are not the version's, in the version's order")
            low = tuple(_number(per[f]["min"]) for f in features)
            high = tuple(_number(per[f]["max"]) for f in features)
            missing = tuple(float(per[f]["missing_rate"]) for f in features)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"feature contract is malformed: {e!r}"[:300]) from None
        if rows < 1 or not all(0.0 <= m <= 1.0 for m in missing):
            raise ModelError("feature contract is malformed: rows < 1 or a missing rate outside [0, 1]")
        if any((lo is None) != (hi is None) or (lo is not None and lo > hi) for lo, hi in zip(low, high)):
            raise ModelError("feature contract is malformed: a range with min > max, or only one end")
        return cls(tuple(features), rows, low, high, missing)

    def bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(low, high, missing rate) as float64 arrays; NaN where a feature has no range."""
        nan = math.nan
        return (np.array([nan if v is None else v for v in self.low]),
                np.array([nan if v is None else v for v in self.high]),
                np.array(self.missing))

    def lines(self) -> list[str]:
        """One line per feature, for people: `name  [min, max]  missing x%`."""
        width = max(len(f) for f in self.features)
        out = []
        for f, lo, hi, m in zip(self.features, self.low, self.high, self.missing):
            rng = "no values" if lo is None else f"[{lo:.6g}, {hi:.6g}]"
            out.append(f"{f:{width}}  {rng:27}  missing {100 * m:.2f}%")
        return out


def _number(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{v} is not a finite number")
    return v


@dataclass(eq=False, slots=True)
class UnknownFeatures:
    """An intent's policy for event features its version does not know. reject: the event is dead-lettered
    (unknown_feature); ignore: it is scored without them, and each one is counted in `ignored`, a tally of
    (intent, field) -> events, shared by one registry's intents and drained by telemetry."""

    intent: str
    reject: bool = True
    ignored: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, names: Iterable[str]) -> None:
        """Count each ignored field name once per event it appeared in."""
        tally = self.ignored
        for name in names:
            key = (self.intent, name[:MAX_FIELD_CHARS])
            if key not in tally and len(tally) >= MAX_TRACKED_FIELDS:
                key = (self.intent, OTHER_FIELD)
            tally[key] = tally.get(key, 0) + 1
