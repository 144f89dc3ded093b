"""The input event contract: what an event must be to be scored, and the reason it is dead-lettered if not.

Every path that reads input events goes through this module, so they score exactly the same events: the
live scorer and replays (both through BatchScorer), `validate` and the backtest all run steps 1-4 over a whole
batch as columns (columns.py: admit_columns, group_matrix, contract_pass), with the compiled scanner of
native.py for the plain events where it is built.
The contract has four steps:

1. ``parse_event``, per event: size, JSON, shape, field types and ranges, every feature a number or null
   (null is a missing value, NaN);
2. ``Router.admit``, per event (``Router.latest`` once per tenant and intent for events at or after its newest
   activation): the tenant's rules (registered, not suspended, intent allowed or a default), its pinned
   version or the intent's activation timeline at the event's time, and a version that loads;
3. ``model_matrix``, per group of events one version scores, vectorised: the version's feature matrix, with
   the rows refused that carry a feature the version does not know, when the intent's unknown_features
   policy rejects them (unknown_feature; under "ignore" they are scored and the field is counted), and the
   rows whose model features exceed max_abs_feature (float32 is what boosters take; a value beyond it would
   turn into inf);
4. ``model_outputs``, per group, vectorised: the version's raw scores, with the rows it cannot score refused
   as model_error (its booster raised: every row; a raw score NaN or outside [0, 1]: that row), so the
   transform only ever sees probabilities and a misbehaving model costs dead letters, not the worker.

parse_event accepts a well-formed event after a handful of cheap tests in a row; only an event that fails
them is walked through ``explain``, which applies the same rules one at a time to say which one it breaks.
tests/scoring/test_contract.py holds the two to agreeing on every kind of event.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import orjson

from muse_stream.config import TenantConfig
from muse_stream.errors import ModelError
from muse_stream.eventtime import MAX_EVENT_TIME
from muse_stream.models.feature_contract import UnknownFeatures
from muse_stream.models.registry import LoadedModel, ModelRegistry
from muse_stream.scoring.deadletter import Reason
from muse_stream.scoring.forest import raw_scores
from muse_stream.scoring.repeats import repeated_key

NUMBER_TYPES = frozenset({float, int, type(None)})  # what a feature value may be; bool is not int here
FLOAT32_MAX = float(np.finfo(np.float32).max)
REQUIRED = ("event_id", "tenant_id", "event_time", "features")
_NONE = type(None)
_NAN = math.nan
_loads = orjson.loads
_JSON_KIND = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
              type(None): "null"}


class Event(NamedTuple):
    """A well-formed event. `intent` is as sent (None: the tenant's default); features are numbers or NaN."""

    event_id: str
    tenant_id: str
    intent: str | None
    event_time: int
    features: dict


# A NamedTuple's own constructor runs Python code; tuple.__new__ builds the same object in C, once per event.
_new_event = tuple.__new__


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event is not scored: the dead letter's reason and a detail for people."""

    reason: Reason
    detail: str


def parse_event(raw: bytes | None, max_event_bytes: int) -> Event | Rejection:
    """One input record's value -> an Event, or the Rejection that dead-letters it."""
    if raw and len(raw) <= max_event_bytes:
        try:
            ev = _loads(raw)
            eid, tid, et, feats = ev["event_id"], ev["tenant_id"], ev["event_time"], ev["features"]
            intent = ev.get("intent")
        except (ValueError, KeyError, TypeError, AttributeError):  # JSONDecodeError is a ValueError
            pass
        else:
            if (type(eid) is str and eid and type(tid) is str and type(et) is int and 0 <= et <= MAX_EVENT_TIME
                    and type(feats) is dict and (intent is None or type(intent) is str)):
                types = set(map(type, feats.values()))
                if NUMBER_TYPES.issuperset(types) and (raw.count(b":") == len(ev) + len(feats)
                                                       or repeated_key(raw, ev) is None):
                    if _NONE in types:
                        feats = {k: (_NAN if v is None else v) for k, v in feats.items()}
                    return _new_event(Event, (eid, tid, intent, et, feats))
    return explain(raw, max_event_bytes) or Rejection(Reason.WRONG_TYPE, "event breaks the contract")


def explain(raw: bytes | None, max_event_bytes: int) -> Rejection | None:
    """The first rule of the contract that `raw` breaks, or None when it keeps them all. The slow path of
    parse_event: each rule on its own, in the order a person would check them."""
    if not raw:
        return Rejection(Reason.MALFORMED_JSON, "empty record value")
    if len(raw) > max_event_bytes:
        return Rejection(Reason.EVENT_TOO_LARGE, f"{len(raw)} bytes > {max_event_bytes}")
    try:
        ev = _loads(raw)
    except orjson.JSONDecodeError as e:
        return Rejection(Reason.MALFORMED_JSON, str(e)[:200])
    if type(ev) is not dict:
        return Rejection(Reason.NOT_AN_OBJECT, f"event is JSON {_JSON_KIND.get(type(ev), 'value')}, not an object")
    twice = repeated_key(raw, ev)
    if twice is not None:
        return Rejection(Reason.MALFORMED_JSON, twice)
    missing = [k for k in REQUIRED if ev.get(k) is None]
    if missing:
        return Rejection(Reason.MISSING_FIELD, "missing: " + ", ".join(missing))
    eid, tid, et, feats, intent = ev["event_id"], ev["tenant_id"], ev["event_time"], ev["features"], ev.get("intent")
    wrong = []
    if type(eid) is not str or not eid:
        wrong.append("event_id must be a non-empty string")
    if type(tid) is not str:
        wrong.append("tenant_id must be a string")
    if type(et) is not int:
        wrong.append("event_time must be an integer (epoch ms)")
    if type(feats) is not dict:
        wrong.append("features must be an object of numbers")
    if intent is not None and type(intent) is not str:
        wrong.append("intent must be a string")
    if wrong:
        return Rejection(Reason.WRONG_TYPE, "; ".join(wrong))
    if et < 0:
        return Rejection(Reason.WRONG_TYPE, "event_time must be epoch milliseconds >= 0")
    if et > MAX_EVENT_TIME:
        return Rejection(Reason.VALUE_TOO_LARGE, f"event_time {et} is beyond {MAX_EVENT_TIME}")
    bad = next((k for k, v in feats.items() if type(v) not in NUMBER_TYPES), None)
    if bad is not None:
        return Rejection(Reason.WRONG_TYPE, f"feature {bad!r} is not a number")
    return None


# ---- routing --------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Route:
    """Where a (tenant, intent-as-sent) pair goes: an intent, and a version fixed (pinned, or a timeline of
    one) or taken from the activation `act` by event time."""

    intent: str
    version: int | None
    act: object = None  # models.records.ActivationRecord

    def version_at(self, event_time: int) -> int:
        return self.version if self.version is not None else self.act.version_for(event_time)


def resolve_route(tenants: Mapping[str, TenantConfig], models: ModelRegistry, tenant_id: str,
                  intent: str | None) -> Route | Rejection:
    """Routing of a (tenant, intent-as-sent) pair: the same for every event of the pair."""
    cfg = tenants.get(tenant_id)
    if cfg is None:
        return Rejection(Reason.UNKNOWN_TENANT, f"tenant {tenant_id!r} is not registered")
    if cfg.suspended:
        return Rejection(Reason.TENANT_SUSPENDED, f"tenant {tenant_id!r} is suspended")
    if intent is None:
        intent = cfg.resolve_intent(None)
        if intent is None:
            return Rejection(Reason.MISSING_FIELD, f"no intent, and tenant {tenant_id!r} has no default")
    elif intent not in cfg.intents:
        return Rejection(Reason.INTENT_NOT_ALLOWED, f"tenant {tenant_id!r} may not use intent {intent!r}")
    version = cfg.pinned_versions.get(intent)
    if version is not None:
        return Route(intent, version)
    act = models.activations.get(intent)
    if act is None:
        v = models.refused_activations.get(intent)
        why = "" if v is None else f": its activation of {intent}@{v} was refused ({models.refused.get((intent, v))})"
        return Rejection(Reason.NO_ACTIVE_MODEL, f"intent {intent!r} has no active model{why}"[:300])
    return Route(intent, act.version if len(act.timeline) == 1 else None, act)


class Router:
    """Step 2 of the contract: a parsed event to the loaded version that scores it.

    Routes and versions are cached, so a Router must not outlive a state of the registries it reads: the
    scorer makes one per batch (registries change only between batches), a backtest one per run.
    """

    def __init__(self, tenants: Mapping[str, TenantConfig], models: ModelRegistry) -> None:
        self._tenants = tenants
        self._models = models
        self._routes: dict[tuple[str, str | None], Route | Rejection] = {}
        self._versions: dict[tuple[str, int], LoadedModel | Rejection] = {}

    def admit(self, ev: Event) -> LoadedModel | Rejection:
        route = self._route(ev[1], ev[2])
        if type(route) is Rejection:
            return route
        return self._version(route.intent, route.version_at(ev[3]))

    def latest(self, tenant_id: str, intent: str | None) -> tuple[LoadedModel | Rejection, int]:
        """What a (tenant, intent-as-sent) pair gets for events at or after the returned event time: its
        rejection, its pinned version, or the version of its activation's newest entry. Events before that
        time go through `admit`. Live events almost all fall after the latest switch, so a batch asks this
        once per pair instead of walking the timeline per event."""
        route = self._route(tenant_id, intent)
        if type(route) is Rejection:
            return route, -1
        if route.version is not None:
            return self._version(route.intent, route.version), -1
        newest = route.act.timeline[-1]
        return self._version(route.intent, newest.version), newest.from_time or -1

    def _route(self, tenant_id: str, intent: str | None) -> Route | Rejection:
        key = (tenant_id, intent)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = resolve_route(self._tenants, self._models, tenant_id, intent)
        return route

    def _version(self, intent: str, version: int) -> LoadedModel | Rejection:
        ident = (intent, version)
        model = self._versions.get(ident)
        if model is None:
            try:
                model = self._models.get(intent, version)
            except ModelError as e:  # a pinned version that is not on the topic, or one that does not load
                model = Rejection(Reason.NO_ACTIVE_MODEL, str(e)[:300])
            self._versions[ident] = model
        return model


# ---- values ---------------------------------------------------------------------------------------


def feature_matrix(features: list[dict], names: tuple[str, ...]) -> np.ndarray:
    """Rows of feature dicts -> float64 matrix in `names` order; a missing feature is NaN."""
    return _matrix(features, names)[0]


def _matrix(features: list[dict], names: tuple[str, ...]) -> tuple[np.ndarray, bool]:
    """feature_matrix, and whether every event has every one of `names` (the fast path held)."""
    n, k = len(features), len(names)
    try:
        # Fast path: every event has every model feature; itemgetter picks them in C.
        pick = operator.itemgetter(*names) if k > 1 else (lambda f, _n=names[0]: (f[_n],))
        flat = itertools.chain.from_iterable(map(pick, features))
        return np.fromiter(flat, dtype=np.float64, count=n * k).reshape(n, k), True
    except KeyError:
        flat = itertools.chain.from_iterable([f.get(name, _NAN) for name in names] for f in features)
        return np.fromiter(flat, dtype=np.float64, count=n * k).reshape(n, k), False


def unknown_rows(features: list[dict], names: tuple[str, ...], complete: bool) -> np.ndarray:
    """Indices of the events that carry a feature not among `names`. When every event has every one of
    `names` (`complete`), an event has an unknown feature exactly when it has more than len(names): one len()
    per event, in C. Otherwise each event's keys are looked up among the names (also in C, no set built)."""
    n = len(features)
    if complete:
        return np.flatnonzero(np.fromiter(map(len, features), dtype=np.intp, count=n) > len(names))
    known = frozenset(names).issuperset
    return np.flatnonzero(~np.fromiter(map(known, features), dtype=bool, count=n))


def unknown_fields(features: list[dict], names: tuple[str, ...], complete: bool) -> list[tuple[int, list[str]]]:
    """(row, its unknown field names, sorted) for each event that carries a feature not among `names`; the
    names are computed only for those events."""
    rows = unknown_rows(features, names, complete)
    if not rows.size:
        return []
    known = frozenset(names)
    return [(i, sorted(features[i].keys() - known)) for i in rows.tolist()]


def check_unknown(features: list[dict], names: tuple[str, ...], complete: bool,
                  policy: UnknownFeatures) -> dict[int, Rejection]:
    """The intent's unknown_features policy over a group's events (see apply_unknown_policy)."""
    return apply_unknown_policy(unknown_fields(features, names, complete), policy, len(names))


def apply_unknown_policy(extra: list[tuple[int, list[str]]], policy: UnknownFeatures,
                         n_known: int) -> dict[int, Rejection]:
    """Under reject, {row: unknown_feature rejection naming the fields}; under ignore, nothing refused and
    each unknown field counted in the policy's tally. `extra`: unknown_fields' answer, rows ascending."""
    if not extra:
        return {}
    if not policy.reject:
        policy.count(itertools.chain.from_iterable(fields for _, fields in extra))
        return {}
    return {i: Rejection(Reason.UNKNOWN_FEATURE, _unknown_detail(fields, policy.intent, n_known))
            for i, fields in extra}


def _unknown_detail(fields: list[str], intent: str, n_known: int) -> str:
    shown = ", ".join(repr(f[:100]) for f in fields[:5]) + (f" and {len(fields) - 5} more" if len(fields) > 5 else "")
    noun = "feature" if len(fields) == 1 else "features"
    return (f"unknown {noun} {shown}: not among the {n_known} features of the {intent} version scoring it "
            f"(unknown_features = \"reject\")")


def value_limit(max_abs_feature: float) -> float:
    """The largest magnitude a model feature may have: the setting, capped where float32 ends."""
    return min(float(max_abs_feature), FLOAT32_MAX)


def over_limit(x: np.ndarray, max_abs_feature: float) -> np.ndarray:
    """Boolean matrix: the cells of a float64 feature matrix beyond the value limit (NaN, a missing value,
    is within it)."""
    with np.errstate(invalid="ignore"):
        return np.abs(x) > value_limit(max_abs_feature)


def model_matrix(features: list[dict], names: tuple[str, ...], max_abs_feature: float,
                 unknown: UnknownFeatures | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[int, Rejection]]]:
    """Step 3 of the contract, for the events one version scores: (float32 matrix of the rows kept, their row
    indices or None when every row is, [(row, rejection)] for each row refused, in row order).

    Refused: an event with a feature the version does not know, when `unknown` (the intent's policy, the
    version's LoadedModel.unknown) rejects them (unknown_feature: checked first, it says more than a value
    does); an event with a model feature beyond the value limit (value_too_large). `unknown` None: no check
    of unknown features (a matrix for analysis, not a contract decision)."""
    x, complete = _matrix(features, names)
    why = check_unknown(features, names, complete, unknown) if unknown is not None else {}
    return limit_rows(x, names, max_abs_feature, why)


