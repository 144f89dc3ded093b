"""The IEEE-CIS demo's offline parts, with no download: entity features by brute force on hand-checkable rows
and against the worker's own window step, and the loader refusing a bad file in one line."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from muse_stream.demo.ieee_data import COLUMNS, N_ROWS, read_transactions
from muse_stream.demo.ieee_features import brute_force
from muse_stream.errors import DataError
from muse_stream.featurespec import StateSpec
from muse_stream.state.windows import Entity, Plan, id_hash, step

SPEC = StateSpec(entity=("card_id",), windows=("1m", "1h"),
                 aggregates=("count", "sum:amt", "mean:amt", "max:amt", "distinct:email", "seconds_since_last"))
MIN = 60_000


def _row(names, out, i, window):
    return {n.split(".", 1)[1].rsplit("_", 1)[0]: out[i, j] for j, n in enumerate(names) if n.endswith(window)}


def test_hand_checked_windows_ties_missing_values_and_entities():
    # rows: entity, time (ms), amount, email code (-1: missing)
    ent = np.array(["a", "a", "b", "a", "a", "a"])
    t = np.array([0, 30_000, 30_000, 30_000, 90_000, 90_000 + 3_600_000])
    amt = np.array([10.0, np.nan, 7.0, 5.0, 1.0, 2.0])
    email = np.array([1, 2, 1, -1, 2, 1])
    out = brute_force(SPEC, ent, t, {"amt": amt}, {"email": email})
    names = SPEC.feature_names()
    nan = math.nan
    first = _row(names, out, 0, "1m")
    assert first == {"count": 0, "sum_amt": 0, "mean_amt": first["mean_amt"], "max_amt": first["max_amt"],
                     "distinct_email": 0}
    assert math.isnan(first["mean_amt"]) and math.isnan(first["max_amt"])
    # row 3 ties row 1 in time and comes after it: rows 0 and 1 (a NaN amount: counted, not summed)
    assert _row(names, out, 3, "1m") == {"count": 2, "sum_amt": 10, "mean_amt": 10, "max_amt": 10,
                                         "distinct_email": 2}
    # row 4 at 90 s: the 1 m window is [30 s, 90 s], inclusive at its start: rows 1 and 3, not 0 (nor b's row 2)
    r4 = _row(names, out, 4, "1m")
    assert (r4["count"], r4["sum_amt"], r4["max_amt"], r4["distinct_email"]) == (2, 5, 5, 2)  # codes 2 and missing
    assert _row(names, out, 4, "1h")["count"] == 3
    # row 5 exactly one hour after row 4: row 4 is the start of its 1 h window, nothing in the 1 m one
    assert _row(names, out, 5, "1h") == {"count": 1, "sum_amt": 1, "mean_amt": 1, "max_amt": 1, "distinct_email": 1}
    assert _row(names, out, 5, "1m")["count"] == 0
    since = out[:, names.index("card_id.seconds_since_last")]
    np.testing.assert_array_equal(since, [nan, 30.0, nan, 0.0, 60.0, 3600.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        brute_force(SPEC, ent, t[::-1], {"amt": amt}, {"email": email})


def test_matches_the_workers_window_step_on_random_rows():
    rng = np.random.default_rng(7)
    n = 3_000
    t = np.cumsum(rng.choice([0, 0, 1_000, 20_000, 300_000, 1_200_000], n))
    ent = rng.integers(0, 40, n)
    amt = np.where(rng.random(n) < 0.1, np.nan, rng.integers(1, 500, n).astype(float))
    email = np.where(rng.random(n) < 0.3, -1, rng.integers(0, 6, n))
    # small chunks, so that a query's pairs straddle chunk boundaries
    got = brute_force(SPEC, ent, t, {"amt": amt}, {"email": email}, max_pairs=257)
    plan, states = Plan(SPEC), {}
    want = np.empty_like(got)
    for i in range(n):
        e = states.setdefault(int(ent[i]), Entity.empty(1, 1))
        code = 0 if email[i] < 0 else id_hash(str(email[i]))  # the worker's code for a missing value is 0
        kind, _ = step(plan, e, int(t[i]), i, id_hash(f"e{i}"), np.array([amt[i]]), np.array([code]), want[i])
        assert kind == "ok"
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def _csv(rows: list[list[str]], header=COLUMNS) -> io.StringIO:
    return io.StringIO("\n".join(",".join(r) for r in [header, *rows]) + "\n")


def _good_row(i: int, dt: int) -> list[str]:
    row = [""] * len(COLUMNS)
    for name, value in (("TransactionID", str(3_000_000 + i)), ("isFraud", str(i % 2)), ("TransactionDT", str(dt)),
                        ("TransactionAmt", "12.5"), ("ProductCD", "W"), ("card1", "1234"), ("DeviceInfo", "MacOS")):
        row[COLUMNS.index(name)] = value
    return row


def test_loader_reads_a_tiny_file_and_refuses_bad_ones_in_one_line():
    data = read_transactions(_csv([_good_row(0, 86_400), _good_row(1, 86_401)]), expected_rows=2)
    assert data.time.tolist() == [86_400, 86_401] and data.y.tolist() == [0, 1]
    assert data.vocab["ProductCD"] == ["W"] and data.column("ProductCD").tolist() == [0, 0]
    assert np.isnan(data.column("card2")).all() and data.amount.tolist() == [12.5, 12.5]
    bad = {
        "columns": _csv([_good_row(0, 1)], header=COLUMNS[:-1]),
        "rows": _csv([_good_row(0, 1)]),  # expected_rows is the real file's 590,540
        "order": _csv([_good_row(0, 5), _good_row(1, 4)]),
        "label": _csv([[*_good_row(0, 1)[:1], "2", *_good_row(0, 1)[2:]]]),
        "text": _csv([[*_good_row(0, 1)[:3], "twelve", *_good_row(0, 1)[4:]]]),
    }
    for what, text in bad.items():
        with pytest.raises(DataError) as err:
            read_transactions(text, expected_rows=None if what != "rows" else N_ROWS)
        assert "\n" not in str(err.value), what
    assert "expected the 121 IEEE-CIS columns" in _message(bad["columns"])


def _message(text) -> str:
    text.seek(0)
    with pytest.raises(DataError) as err:
        read_transactions(text, expected_rows=None)
    return str(err.value)


def test_replayed_events_are_keyed_by_card_and_carry_the_amount_as_written():
    from types import SimpleNamespace

    import orjson

    from muse_stream.demo import ieee_models as im
    from muse_stream.demo.ieee_stream import events

    rows = [_good_row(0, 86_400), _good_row(1, 86_460)]
    rows[1][COLUMNS.index("TransactionAmt")] = "12.35"  # not a float32: 12.350000381...
    rows[1][COLUMNS.index("addr1")] = "315"
    rows[1][COLUMNS.index("R_emaildomain")] = "gmail.com"
    data = read_transactions(_csv(rows), expected_rows=2)
    pair = SimpleNamespace(base_features=im.RAW_FEATURES)
    (k0, p0), (_, s0), (k1, p1), (_, s1) = [(k, orjson.loads(v)) for k, v in events(data, np.arange(2), pair)]
    assert (k0, k1) == (b"1234----", b"1234----315")
    assert s1["card_id"] == "1234----315" and s1["email"] == "gmail.com" and s1["device"] == "MacOS"
    assert "email" not in s0 and "card_id" not in p0 and p0["intent"] == p1["intent"] == "ieee_plain"
    assert s1["features"]["TransactionAmt"] == 12.35 and s1["event_time"] == im.BASE_MS + 86_460_000
    assert "card2" not in s1["features"] and s1["features"]["card1"] == 1234
