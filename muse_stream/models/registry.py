"""The model registry: the models topic read as a table, and per intent the active version, loaded.

A version is loaded (booster + transform, checksum verified) only when an activation, a pin or a shadow
needs it; a version that fails to load is refused with a logged reason, and the previous state stays. Once
no activation's last two timeline entries, no pin and no shadow names it, a loaded version is dropped again
(a booster is about 1 MB); an old event that needs it loads it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from muse_stream.config import IntentConfig
from muse_stream.errors import ModelError, MuseError
from muse_stream.featurespec import mismatch as state_mismatch
from muse_stream.models.feature_contract import FeatureContract, UnknownFeatures
from muse_stream.models.records import (
    ActivationRecord,
    DeploymentRecord,
    ReferenceRecord,
    ShadowRecord,
    VersionRecord,
    parse_models_record,
)

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    """A version ready to score: booster and transform together, so they always swap as one."""

    intent: str
    version: int
    features: tuple[str, ...]
    booster: object  # xgboost.Booster
    transform: object  # transform.ScoreTransform
    record: VersionRecord = field(repr=False)
    contract: FeatureContract | None = field(default=None, repr=False)  # None: the record has none
    # The intent's policy for event features this version does not know; the registry sets its intents' own.
    unknown: UnknownFeatures = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.unknown is None:
            self.unknown = UnknownFeatures(self.intent)

    @property
    def name(self) -> str:
        return f"{self.intent}@{self.version}"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw scores for a float32 matrix in this model's feature order: one booster call."""
        return self.booster.inplace_predict(x, validate_features=False)


def load_version(record: VersionRecord, *, nthread: int = 1) -> LoadedModel:
    """Verify and load a version record; ModelError says why it cannot be used."""
    import xgboost as xgb

    from muse_stream.models.transform import ScoreTransform

    raw = record.booster_bytes()  # checks the sha256
    try:
        booster = xgb.Booster(params={"nthread": nthread})
        booster.load_model(bytearray(raw))
    except xgb.core.XGBoostError as e:
        raise ModelError(f"{record.name}: booster does not load: {str(e).splitlines()[0][:200]}") from None
    check_feature_names(record.name, record.features, booster.feature_names)
    try:
        transform = ScoreTransform.from_dict(record.transform)
    except MuseError as e:
        raise ModelError(f"{record.name}: transform is invalid: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{record.name}: transform is invalid: {e!r}"[:300]) from None
    contract = None
    if record.feature_contract is not None:
        try:
            contract = FeatureContract.from_dict(record.feature_contract, record.features)
        except ModelError as e:
            raise ModelError(f"{record.name}: {e}") from None
    return LoadedModel(record.intent, record.version, record.features, booster, transform, record, contract)


def check_feature_names(name: str, features: Sequence[str], booster_names: Sequence[str] | None) -> None:
    """Refuse a version whose features are not its booster's own feature_names, in order: the scorer builds
    each row in the version's feature order and the booster reads columns by position, so a re-ordered or
    renamed list scores every event on the wrong features, silently."""
    if not booster_names:
        raise ModelError(f"{name}: the booster was saved without feature names, so its features cannot be "
                         "checked; set feature_names when training (xgboost.DMatrix(..., feature_names=[...]), "
                         "or booster.feature_names = [...] before saving), in the order of the version's features")
    ours, theirs = list(features), list(booster_names)
    if ours == theirs:
        return
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            raise ModelError(f"{name}: feature {i} is {a!r} in the version's features but {b!r} in the booster's "
                             "feature_names; a version's features must be its booster's, in the same order")
    n = min(len(ours), len(theirs))
    extra = f"the version's next is {ours[n]!r}" if len(ours) > n else f"the booster's next is {theirs[n]!r}"
    raise ModelError(f"{name}: the version names {len(ours)} features, the booster's feature_names {len(theirs)} "
                     f"(the first {n} agree; {extra})")