def limit_rows(x: np.ndarray, names: tuple[str, ...], max_abs_feature: float, why: dict[int, Rejection]
               ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[int, Rejection]]]:
    """The end of model_matrix, for a float64 matrix of a group's rows and the rows already refused (`why`,
    unknown features): each other row with a model feature beyond the value limit refused as
    value_too_large; the float32 matrix of the rows kept, their indices (None: all) and the refusals."""
    over = over_limit(x, max_abs_feature)
    bad = over.any(axis=1)
    if not why and not bad.any():
        return x.astype(np.float32), None, []
    limit = value_limit(max_abs_feature)
    rows = np.flatnonzero(bad)
    for i, c in zip(rows.tolist(), over[rows].argmax(axis=1).tolist()):
        if i not in why:
            why[i] = Rejection(Reason.VALUE_TOO_LARGE, f"feature {names[c]!r} magnitude exceeds {limit:g}")
    bad[list(why)] = True
    kept = np.flatnonzero(~bad)
    return x[kept].astype(np.float32), kept, sorted(why.items())


def model_outputs(model: LoadedModel, x: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[int, Rejection]]]:
    """Step 4 of the contract, for a group's float32 matrix: (float64 raw scores of the rows the version
    scored, their row indices or None when it scored every row, [(row, rejection)] for each row it did not)."""
    try:
        raw = np.asarray(raw_scores(model, x), dtype=np.float64)
        if raw.shape != (len(x),):
            raise ModelError(f"predict gave shape {raw.shape} for {len(x)} rows, not one score per row")
    except MemoryError:
        raise  # the process's trouble, not the model's: abort the batch, as for any other error
    except Exception as e:  # noqa: BLE001 - whatever a booster raises, its events must still get an output
        text = str(e).strip()
        r = Rejection(Reason.MODEL_ERROR, f"{model.name}: predict failed: {type(e).__name__}: "
                                          f"{text.splitlines()[0][:300] if text else ''}")
        return np.empty(0), np.empty(0, dtype=np.intp), [(i, r) for i in range(len(x))]
    ok = (raw >= 0.0) & (raw <= 1.0)  # NaN compares False: it is not a probability either
    if ok.all():
        return raw, None, []
    bad = np.flatnonzero(~ok)
    rejected = [(i, Rejection(Reason.MODEL_ERROR, f"{model.name}: raw score {v!r} is not a probability in [0, 1]"))
                for i, v in zip(bad.tolist(), raw[bad].tolist())]
    kept = np.flatnonzero(ok)
    return raw[kept], kept, rejected
