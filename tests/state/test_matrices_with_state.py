"""The pass the live scorer, `validate` and replays share (scoring/columns.matrices): each version's matrix and
its refusals first, then the entity state over the rows left, then the state's columns in each matrix."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import orjson
from confluent_kafka import Message

from muse_stream.models.feature_contract import UnknownFeatures
from muse_stream.scoring.columns import matrices
from tests.fixtures.state_engine import one_store_engine

T0 = 1_700_000_000_000


def _cols(events: list[dict]):
    msgs = [Message(topic="in", partition=0, offset=i, key=ev["card_id"].encode(), value=orjson.dumps(ev))
            for i, ev in enumerate(events)]
    n = len(events)
    return SimpleNamespace(
        msgs=np.array(msgs + [None], dtype=object)[:-1], eids=np.array([e["event_id"] for e in events], dtype=object),
        tids=np.array(["acme"] * n, dtype=object), times=np.array([e["event_time"] for e in events], dtype=np.int64),
        scanned=np.zeros(n, dtype=bool), feats=[e["features"] for e in events], names={}, x=np.empty((n, 0)),
        present=np.empty((n, 0), dtype=bool), captured=None)


def test_the_state_sees_only_what_the_matrix_kept_and_the_model_reads_its_features(tmp_path):
    engine = one_store_engine(tmp_path, aggregates=("count", "sum:amount"))
    model = SimpleNamespace(intent="card_fraud", unknown=UnknownFeatures("card_fraud"),
                            features=("V1", "amount", "card_id.count_1m", "card_id.sum_amount_1m"))

    def ev(i, eid, **feats):
        return {"event_id": eid, "tenant_id": "acme", "event_time": T0 + i * 1000, "card_id": "c1",
                "features": {"V1": 0.5, "amount": 10.0, **feats}}

    # e2 carries a feature the model does not know (refused by its matrix), e3 a value beyond the limit; e2
    # comes again corrected; e1 comes again as a producer's retry.
    events = [ev(0, "e1"), ev(1, "e2", colour=3.0), ev(2, "e3", V1=1e31), ev(3, "e2"), ev(4, "e1"), ev(5, "e4")]
    ready, by_matrix, by_state = matrices(_cols(events), [(model, np.arange(len(events)))], 1e30, engine)
    assert [(i, r.reason.value) for i, r in by_matrix] == [(1, "unknown_feature"), (2, "value_too_large")]
    assert [(i, r) for i, r, _, _ in by_state] == [(4, "duplicate_event")]
    (_, rows, x), = ready
    assert rows.tolist() == [0, 3, 5]  # the corrected e2 is scored: the refused one never entered the state
    # Counts and sums over the earlier scored events only (the refused ones are in neither).
    assert x[:, 2].tolist() == [0.0, 1.0, 2.0] and x[:, 3].tolist() == [0.0, 10.0, 20.0]
    engine.close()
