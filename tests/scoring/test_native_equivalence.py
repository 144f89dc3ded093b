"""The compiled scanner and decision writer (scoring/_native.c) against the pure-Python path, on every kind of
event: the scanner must read each event it accepts exactly as the Python contract does (fields, feature
names, every value to the bit), and the two scorers must give the same decision bytes, the same dead letters
(reason and detail), the same matrices and the same tally of ignored fields."""

from __future__ import annotations

import math
import os
import random
import struct
import subprocess
import sys

import numpy as np
import pytest
from confluent_kafka import Message

from muse_stream.config import Settings, TenantConfig
from muse_stream.scoring import native
from muse_stream.scoring.contract import MAX_EVENT_TIME, Event, parse_event
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.tenants import TenantRegistry
from tests.fixtures.helpers import FEATURES
from tests.fixtures.scoring_fakes import Msg, registry
from tests.scoring.test_contract import CASES

_native = native.module(True)  # this machine builds the extension: an ImportError here is a broken build
MAX_BYTES = 20_000

TENANTS = {
    "acme": TenantConfig(tenant_id="acme", intents=("card",), bands={"review": 0.5, "decline": 0.9}),
    "zed": TenantConfig(tenant_id="zed", intents=("card", "other"), bands={"all": 0.0}),
    "off": TenantConfig(tenant_id="off", intents=("card",), suspended=True),
    "pin": TenantConfig(tenant_id="pin", intents=("card",), pinned_versions={"card": 1}),
    "ign": TenantConfig(tenant_id="ign", intents=("other",), default_intent="other", bands={"review": 0.3}),
}

# ---- every kind of event, as text -----------------------------------------------------------------------

_PLAIN_NUMBERS = ["0", "7", "-3", "123456789012345", "-0.0", "0.0", "1.5", "-2.25", "1e5", "1E+5", "1.5e-7",
                  "0e0", "12.5E3", "null"]
_ODD_NUMBERS = [
    "-0", "1234567890123456", "9007199254740993", "12345678901234567890", "123456789012345678901234567890",
    "9007199254740993.0", "0.1000000000000000055511151231257827", "1.00000000000000011102230246251565",
    "2.2250738585072014e-308", "2.2250738585072011e-308", "5e-324", "1e-400", "1e308", "1.7976931348623157e308",
    "1e309", "-1e309", "1e31", "-1e31", "3.5e38", "1e-99999", "1e99999", "0.000000000000000000000000001",
]
_NOT_NUMBERS = ["NaN", "Infinity", "-Infinity", "nan", "01", "-01", "1.", ".5", "+1", "-", "1e", "1e+", "0x10",
                "true", "false", '"1.5"', "[1]", '{"a":1}', "1_000", "--1", "1.5.5", "1e5e5", '"nan"', "[]", "{}"]


def _floats(rng: random.Random, n: int) -> list[str]:
    """Decimal texts as writers produce them: shortest round-trip (repr), %.17g, and longer."""
    out = []
    for _ in range(n):
        v = rng.gauss(0, 1) * 10 ** rng.choice([0, 0, 0, 1, 2, -1, -3, 5, 15, -15, 22, -22, 30, -30, 300, -300])
        text = rng.choice([repr(v), f"{v:.17g}", f"{v:.16g}", f"{v:.15g}", f"{v:.20g}", f"{v:.25e}"])
        out.append(text if any(c in text for c in ".eE") else text + ".0")  # a number, not a long integer
    return out


def _ws(rng: random.Random) -> str:
    return rng.choice(["", "", "", " ", "\n", "\t", "\r\n  "])


def _obj(pairs: list[tuple[str, str]], rng: random.Random, spaced: bool) -> str:
    w = (lambda: _ws(rng)) if spaced else (lambda: "")
    return "{" + w() + ("," + w()).join(f"{k}{w()}:{w()}{v}{w()}" for k, v in pairs) + w() + "}"


