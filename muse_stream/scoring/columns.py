"""Steps 1-3 of the event contract (contract.py) for a whole batch at once, as columns: what the live scorer,
`validate` and the backtest run (contract_pass: steps 1-4). The same rules as parse_event, Router and
model_matrix, with the per-event work done by the
compiled scanner (native.py) where it is built, and by contract.parse_event otherwise:

- parse: the scanner reads each plain event into columns (its event id, a code for its (tenant, intent) pair,
  its event time, its features as a row of a float64 matrix over the batch's feature names and a row of
  "present" flags); an event it is not sure of, and every event on the pure path, goes through parse_event,
  and its features stay a dict;
- route: once per (tenant, intent) pair (Router.latest), with Router.admit per event only for events older
  than the pair's newest activation entry; groups per version in order of first event, rows ascending;
- matrix: per group, the model's columns picked out of the batch matrix (dict rows as model_matrix reads
  them), then the same unknown-feature policy and value limits (contract.limit_rows).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from muse_stream.models.feature_contract import UnknownFeatures
from muse_stream.models.registry import LoadedModel
from muse_stream.scoring.contract import (
    REQUIRED,
    Rejection,
    Router,
    _matrix,
    apply_unknown_policy,
    limit_rows,
    model_outputs,
    parse_event,
    unknown_fields,
)
from muse_stream.scoring.deadletter import Reason
from muse_stream.state.reading import ABSENT

_value = operator.methodcaller("value")
_CONTRACT_FIELDS = frozenset((*REQUIRED, "intent"))


@dataclass(slots=True)
class Columns:
    """A batch as columns, one entry per input message (rows refused at parsing hold placeholders)."""

    msgs: np.ndarray  # object: the messages
    eids: np.ndarray  # object: event ids
    tids: np.ndarray  # object: tenant ids as sent
    times: np.ndarray  # int64 epoch ms
    scanned: np.ndarray  # bool: the row's features are in x (the scanner read it), else a dict in feats
    feats: list  # per row: the features dict of a row parse_event read, else None
    names: dict[str, int]  # the scanner's feature names -> column of x
    x: np.ndarray  # float64 (rows, names); NaN where a feature is null or absent
    present: np.ndarray  # bool (rows, names): the event carries that feature (null included)
    # Top-level fields besides the contract's that the caller asked the scanner for (entity state's fields):
    # per name, each row's value as orjson reads it, ABSENT where the event has no such field; None on the
    # pure path. Rows the scanner did not read (scanned False) hold None: read them from the event itself.
    captured: dict[str, np.ndarray] | None = None


def _objects(items: list) -> np.ndarray:
    return np.fromiter(items, dtype=object, count=len(items))


def admit_columns(msgs: list, router: Router, max_event_bytes: int, native=None, capture: tuple[str, ...] = ()
                  ) -> tuple[Columns, list[tuple[LoadedModel, np.ndarray]], list[tuple[int, Rejection]]]:
    """Steps 1 and 2 for a batch: its columns; per version, in order of first event, the rows it scores
    (ascending); and (row, rejection) for each row refused, rows ascending. `native`: the compiled module
    (native.module()), or None for the pure path; `capture`: top-level fields (not the contract's) whose values
    the scanner should keep (Columns.captured)."""
    n = len(msgs)
    values = list(map(_value, msgs))
    if native is not None:
        eids, codes, pairs, times, names, x, present, captured = scan_values(native, values, max_event_bytes, capture)
    else:
        eids, codes, pairs, times = [None] * n, np.full(n, -1, dtype=np.intp), [], np.zeros(n, dtype=np.int64)
        names, x, present, captured = {}, np.empty((n, 0)), np.empty((n, 0), dtype=np.bool_), None
    scanned = codes >= 0
    feats: list = [None] * n
    refused: list[tuple[int, Rejection]] = []
    if not scanned.all():
        pair_code = {p: k for k, p in enumerate(pairs)}
        for i in np.flatnonzero(~scanned).tolist():  # the Python contract, one event at a time
            ev = parse_event(values[i], max_event_bytes)
            if type(ev) is Rejection:
                refused.append((i, ev))
                continue
            key = (ev[1], ev[2])
            k = pair_code.get(key)
            if k is None:
                k = pair_code[key] = len(pairs)
                pairs.append(key)
            codes[i], eids[i], times[i], feats[i] = k, ev[0], ev[3], ev[4]
    pair_tids = _objects([p[0] for p in pairs])
    cols = Columns(_objects(msgs), _objects(eids), pair_tids[np.maximum(codes, 0)] if pairs else _objects([None] * n),
                   times, scanned, feats, names, x, present, captured)
    groups, route_refused = _route(router, pairs, codes, eids, times)
    if route_refused:
        refused = sorted(refused + route_refused, key=operator.itemgetter(0))
    return cols, groups, refused


def scan_values(native, values: list[bytes], max_event_bytes: int, capture: tuple[str, ...] = ()) -> tuple:
    """The compiled scanner over a batch's values, as arrays: (event ids, pair codes (intp, -1: left to the
    Python contract), pairs, event times (int64), feature names -> column, x (float64), present (bool), the
    kept top-level fields (Columns.captured) or None when `capture` names none but the contract's own)."""
    n = len(values)
    capture = tuple(f for f in capture if f not in _CONTRACT_FIELDS)  # the scanner keeps no copy of those
    captured = None
    if capture:
        eids, codes, pairs, times, names, x, present, got = native.scan(values, max_event_bytes, capture, ABSENT)
        captured = {name: _objects(col) for name, col in zip(capture, got)}
    else:
        eids, codes, pairs, times, names, x, present = native.scan(values, max_event_bytes)
    return (eids, np.frombuffer(codes, dtype=np.int32).astype(np.intp), pairs,
            np.frombuffer(times, dtype=np.int64).copy(), {name: j for j, name in enumerate(names)},
            np.frombuffer(x, dtype=np.float64).reshape(n, len(names)),
            np.frombuffer(present, dtype=np.bool_).reshape(n, len(names)), captured)