class ModelRegistry:
    """Everything on the models topic, and the loaded versions the scoring loop needs."""

    def __init__(self, *, load: bool = True, nthread: int = 1,
                 pins: Callable[[], Iterable[tuple[str, int]]] | None = None,
                 intents: Iterable[IntentConfig] = (), log_changes: bool = True) -> None:
        self._load = load
        # Workers log every refusal; the command-line tools read the whole topic each time (quiet: the
        # refusals are in `refused`, which `models list` shows), as tenants.TenantRegistry does.
        self._warn = logger.warning if log_changes else logger.debug
        self._nthread = nthread
        # Per intent, its unknown_features policy (config.IntentConfig; an intent not configured: reject), one
        # object per intent handed to each loaded version of it; `ignored_features` is their shared tally.
        self.ignored_features: dict[tuple[str, str], int] = {}
        intents = tuple(intents)
        self._unknown = {i.name: UnknownFeatures(i.name, i.unknown_features == "reject", self.ignored_features)
                         for i in intents}
        # Per configured intent, its entity features (None: stateless): a version recorded with other
        # definitions, or reading state features the config does not compute, is refused when loaded.
        self._state = {i.name: i.state for i in intents}
        # The (intent, version) pairs tenants pin (tenants.TenantRegistry.pinned_versions): kept loaded.
        self._pins = pins or (lambda: ())
        self.versions: dict[tuple[str, int], VersionRecord] = {}
        self.activations: dict[str, ActivationRecord] = {}
        self.references: dict[str, ReferenceRecord] = {}
        self.shadows: dict[str, ShadowRecord] = {}
        self.deployments: dict[tuple[str, int], DeploymentRecord] = {}  # (intent, deployment): muse_stream/deploy
        self.loaded: dict[tuple[str, int], LoadedModel] = {}
        self.refused: dict[tuple[str, int], str] = {}
        self.refused_activations: dict[str, int] = {}  # intent -> the version of its last activation refused
        self._pending: dict[str, ActivationRecord] = {}
        self.generation = 0  # bumped whenever what scores an event may have changed

    # ---- reading the topic --------------------------------------------------------------------

    def apply(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self._tombstone(key.decode(errors="replace"))
            return
        try:
            rec = parse_models_record(value)
        except ModelError as e:
            self._warn("models record %r refused: %s", key[:100], e)
            return
        if isinstance(rec, VersionRecord):
            self.versions[(rec.intent, rec.version)] = rec
            pending = self._pending.get(rec.intent)
            if pending is not None and pending.version == rec.version:
                self._pending.pop(rec.intent)
                self._activate(pending)
        elif isinstance(rec, ActivationRecord):
            self._activate(rec)
        elif isinstance(rec, ReferenceRecord):
            self.references.setdefault(rec.intent, rec)  # the first reference of an intent is the one
        elif isinstance(rec, ShadowRecord):
            self.shadows[rec.intent] = rec
            if rec.version is not None and self._load:
                try:
                    self.get(rec.intent, rec.version)
                except ModelError as e:
                    self._warn("shadow %s@%s refused: %s", rec.intent, rec.version, e,
                               extra={"fields": {"event": "model_refused", "intent": rec.intent,
                                                 "version": rec.version, "reason": str(e), "shadow": True}})
            self.generation += 1
            self.unload_unused()
        elif isinstance(rec, DeploymentRecord):
            self.deployments[(rec.intent, rec.deployment)] = rec

    def _tombstone(self, key: str) -> None:
        parts = key.split("/")
        if parts[0] == "version" and len(parts) == 3 and parts[2].isdigit():
            ident = (parts[1], int(parts[2]))
            self.versions.pop(ident, None)
            # A loaded version stays loaded while the active timeline still names it.

    def _activate(self, rec: ActivationRecord) -> None:
        # The activation's own version must be there and load. Earlier timeline entries (history kept for
        # events of earlier event times) load when an event needs them; only the entry just before the
        # newest is loaded now, since late events around the switch still use it.
        if (rec.intent, rec.version) not in self.versions:
            self._warn("activation of %s@%d waits for its version record", rec.intent, rec.version)
            self._pending[rec.intent] = rec
            return
        if self._load:
            try:
                self.get(rec.intent, rec.version)
            except ModelError as err:
                cur = self.activations.get(rec.intent)
                self.refused_activations[rec.intent] = rec.version  # named in the dead letters' detail
                self._warn("activation of %s@%d refused (%s); %s stays active", rec.intent, rec.version, err,
                           f"{rec.intent}@{cur.version}" if cur else "no version",
                           extra={"fields": {"event": "model_refused", "intent": rec.intent,
                                             "version": rec.version, "reason": str(err),
                                             "active_version": cur.version if cur else None}})
                return
            if len(rec.timeline) > 1:
                before = rec.timeline[-2].version
                try:
                    self.get(rec.intent, before)
                except ModelError as err:
                    self._warn("%s@%d, in force for events before the switch to %s@%d, is not usable: %s",
                               rec.intent, before, rec.intent, rec.version, err)
        prev = self.activations.get(rec.intent)
        self.activations[rec.intent] = rec
        self.generation += 1
        self.unload_unused()
        since = rec.timeline[-1].from_time
        logger.info("model %s@%d active%s (was %s)", rec.intent, rec.version,
                    f" from event time {since}" if since is not None else "",
                    f"{rec.intent}@{prev.version}" if prev else "none",
                    extra={"fields": {"event": "model_activated", "intent": rec.intent, "version": rec.version,
                                      "activate_at": rec.activate_at, "activated_at": rec.activated_at,
                                      "previous_version": prev.version if prev else None}})

    def unload_unused(self) -> list[tuple[str, int]]:
        """Drop the loaded versions that no activation's last two timeline entries, no pin and no shadow
        names; returns them. They load again on demand (`get`), e.g. for an old event."""
        keep = {(i, e.version) for i, a in self.activations.items() for e in a.timeline[-2:]}
        keep |= {(i, s.version) for i, s in self.shadows.items() if s.version is not None}
        keep |= set(self._pins())
        dropped = [ident for ident in self.loaded if ident not in keep]
        for ident in dropped:
            del self.loaded[ident]
        if dropped:
            logger.debug("unloaded %s", ", ".join(f"{i}@{v}" for i, v in dropped))
        return dropped

    # ---- lookups ------------------------------------------------------------------------------

    def get(self, intent: str, version: int) -> LoadedModel:
        """The loaded version, loading it on first use; ModelError when it is unknown or refused."""
        ident = (intent, version)
        m = self.loaded.get(ident)
        if m is not None:
            return m
        if ident in self.refused:
            raise ModelError(f"{intent}@{version} was refused: {self.refused[ident]}")
        rec = self.versions.get(ident)
        if rec is None:
            raise ModelError(f"{intent}@{version} is not on the models topic")
        try:
            m = load_version(rec, nthread=self._nthread)
            if intent in self._state:
                why = state_mismatch(rec.features, rec.state_spec if rec.state_spec is not None
                                     else rec.metadata.get("state_spec"), self._state[intent])
                if why is not None:
                    raise ModelError(f"{rec.name}: {why}")
        except ModelError as e:
            self.refused[ident] = str(e)
            raise
        m.unknown = self.unknown_features(intent)
        self.loaded[ident] = m
        return m

    def unknown_features(self, intent: str) -> UnknownFeatures:
        """The intent's policy for event features its versions do not know."""
        policy = self._unknown.get(intent)
        if policy is None:
            policy = self._unknown[intent] = UnknownFeatures(intent, True, self.ignored_features)
        return policy

    def active_version(self, intent: str) -> int | None:
        a = self.activations.get(intent)
        return a.version if a else None

    def latest_deployment(self, intent: str) -> DeploymentRecord | None:
        return max((d for (i, _), d in self.deployments.items() if i == intent), key=lambda d: d.deployment,
                   default=None)

    def versions_of(self, intent: str) -> list[VersionRecord]:
        return sorted((r for (i, _), r in self.versions.items() if i == intent), key=lambda r: r.version)
