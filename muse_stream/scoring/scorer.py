"""One micro-batch, from raw Kafka messages to decisions and dead letters, with no Kafka I/O of its own.

Per event there is only what cannot be vectorised: reading the event (columns.py: the compiled scanner, or
the contract's parse_event) and writing its decision's bytes (the compiled writer, or the loop in
_decisions_py). Routing, scoring, the value limits, the transform and the bands run once per pair or per
(intent, version) group as numpy calls. native.py says which path is active; both give the same bytes.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np
import orjson

from muse_stream.models.registry import LoadedModel, ModelRegistry
from muse_stream.scoring import native as _native
from muse_stream.scoring.columns import Columns, admit_columns, matrices
from muse_stream.scoring.contract import Router, model_outputs
from muse_stream.scoring.deadletter import Reason
from muse_stream.scoring.reasons import ReasonCodes
from muse_stream.tenants import TenantRegistry

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class DeadLetter:
    msg: object  # confluent_kafka.Message
    reason: Reason
    detail: str
    headers: list | None = None  # more dead-letter headers (a duplicate's first occurrence)


@dataclass(slots=True)
class ScoredGroup:
    """One tenant's events of one (intent, version) in a batch, as arrays: what telemetry aggregates."""

    tenant_id: str
    intent: str
    model_name: str
    scores: np.ndarray  # reference scale, float64
    bands: np.ndarray  # index into band_names
    band_names: list[str]
    event_times: np.ndarray  # int64 epoch ms
    thresholds: np.ndarray  # float64, of band_names[1:] on the intent's reference scale: the bands that acted


@dataclass(slots=True)
class ScoredMatrix:
    """One (intent, version) group of a batch as scored: what shadow scoring re-scores with one call."""

    intent: str
    model_name: str
    features: tuple[str, ...]
    x: np.ndarray  # float32, rows in the group's order
    event_ids: list
    tenants: list
    times: list
    raw: np.ndarray
    scores: np.ndarray  # served (reference scale, tenant maps applied)


@dataclass(slots=True)
class BatchOutput:
    decisions: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (topic, key, value)
    dead: list[DeadLetter] = field(default_factory=list)
    # (tenant, intent, model name) -> count, for metrics and tests
    scored: dict[tuple[str, str, str], int] = field(default_factory=dict)
    groups: list[ScoredGroup] = field(default_factory=list)
    matrices: list[ScoredMatrix] = field(default_factory=list)