def _event(rng: random.Random, floats: list[str]) -> tuple[bytes, bool]:
    """One event and whether it is of the plain shape the scanner must accept."""
    plain = True
    tenant, intent = rng.choice([("acme", None), ("acme", '"card"'), ("zed", '"card"'), ("zed", '"other"'),
                                 ("pin", None), ("ign", None), ("ign", "null"), ("zed", None), ("off", None),
                                 ("who", None), ("acme", '"other"'), ("", None)])
    t = rng.choice(["5", "99", "100", "150", "0", str(MAX_EVENT_TIME)])
    eid = f'"e-{rng.randrange(10**6)}"'
    names = list(FEATURES)
    rng.shuffle(names)
    feats = [(f'"{f}"', rng.choice(floats + _PLAIN_NUMBERS)) for f in names[:rng.choice([5, 5, 5, 4, 2, 0])]]
    if rng.random() < 0.15:
        feats.append(('"zz"', rng.choice(_PLAIN_NUMBERS)))  # unknown to every version
    kind = rng.randrange(12) if rng.random() < 0.45 else None  # one thing off the plain shape, or none
    plain = kind is None
    if kind == 0 and feats:
        feats[0] = (feats[0][0], rng.choice(_ODD_NUMBERS + _NOT_NUMBERS))
    elif kind == 1:
        feats.append((feats[0][0] if feats else '"f0"', "1.5"))  # a duplicate key
    elif kind == 2:
        eid = rng.choice(['"é-1"', '"a\\"b"', '"\\u0041"', '"tab\\t"', '"sl\\/ash"', '""', "7", "null",
                          '"x\x01y"', '"del\x7f"', '"\\ud800"', '"\\ud83d\\ude00"', '"' + "x" * 300 + '"'])
    elif kind == 3:
        tenant = rng.choice(["ac\\u006de", "é", "a\\\\b", "ac\x00me"])
    elif kind == 4:
        t = rng.choice(["-1", "-0", "1.5", "1e3", '"5"', "true", "null", str(MAX_EVENT_TIME + 1),
                        str(2**63), str(2**64 + 5), "05", "18446744073709551615"])
    elif kind == 5 and feats:
        feats[0] = (rng.choice(['"f\\u0030"', '"fé"', '"f 0"', '"\\n"', '""']), feats[0][1])
    elif kind == 6:
        intent = rng.choice(['"car\\u0064"', "3", "true", '["card"]', '"é"'])
    elif kind == 7:
        feats.append(('"zz"', rng.choice(['"s"', "true", "[1]", '{"n":1}', "[]"])))
    fields = [('"event_id"', eid), ('"tenant_id"', f'"{tenant}"'), ('"event_time"', t)]
    if intent is not None:
        fields.append(('"intent"', intent))
    spaced = rng.random() < 0.3
    fobj = rng.choice(["null", "[1,2]", '"f0=1"', "{", "7"]) if kind == 8 else _obj(feats, rng, spaced)
    fields.append(('"features"', fobj))
    if rng.random() < 0.2:
        fields.append((rng.choice(['"label"', '"n"', '"s"']), rng.choice(["1", "null", "true", '"x"', "-2.5e3"])))
    if kind == 9:  # a duplicate or a nested field at the top
        fields.append(rng.choice([('"event_id"', '"dup"'), ('"tenant_id"', '"zed"'), ('"extra"', '{"a":[1]}'),
                                  ('"extra"', "[1,2]"), ('"extra"', '"\\u00e9"'), ('"features"', "{}")]))
    rng.shuffle(fields)
    raw = _obj(fields, rng, spaced).encode("utf-8", "surrogatepass")
    if kind == 10:  # the bytes themselves
        k = rng.randrange(4)
        if k == 0:
            i = raw.find(b"e-")
            raw = raw[:i] + b"\xff" + raw[i + 1:] if i >= 0 else raw + b"\xc3"  # not UTF-8
        elif k == 1:
            raw = b"\xef\xbb\xbf" + raw  # a byte-order mark
        else:
            raw = raw + rng.choice([b" x", b"{}", b",", b"\x00", b" \n"])
    elif kind == 11:
        raw = raw[:rng.randrange(len(raw))]  # truncated
    return raw, plain


