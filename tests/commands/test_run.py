"""`muse-stream run` says what is unsafe before and while it runs: intents no model serves, and a slot another
worker holds (--workers 0 is refused: tests/worker/test_supervisor.py)."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from muse_stream.cli import main
from muse_stream.kafka.clients import producer_config
from muse_stream.worker import supervisor
from muse_stream.worker.exits import FENCED_EXIT
from muse_stream.worker.runtime import run_worker, transactional_id
from tests.fixtures.helpers import TopicReader, event, produce, publish_model, write_config


@pytest.mark.kafka
def test_run_warns_at_start_for_each_allowed_intent_with_no_active_model(stack, tmp_path, capsys, monkeypatch):
    publish_model(stack, "card_fraud", seed=1)  # account_takeover (globex, initech) has none
    cfg = write_config(stack, tmp_path / "muse.toml")
    monkeypatch.setattr(supervisor.Supervisor, "run", lambda self: 0)  # the check only, no worker processes
    assert main(["run", "--config", cfg]) == 0
    err = capsys.readouterr().err
    assert (f"intent account_takeover has no active model: events of globex, initech for it go to the "
            f"dead-letter topic {stack.topics.deadletter} (reason no_active_model)") in err
    assert "intent card_fraud has no active model" not in err


@pytest.mark.kafka
def test_a_worker_fenced_by_another_holder_of_its_slot_says_so(stack, caplog):
    s = stack.with_overrides(runtime={"transaction_timeout_ms": 10000})
    reader = TopicReader(s, [s.topics.decisions_topic("acme"), s.topics.deadletter])
    produce(s, [event(0, "acme")])
    fenced = threading.Event()

    def second_holder():
        # Once the worker has written its first output, another producer takes slot 0's transactional id.
        reader.until(lambda r: len(r) >= 1, timeout=60)
        Producer(producer_config(s, transactional_id=transactional_id(s, 0))).init_transactions(30)
        fenced.set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not stopped.is_set():
            produce(s, [event(1, "acme")])  # the worker's next transaction meets the fence
            stopped.wait(1.0)

    stopped = threading.Event()
    t = threading.Thread(target=second_holder, daemon=True)
    t.start()
    try:
        assert run_worker(s, 0) == FENCED_EXIT
    finally:
        stopped.set()
        t.join(30)
        reader.close()
    assert fenced.is_set()
    assert "another worker holds slot 0" in caplog.text


def test_run_refuses_more_workers_than_the_config_allows_before_starting_any(capsys):
    """--workers is held to runtime.workers' own range (1..256); 100,000 used to fork workers without end."""
    t0 = time.monotonic()
    assert main(["run", "--workers", "100000", "--bootstrap", "127.0.0.1:1"]) == 2
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert "run: --workers: Input should be less than or equal to 256" in err and err.count("\n") == 1