class BatchScorer:
    """Turns a batch of input messages into decisions, given the tenant and model registries."""

    def __init__(self, tenants: TenantRegistry, models: ModelRegistry, *, max_abs_feature: float,
                 max_event_bytes: int, output_topic=None, intents: tuple = (), native: bool | None = None,
                 state=None) -> None:
        self.tenants = tenants
        self.models = models
        self.max_abs = max_abs_feature
        self.max_bytes = max_event_bytes
        # Maps a tenant id to its decision topic; replays pass their own so live topics are never touched.
        self.output_topic = output_topic or tenants.output_topic
        # Reason codes per intent, from the settings' IntentConfig records (`settings.intents`): live and
        # replay pass the same, so a replay's flagged decisions name the same features as live's.
        self.reasons = ReasonCodes.from_intents(intents)
        self._warmed: dict[tuple[str, int], object] = {}  # (intent, version) -> the LoadedModel warmed
        # The compiled scanner and decision writer, or None for the pure-Python path (native.py; None: the
        # process's choice, False: pure Python, True: compiled, for the tests that compare the two).
        self.native = _native.module(native)
        self._write = self.native.decisions if self.native is not None else _decisions_py
        # Entity state (state/engine.StateEngine), or None: features computed after routing, before any matrix.
        self.state = state if state is not None and state.enabled else None
        if native is None:
            _say_path(_native.active_path())

    def warm_loaded(self) -> None:
        """Each version loaded since the last call pays its one-time costs now, between batches and before it
        governs events, rather than in the first batch it scores: XGBoost's first prediction (about 50-100 ms
        for 200 trees) and the reason codes' tables (15-70 ms)."""
        for ident, model in list(self.models.loaded.items()):
            if self._warmed.get(ident) is model:
                continue
            self._warmed[ident] = model
            model_outputs(model, np.zeros((1, len(model.features)), dtype=np.float32))  # refusals: none kept
            if self.reasons.count(model.intent) > 0:
                self.reasons.prepare(model, len(model.features))
        for ident in [i for i in self._warmed if i not in self.models.loaded]:
            del self._warmed[ident]

    def process(self, msgs: list, decided_at: int) -> BatchOutput:
        """Score a batch: each event through the contract to its version's group, then each group at once."""
        out = BatchOutput()
        # A Router per batch: the registries change only between batches.
        cols, groups, refused = admit_columns(msgs, Router(self.tenants.tenants, self.models), self.max_bytes,
                                              self.native, self.state.capture if self.state is not None else ())
        out.dead.extend(DeadLetter(msgs[i], r.reason, r.detail) for i, r in refused)
        # Each version's matrix and its refusals (unknown features, values beyond the limit) come before the
        # entity state: an event refused there never enters its entity's state, so it counts in no later
        # event's features and its corrected resend (same event id) is scored, not a duplicate.
        ready, by_matrix, by_state = matrices(cols, groups, self.max_abs, self.state)
        out.dead.extend(DeadLetter(msgs[i], r.reason, r.detail) for i, r in by_matrix)
        out.dead.extend(DeadLetter(msgs[i], Reason(r), d, h) for i, r, d, h in by_state)
        for model, rows, x32 in ready:
            self._score_group(model, cols, rows, x32, out, decided_at)
        if self.state is not None:
            self.state.decorate(out.decisions)
        return out

    def _score_group(self, model: LoadedModel, cols: Columns, rows: np.ndarray, x32: np.ndarray, out: BatchOutput,
                     decided_at: int) -> None:
        """One version's rows and their matrix: one booster call, one transform call, then decisions per tenant."""
        # The booster's raw scores; rows it cannot score (it raised, or a score is not a probability) become
        # model_error dead letters, so the transform below sees only probabilities.
        raw, kept, failed = model_outputs(model, x32)
        rows = _refuse(out, cols, rows, kept, failed)
        if rows is None:
            return
        if kept is not None:
            x32 = x32[kept]
        msgs, eids, tids = cols.msgs[rows].tolist(), cols.eids[rows].tolist(), cols.tids[rows].tolist()
        time_arr = cols.times[rows]
        times = time_arr.tolist()
        scores = model.transform.apply(raw, tids)  # every tenant through its own map, if it has one
        intent, model_name = model.intent, model.name
        # Decisions are formatted from a template: the fixed parts JSON-encoded once per tenant, the floats
        # as orjson writes them (one dumps of the whole list, split at the commas), so the bytes are what
        # orjson.dumps of each decision dict would give, at a fraction of the cost.
        intent_part = b',"intent":' + _json(intent) + b',"score":'
        decided = b',"decided_at":%d,"source":{"topic":' % decided_at
        topics: dict[str, bytes] = {}
        decisions = out.decisions
        dumps = orjson.dumps
        by_tenant = _rows_by_tenant(tids)
        # Every tenant's bands first, so the flagged rows of the whole group get their reasons in one call.
        group_bands = np.empty(len(tids), dtype=object)
        flagged = np.empty(len(tids), dtype=bool)
        for tid, rows in by_tenant:
            group_bands[rows], flagged[rows] = self._bands(out, tid, intent, model_name, scores[rows], time_arr[rows])
        self.reasons.add(model, x32, group_bands, flagged)
        for tid, rows in by_tenant:
            t_scores = scores[rows]
            band_json = group_bands[rows].tolist()
            tver = f"{model_name}/{tid}" if model.transform.has_tenant_map(tid) else model_name
            topic = self.output_topic(tid)
            head = b',"tenant_id":' + _json(tid) + intent_part
            mid = b',"model_version":' + _json(model_name) + b',"transform_version":' + _json(tver)
            s_json = dumps(t_scores.tolist())[1:-1].split(b",")
            r_json = dumps(raw[rows].tolist())[1:-1].split(b",")
            self._write(decisions, topic, rows.tolist(), msgs, eids, head, s_json, r_json, band_json, mid, times,
                        decided, topics, dumps)
            key = (tid, intent, model_name)
            out.scored[key] = out.scored.get(key, 0) + len(rows)
        out.matrices.append(ScoredMatrix(intent, model_name, model.features, x32, eids, tids, times, raw, scores))

    def _bands(self, out: BatchOutput, tid: str, intent: str, model_name: str, scores: np.ndarray,
               times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each of a tenant's rows' band, JSON-encoded, from the bands in force at its event time, and whether
        it is flagged (a band other than approve); one ScoredGroup per set of bands (one, unless the tenant's
        bands changed within the batch's event times)."""
        band_json = np.empty(len(scores), dtype=object)
        flagged = np.empty(len(scores), dtype=bool)
        for bands, idx in self.tenants.band_groups(tid, intent, times):
            sel = slice(None) if idx is None else idx
            assigned = bands.assign(scores[sel])
            out.groups.append(ScoredGroup(tid, intent, model_name, scores[sel], assigned, bands.names, times[sel],
                                          bands.thresholds))
            band_json[sel] = np.array([_json(b) for b in bands.names], dtype=object)[assigned]
            flagged[sel] = assigned > 0  # names[0] is approve, a name no tenant's band may take
        return band_json, flagged


@functools.cache
def _say_path(path: str) -> None:
    """Once per process (a worker's first scorer): which path scores, so a slow worker's log says why."""
    logger.info("scoring path: %s", path)


def _rows_by_tenant(tids: list[str]) -> list[tuple[str, np.ndarray]]:
    """Each tenant's row indices (ascending), tenants in order of first appearance: one stable argsort
    rather than a mask per tenant."""
    code = {t: k for k, t in enumerate(dict.fromkeys(tids))}
    if len(code) == 1:
        return [(tids[0], np.arange(len(tids)))]
    codes = np.fromiter(map(code.__getitem__, tids), dtype=np.intp, count=len(tids))
    rows = np.argsort(codes, kind="stable")
    return list(zip(code, np.split(rows, np.cumsum(np.bincount(codes))[:-1])))


def _json(value: str) -> bytes:
    return orjson.dumps(value)


def _decisions_py(out: list, topic: str, rows: list[int], msgs: list, eids: list, head: bytes, s_json: list,
                  r_json: list, band_json: list, mid: bytes, times: list, decided: bytes, topics: dict,
                  dumps) -> None:
    """Append (topic, key, decision bytes) for each of a tenant's rows (positions in the group's columns; the
    j-th row's score, raw score and band JSON are s_json[j], r_json[j], band_json[j]). _native.decisions
    writes the same bytes."""
    for j, i in enumerate(rows):
        m = msgs[i]
        eid = eids[i]
        mt = m.topic()
        tj = topics.get(mt)
        if tj is None:
            tj = topics[mt] = dumps(mt)
        out.append((topic, eid.encode(), b"".join((
            b'{"event_id":', dumps(eid), head, s_json[j], b',"raw_score":', r_json[j], b',"band":', band_json[j],
            mid, b',"event_time":%d' % times[i], decided, tj,
            b',"partition":%d,"offset":%d,"timestamp":%d}}' % (m.partition(), m.offset(), m.timestamp()[1]),
        ))))


def _refuse(out: BatchOutput, cols: Columns, rows: np.ndarray, kept, rejected) -> np.ndarray | None:
    """Dead-letter the rejected rows (positions within `rows`); the rows kept, all of them when `kept` is
    None, or None when no row is left."""
    for i, r in rejected:
        out.dead.append(DeadLetter(cols.msgs[rows[i]], r.reason, r.detail))
    if kept is None:
        return rows
    if not kept.size:
        return None
    return rows[kept]
