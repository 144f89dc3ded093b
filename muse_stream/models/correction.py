"""Level 1 of the score transform: a model's probabilities moved from its training prior to production's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from muse_stream.errors import NotFittedError, TransformError
from muse_stream.models.knots import as_probabilities, optional_float, record_field


class PosteriorCorrection:
    """Level 1: move a model's probabilities from its training prior to the production prior.

    negative_sampling_rate: negatives were kept at rate beta in training; p = beta*s / (beta*s - s + 1).
    train_prevalence, prod_prevalence: the general case; odds are scaled by
    (pi_prod / (1 - pi_prod)) / (pi_train / (1 - pi_train)). Give one case or neither (identity).
    NaN passes through as NaN; values outside [0, 1] are an error.
    """

    def __init__(
        self,
        *,
        negative_sampling_rate: float | None = None,
        train_prevalence: float | None = None,
        prod_prevalence: float | None = None,
    ) -> None:
        self.negative_sampling_rate = negative_sampling_rate
        self.train_prevalence = train_prevalence
        self.prod_prevalence = prod_prevalence

    def fit(self, scores: Any = None) -> PosteriorCorrection:
        """Validate the parameters and fix the odds ratio (closed form: scores are not needed)."""
        beta = optional_float(self.negative_sampling_rate, "negative_sampling_rate")
        pi_t = optional_float(self.train_prevalence, "train_prevalence")
        pi_p = optional_float(self.prod_prevalence, "prod_prevalence")
        if (pi_t is None) != (pi_p is None):
            raise TransformError("give both train_prevalence and prod_prevalence, or neither")
        if beta is not None and pi_t is not None:
            raise TransformError("give negative_sampling_rate or the prevalences, not both")
        if beta is not None:
            if not 0.0 < beta <= 1.0:
                raise TransformError(f"negative_sampling_rate must be in (0, 1], got {beta}")
            ratio = beta
        elif pi_t is not None and pi_p is not None:
            if not (0.0 < pi_t < 1.0 and 0.0 < pi_p < 1.0):
                raise TransformError("prevalences must be in (0, 1)")
            ratio = (pi_p / (1.0 - pi_p)) / (pi_t / (1.0 - pi_t))
        else:
            ratio = 1.0
        self.odds_ratio_ = float(ratio)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "odds_ratio_"):
            raise NotFittedError("PosteriorCorrection is not fitted; call fit() first")

    def transform(self, scores: Any) -> np.ndarray:
        """Corrected probabilities, float64, same shape (1-D)."""
        self._check_fitted()
        return self._apply(as_probabilities(scores, "scores"))

    def _apply(self, s: np.ndarray) -> np.ndarray:
        k = self.odds_ratio_
        if k == 1.0:
            return s.copy()
        # 1 / (1 + (1-s)/(k*s)) equals k*s / (k*s + 1 - s) and is built from operations that are each
        # monotone under IEEE rounding, so the result is monotone exactly, and s=0 -> 0, s=1 -> 1.
        with np.errstate(divide="ignore"):
            return 1.0 / (1.0 + (1.0 - s) / (k * s))

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "negative_sampling_rate": self.negative_sampling_rate,
            "train_prevalence": self.train_prevalence,
            "prod_prevalence": self.prod_prevalence,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PosteriorCorrection:
        what = "posterior correction"
        return cls(
            negative_sampling_rate=record_field(d, "negative_sampling_rate", what),
            train_prevalence=record_field(d, "train_prevalence", what),
            prod_prevalence=record_field(d, "prod_prevalence", what),
        ).fit()
