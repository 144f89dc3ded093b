"""`muse-stream tail` against the real broker: read_committed, JSON lines, filters, dead letters made printable."""

from __future__ import annotations

import base64
import os
import sys

import orjson
import pytest

from muse_stream.cli import main
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.topics import TopicSpec, create_topics
from muse_stream.scoring.deadletter import Reason, headers
from tests.commands.doc_examples import example
from tests.fixtures.helpers import write_config

pytestmark = pytest.mark.kafka


def _lines(capsys) -> list[dict]:
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_tail_shows_a_committed_decision_and_not_an_aborted_one(stack, tmp_path, capsys, monkeypatch):
    cfg = write_config(stack, tmp_path / "muse.toml")
    topic = stack.topics.decisions_topic("acme")
    p = OutputProducer(producer_config(stack, transactional_id=f"{stack.runtime.transactional_id_prefix}-t"),
                       name="test writer")
    p.client.init_transactions(30)
    p.client.begin_transaction()
    p.produce(topic, orjson.dumps({"event_id": "e-1", "tenant_id": "acme", "band": "review"}), b"e-1")
    p.client.commit_transaction(30)
    p.client.begin_transaction()
    p.produce(topic, orjson.dumps({"event_id": "e-2", "tenant_id": "acme", "band": "decline"}), b"e-2")
    p.flush(30)  # written to the log, then aborted: a read_uncommitted reader would see it
    p.client.abort_transaction(30)

    # The worked example of docs/producers.md: the tenant's own decision topic, from the beginning.
    ((argv, shown),) = example("producers.md", "tail", "decisions")
    assert main([*argv, "--config", cfg]) == 0
    out = _lines(capsys)
    assert [r["value"]["event_id"] for r in out] == ["e-1"]
    assert out[0]["topic"] == topic and isinstance(out[0]["timestamp"], int)
    (doc,) = [orjson.loads(line) for line in shown]
    assert doc["topic"] == "muse.decisions.acme"
    assert {**out[0], "topic": doc["topic"], "timestamp": doc["timestamp"]} == doc

    # A reader that left (`tail ... | true`): 141, as every other command under a closed pipe, not 0.
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        assert main(["tail", "--tenant", "acme", "--from-beginning", "--config", cfg]) == 141
    monkeypatch.undo()
    # An output that cannot be written (a full disk): one line and exit 2, not a traceback.
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        assert main(["tail", "--tenant", "acme", "--from-beginning", "--config", cfg]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "muse-stream: error: No space left on device" in err and "Traceback" not in err


def test_tail_of_a_tenant_with_only_a_refused_record_reads_its_default_decision_topic(stack, tmp_path, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    topic = stack.topics.decisions_topic("handbad")  # its decisions from before its record was refused
    create_topics(stack, [TopicSpec(topic, 1)])
    p = OutputProducer(producer_config(stack), name="test writer")
    p.produce(stack.topics.tenants, orjson.dumps({"tenant_id": "handbad", "intents": ["nope"]}), b"handbad")
    p.produce(topic, orjson.dumps({"event_id": "e-9", "tenant_id": "handbad", "band": "review"}), b"e-9")
    p.flush(30)
    assert main(["tail", "--tenant", "handbad", "--from-beginning", "--config", cfg]) == 0
    assert [(r["topic"], r["key"]) for r in _lines(capsys)] == [(topic, "e-9")]
    assert main(["tail", "--tenant", "nobody", "--from-beginning", "--config", cfg]) == 2
    assert "no tenant 'nobody'" in capsys.readouterr().err


def test_tail_dead_letters_by_reason_with_headers_and_printable_bytes(stack, tmp_path, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    dl = stack.topics.deadletter
    p = OutputProducer(producer_config(stack), name="test writer")
    junk = b"\xff\xfe not utf-8"
    p.produce(dl, junk, b"k-1", headers=headers(Reason.MALFORMED_JSON, "bad json", "muse.events", 0, 7))
    p.produce(dl, b'{"tenant_id": "acme", "features": {"Colour": 3}}', b"k-2",
              headers=headers(Reason.UNKNOWN_FEATURE, "Colour", "in", 1, 9))
    p.produce(dl, b"tab\there", b"k-3", headers=headers(Reason.MALFORMED_JSON, "bad json", "in", 0, 8))
    p.flush(30)

    # The worked example of docs/operations.md: one reason, from the dead-letter topic.
    ((argv, shown),) = example("operations.md", "tail", "deadletters")
    assert main([*argv, "--config", cfg]) == 0
    out = _lines(capsys)
    assert [r["key"] for r in out] == ["k-1", "k-3"]
    (doc,) = [orjson.loads(line) for line in shown]
    assert {**out[0], "topic": doc["topic"], "timestamp": doc["timestamp"]} == doc
    assert out[0]["value_format"] == "base64" and base64.b64decode(out[0]["value"]) == junk
    assert out[1]["value_format"] == "text" and out[1]["value"] == "tab\there"
    assert out[0]["headers"]["muse.reason"] == "malformed_json"
    assert out[0]["headers"]["muse.source.offset"] == "7"

    # --tenant on any topic filters on the value's tenant_id; --count stops early.
    assert main(["tail", dl, "--tenant", "acme", "--from-beginning", "--config", cfg]) == 0
    assert [r["key"] for r in _lines(capsys)] == ["k-2"]
    assert main(["tail", dl, "--from-beginning", "--count", "2", "--config", cfg]) == 0
    assert len(_lines(capsys)) == 2
    # --reason selects dead letters: without TOPIC, the dead-letter topic even with --tenant (then a filter).
    assert main(["tail", "--tenant", "acme", "--reason", "unknown_feature", "--from-beginning", "--config", cfg]) == 0
    [rec] = _lines(capsys)
    assert rec["topic"] == dl and rec["key"] == "k-2" and rec["headers"]["muse.detail"] == "Colour"
    # A reason the product never writes is refused, naming the ones it does, rather than matching nothing.
    assert main(["tail", "--reason", "bogus_reason", "--from-beginning", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'bogus_reason' is not a dead-letter reason" in err
    assert all(r.value in err for r in Reason)


def test_tail_follow_stops_when_its_reader_goes_even_with_no_new_record(stack, tmp_path):
    """`tail --follow | head -1`: once head has left, tail ends (141) within a poll, instead of waiting for a
    record that may never come to find the pipe closed."""
    import subprocess
    import time

    cfg = write_config(stack, tmp_path / "muse.toml")
    p = subprocess.Popen([sys.executable, "-m", "muse_stream", "tail", stack.topics.deadletter, "--follow",
                          "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(3)  # following, nothing to show
    assert p.poll() is None
    p.stdout.close()  # the reader goes
    assert p.wait(timeout=15) == 141


def test_tail_prints_a_value_nested_deeper_than_orjson_writes_as_text(stack, tmp_path, capsys):
    """orjson reads 1,024 levels but writes 254: such a record (a producer's, on the dead-letter topic) used to end
    tail in a traceback, losing the lines before it. It is printed with its value as text."""
    cfg = write_config(stack, tmp_path / "muse.toml")
    deep = b'{"event_id":"d","deep":' + b"[" * 600 + b"]" * 600 + b"}"
    p = OutputProducer(producer_config(stack), name="test writer")
    p.produce(stack.topics.deadletter, b'{"event_id":"before"}', b"k0")
    p.produce(stack.topics.deadletter, deep, b"k1")
    p.flush(30)
    assert main(["tail", stack.topics.deadletter, "--from-beginning", "--config", cfg]) == 0
    out = _lines(capsys)
    assert [r["key"] for r in out] == ["k0", "k1"]
    assert out[1]["value"] == deep.decode() and out[1]["value_format"] == "text"