def matrices(cols: Columns, groups: list, max_abs_feature: float, state=None
             ) -> tuple[list[tuple[LoadedModel, np.ndarray, np.ndarray]], list[tuple[int, Rejection]], list]:
    """Step 3 for each version, then the entity state over the rows it kept (an event refused by its matrix
    never enters its entity's state), then each matrix's state columns filled: ([(model, rows, float32
    matrix)] ready for the model, [(row, rejection)] of the matrices, [(row, reason, detail, headers)] of the
    state). As BatchScorer.process, contract_pass and so `validate` run it."""
    ready, refused = [], []
    for model, rows in groups:
        x, kept, rejected = group_matrix(cols, rows, model.features, max_abs_feature, model.unknown)
        refused += [(int(rows[i]), r) for i, r in rejected]
        rows = rows if kept is None else rows[kept]
        if rows.size:
            ready.append((model, rows, x))
    by_state: list = []
    if state is not None:
        _, by_state = state.compute(cols, [(m, r) for m, r, _ in ready])
        if by_state:  # duplicates, wrong keys, no entity: their matrix rows go too
            gone = np.array([i for i, *_ in by_state], dtype=np.intp)
            left = []
            for model, rows, x in ready:
                keep = ~np.isin(rows, gone)
                if keep.any():
                    left.append((model, rows[keep], x[keep]))
            ready = left
        for model, rows, x in ready:
            state.fill(model, x, rows)
    return ready, refused, by_state


def contract_pass(msgs: list, router: Router, max_event_bytes: int, max_abs_feature: float, native=None,
                  state=None
                  ) -> tuple[Columns, list[tuple[LoadedModel, np.ndarray, np.ndarray]], list[tuple[int, Rejection]]]:
    """Steps 1-4 for a batch, as BatchScorer.process runs them, with the entity state of `state` (a
    StateEngine) between steps 3 and 4: its columns; per version, the rows it scores and their raw scores; and
    (row, rejection) for each row refused, rows ascending. What `validate` and the backtest run, so they
    dead-letter exactly what the live workers would."""
    cols, groups, refused = admit_columns(msgs, router, max_event_bytes, native,
                                          state.capture if state is not None else ())
    ready, by_matrix, by_state = matrices(cols, groups, max_abs_feature, state)
    refused = [*refused, *by_matrix, *((i, Rejection(Reason(r), d)) for i, r, d, _ in by_state)]
    scored = []
    for model, rows, x in ready:
        raw, kept, failed = model_outputs(model, x)
        refused += [(int(rows[i]), r) for i, r in failed]
        if kept is not None:
            rows = rows[kept]
        if rows.size:
            scored.append((model, rows, raw))
    refused.sort(key=operator.itemgetter(0))
    return cols, scored, refused