def _values(n: int = 2500, seed: int = 7) -> list[tuple[bytes | None, bool]]:
    rng = random.Random(seed)
    floats = _floats(rng, 400)
    out = [(raw, False) for raw, _ in CASES]
    out += [(v, False) for v in (b"", None, b"   ", b"[]", b"{}", b"x" * (MAX_BYTES + 1), b'{"event_id":"e"}')]
    many = ",".join(f'"u{k}":{k}' for k in range(1100))  # more names than the scanner keeps in a batch
    out += [(b'{"event_id":"m","tenant_id":"acme","event_time":5,"features":{"f0":1.5,%s}}' % many.encode(), False)]
    out += [_event(rng, floats) for _ in range(n)]
    return out


def _bits(v) -> bytes:
    """A value to the bit (so -0.0 is not 0.0); every NaN (a null) as one token."""
    v = float(v)
    return b"nan" if math.isnan(v) else struct.pack("<d", v)


# ---- the scanner against parse_event, event by event ----------------------------------------------------


def test_every_event_the_scanner_accepts_reads_exactly_as_the_python_contract():
    values = _values()
    eids, codes, pairs, times, names, x, present = _native.scan([v for v, _ in values], MAX_BYTES)
    codes = np.frombuffer(codes, dtype=np.int32)
    times = np.frombuffer(times, dtype=np.int64)
    x = np.frombuffer(x).reshape(len(values), len(names))
    present = np.frombuffer(present, dtype=np.bool_).reshape(len(values), len(names))
    accepted = 0
    for i, (raw, plain) in enumerate(values):
        if codes[i] < 0:
            assert not plain, raw  # the common shape must take the compiled path
            continue
        accepted += 1
        ev = parse_event(raw, MAX_BYTES)
        assert type(ev) is Event, raw
        assert (eids[i], *pairs[codes[i]], int(times[i])) == (ev.event_id, ev.tenant_id, ev.intent, ev.event_time)
        got = {names[j]: _bits(x[i, j]) for j in np.flatnonzero(present[i])}
        assert got == {k: _bits(v) for k, v in ev.features.items()}, raw
    assert accepted >= 0.5 * len(values)


def _hard_numbers(rng: random.Random, n: int) -> list[str]:
    """Decimal texts next to the midpoint between two adjacent doubles (where a double rounding goes wrong),
    with 16 to 20 significant digits, and integers about 2^53."""
    from decimal import Decimal, getcontext

    getcontext().prec = 60
    out = []
    for _ in range(n):
        d = rng.gauss(0, 1) * 10 ** rng.randrange(-30, 30)
        mid = (Decimal(d) + Decimal(np.nextafter(d, np.inf))) / 2
        digits = rng.randrange(16, 21)
        text = f"{mid:.{digits - 1}e}"
        mant, exp = text.split("e")
        last = int(mant[-1]) + rng.choice([-1, 0, 0, 1])
        if 0 <= last <= 9:
            mant = mant[:-1] + str(last)
        out.append(f"{mant}e{int(exp)}")
    out += [str(2**53 + k) for k in range(-3, 4)] + [f"{2**53 + k}.0" for k in range(-3, 4)]
    return out


