"""Settings of `muse-stream deploy`: how long a deployment shadows and watches, and the guards it must pass.

Kept apart from config.py (at its size limit), as bandspec.py is. The `[deploy]` section sets every intent's
defaults; `[deploy.intents.<name>]` overrides some of them for one intent:

    [deploy]
    shadow_events = 20000
    [deploy.intents.card_fraud]
    ratio_tolerance = 0.15
"""

from __future__ import annotations

from pydantic import Field, model_validator

from muse_stream.frozen import Frozen


class DeployGuards(Frozen):
    """One intent's deployment settings (see docs/models.md, "Deploying a model")."""

    # The shadow window: at least this many (incumbent, candidate) pairs of live traffic, more when the intent's
    # top band needs more (models/calibration_size.py). The fit takes the first share, the guards judge the rest.
    shadow_events: int = Field(20_000, ge=200, le=100_000_000)
    holdout_share: float = Field(0.3, gt=0.05, lt=0.9)
    shadow_timeout_s: float = Field(1800.0, gt=0, le=7 * 86400)  # a window not filled by then: refused
    # Alert-rate guard, per tenant and band: new/old must stay within 1 ± ratio_tolerance. Refused only when the
    # whole confidence interval of the ratio lies outside that band, and only where old or new has at least
    # min_alerts alerts: small counts cannot refuse a deployment.
    ratio_tolerance: float = Field(0.10, gt=0, lt=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    min_alerts: int = Field(20, ge=1)
    # Rank agreement of old and new scores on the held-out tail (Spearman).
    min_rank_correlation: float = Field(0.5, ge=-1, le=1)
    # PSI of the new mapped scores against the incumbent's served scores on the held-out tail.
    psi_max: float = Field(0.1, gt=0)
    # With labels (topics.labels): a tenant band's recall may fall by at most this much (absolute), judged where
    # the tail holds at least min_positives labelled frauds.
    recall_margin: float = Field(0.05, ge=0, le=1)
    min_positives: int = Field(10, ge=1)
    # The watch after the swap: the replaced version keeps scoring in shadow for watch_events live events (or
    # watch_timeout_s, whichever comes first), judged on every window of shadow_events; a broken guard rolls back.
    watch_events: int = Field(40_000, ge=0)
    watch_timeout_s: float = Field(3600.0, gt=0, le=7 * 86400)
    # Refit the new version's map on each watched window (judged first) and publish it as a new version of the
    # same booster.
    refresh: bool = True
    min_tenant_events: int = Field(2000, ge=100)
    poll_s: float = Field(1.0, gt=0, le=60)


class DeploySettings(DeployGuards):
    """`[deploy]`: the defaults, and per-intent overrides of any of them."""

    intents: dict[str, dict] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _overrides_valid(self) -> DeploySettings:
        for name in self.intents:
            self.for_intent(name)  # a bad override fails here, at load, naming its field
        return self

    def for_intent(self, intent: str) -> DeployGuards:
        base = self.model_dump(exclude={"intents"})
        return DeployGuards.model_validate({**base, **self.intents.get(intent, {})})