def _split(codes: np.ndarray, k: int) -> list[np.ndarray]:
    """The rows of each code 0..k-1 (codes < 0 left out), each ascending: one stable argsort, no mask per code."""
    rows = np.flatnonzero(codes >= 0)
    order = rows[np.argsort(codes[rows], kind="stable")]
    return np.split(order, np.cumsum(np.bincount(codes[rows], minlength=k))[:-1])


def _route(router: Router, pairs: list, codes: np.ndarray, eids: list, times: np.ndarray
           ) -> tuple[list[tuple[LoadedModel, np.ndarray]], list[tuple[int, Rejection]]]:
    """Step 2: each row's version or rejection, decided once per pair and per event only before the pair's
    newest activation entry; the rows of each version and the rows refused."""
    target = np.full(len(codes), -1, dtype=np.intp)
    targets: list = []  # versions and rejections, each once
    index: dict[int, int] = {}

    def slot(obj) -> int:
        k = index.get(id(obj))
        if k is None:
            k = index[id(obj)] = len(targets)
            targets.append(obj)
        return k

    for (tid, intent), rows in zip(pairs, _split(codes, len(pairs))):
        if not rows.size:
            continue
        latest, since = router.latest(tid, intent)
        target[rows] = slot(latest)
        if since > 0:
            for i in rows[times[rows] < since].tolist():  # before the newest entry: the timeline, per event
                target[i] = slot(router.admit((eids[i], tid, intent, int(times[i]))))
    groups, refused = [], []
    for obj, rows in zip(targets, _split(target, len(targets))):
        if not rows.size:  # a pair's newest version, when all of its events were older than it
            continue
        if type(obj) is Rejection:
            refused.extend((i, obj) for i in rows.tolist())
        else:
            groups.append((obj, rows))
    groups.sort(key=lambda g: g[1][0])
    refused.sort(key=operator.itemgetter(0))
    return groups, refused


def group_matrix(cols: Columns, rows: np.ndarray, names: tuple[str, ...], max_abs_feature: float,
                 unknown: UnknownFeatures | None
                 ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[int, Rejection]]]:
    """Step 3 for the rows one version scores: what model_matrix gives for their events (positions are
    within `rows`)."""
    scanned = cols.scanned[rows]
    if scanned.all():
        x, extra = _scanned_part(cols, rows, names, unknown is not None)
    elif not scanned.any():
        x, extra = _dict_part(cols, rows, names, unknown is not None)
    else:  # both kinds: each part the way it is read, then the unknown fields back in row order
        x = np.empty((len(rows), len(names)))
        at_s, at_d = np.flatnonzero(scanned), np.flatnonzero(~scanned)
        x[at_s], extra_s = _scanned_part(cols, rows[at_s], names, unknown is not None)
        x[at_d], extra_d = _dict_part(cols, rows[at_d], names, unknown is not None)
        extra = sorted([(int(at_s[i]), f) for i, f in extra_s] + [(int(at_d[i]), f) for i, f in extra_d])
    why = apply_unknown_policy(extra, unknown, len(names)) if unknown is not None else {}
    return limit_rows(x, names, max_abs_feature, why)


def _dict_part(cols: Columns, rows: np.ndarray, names: tuple[str, ...], check: bool
               ) -> tuple[np.ndarray, list[tuple[int, list[str]]]]:
    feats = [cols.feats[i] for i in rows.tolist()]
    x, complete = _matrix(feats, names)
    return x, (unknown_fields(feats, names, complete) if check else [])


def _scanned_part(cols: Columns, rows: np.ndarray, names: tuple[str, ...], check: bool
                  ) -> tuple[np.ndarray, list[tuple[int, list[str]]]]:
    """The model's columns of scanned rows (a name the batch never carried: NaN, a missing value), and the
    unknown fields of each row that carries a feature outside `names`."""
    where = np.array([cols.names.get(name, -1) for name in names], dtype=np.intp)
    have = where >= 0
    if have.all():
        x = cols.x[rows[:, None], where]
    else:
        x = np.full((len(rows), len(names)), np.nan)
        x[:, have] = cols.x[rows[:, None], where[have]]
    if not check:
        return x, []
    outside = np.ones(len(cols.names), dtype=bool)
    outside[where[have]] = False
    other = np.flatnonzero(outside)
    if not other.size:
        return x, []
    carried = cols.present[rows[:, None], other]
    hit = np.flatnonzero(carried.any(axis=1))
    if not hit.size:
        return x, []
    by_col = list(cols.names)  # names in column order (a dict keeps insertion order)
    return x, [(i, sorted(by_col[other[j]] for j in np.flatnonzero(carried[i]).tolist())) for i in hit.tolist()]