def test_numbers_read_to_the_bit_next_to_every_rounding_edge():
    hard = _hard_numbers(random.Random(5), 20_000)
    texts = hard + _PLAIN_NUMBERS + _ODD_NUMBERS + _NOT_NUMBERS + _floats(random.Random(6), 2000)
    raws = [b'{"event_id":"e","tenant_id":"t","event_time":1,"features":{"a":%s}}' % t.encode() for t in texts]
    _, codes, _, _, names, x, _ = _native.scan(raws, MAX_BYTES)
    codes = np.frombuffer(codes, dtype=np.int32)
    x = np.frombuffer(x)
    assert names == ["a"] and (codes[:len(hard)] >= 0).mean() > 0.9
    for i in np.flatnonzero(codes >= 0).tolist():
        ev = parse_event(raws[i], MAX_BYTES)
        assert type(ev) is Event and _bits(x[i]) == _bits(ev.features["a"]), texts[i]
        assert i >= len(hard) or _bits(x[i]) == _bits(float(texts[i])), texts[i]  # and correctly rounded
    accepted = {t for t, c in zip(texts, codes) if c >= 0}
    assert accepted >= set(_PLAIN_NUMBERS) and not accepted & set(_NOT_NUMBERS)


# ---- the whole scorer on both paths ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reg():
    r = registry({"card": ((1, None), (2, 100)), "other": ((1, None),)})
    r.unknown_features("other").reject = False  # "ignore": scored, and the unknown fields counted
    return r


def _run(reg, use_native: bool, batches: list[list]) -> tuple[list, dict]:
    reg.ignored_features.clear()
    scorer = BatchScorer(TenantRegistry(Settings(), TENANTS, log_changes=False), reg, max_abs_feature=1e30,
                         max_event_bytes=MAX_BYTES, native=use_native)
    outs = []
    for msgs in batches:
        out = scorer.process(msgs, 1_700_000_000_123)
        outs.append((out.decisions, [(d.msg.offset(), d.reason, d.detail) for d in out.dead], out.scored,
                     [(m.intent, m.model_name, m.x.tobytes(), m.event_ids, m.tenants, m.times, m.raw.tobytes(),
                       m.scores.tobytes()) for m in out.matrices],
                     [(g.tenant_id, g.intent, g.bands.tolist()) for g in out.groups]))
    return outs, dict(reg.ignored_features)


def test_both_paths_give_the_same_decisions_dead_letters_and_matrices(reg):
    values = _values(seed=11)
    random.Random(3).shuffle(values)
    # Mostly real confluent_kafka Messages (the writer calls their methods directly), some stand-ins (called
    # by name), mixed within batches.
    msgs = [Msg(v, i, partition=i % 3, topic=("in", "in.é")[i % 2]) if i % 5 == 3 else
            Message(topic=("in", "in.é")[i % 2], partition=i % 3, offset=i, key=None, value=v,
                    timestamp=(1, 1_700_000_000_000 + i)) for i, (v, _) in enumerate(values)]
    batches, at = [], 0
    for size in (1, 2, 7, 64, 500, 1000, len(msgs)):
        batches.append(msgs[at:at + size])
        at += size
    pure, pure_tally = _run(reg, False, batches)
    fast, fast_tally = _run(reg, True, batches)
    assert fast == pure and fast_tally == pure_tally
    decided = sum(len(o[0]) for o in pure)
    dead = [r for o in pure for _, r, _ in o[1]]
    assert decided > 500 and pure_tally  # the test covers scored events and ignored fields ...
    assert {r.value for r in dead} >= {"malformed_json", "not_an_object", "missing_field", "wrong_type",
                                       "event_too_large", "value_too_large", "unknown_tenant", "tenant_suspended",
                                       "intent_not_allowed", "unknown_feature"}  # ... and every kind of refusal


def test_the_env_switch_forces_the_pure_path():
    code = "from muse_stream.scoring import native; print(native.active_path())"
    env = {**os.environ, "MUSE_PURE_PYTHON": "1"}
    got = subprocess.run([sys.executable, "-c", code], env=env, check=False, capture_output=True, text=True, timeout=60)
    assert got.stdout.strip() == "python (MUSE_PURE_PYTHON=1)", got.stderr
    env["MUSE_PURE_PYTHON"] = "0"
    got = subprocess.run([sys.executable, "-c", code], env=env, check=False, capture_output=True, text=True, timeout=60)
    assert got.stdout.strip() == "native (C extension)", got.stderr
