"""SASL/PLAIN with ACLs, on a broker of its own: docs/operations.md's example ([kafka.client] block and ACL
table) scores events exactly once through `run` and the commands; a wrong password is named as an
authentication failure within seconds; an invalid client value is named by its property. The password shows
in no log line, output, endpoint or traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from muse_stream.config import Settings, load_settings
from muse_stream.kafka.clients import reader_config
from muse_stream.kafka.local import LocalBroker, SaslPlain, free_port
from muse_stream.models.store import intent_transactional_id
from muse_stream.tenants import tenant_transactional_id
from tests.fixtures.helpers import TopicReader, decision_topics, event, produce, publish_model, write_config
from tests.fixtures.workers import assert_exactly_once
from tests.worker.test_supervisor import TENANTS, RunCommand

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"
SECRET = "kumquat-Vq7-zephyr-5519"  # distinctive: any sighting of it is a leak
WRONG = "kumquat-WRONG-zephyr-8812"
ADMIN_SECRET = "admin-Xw3-quince-7730"


def _doc_example() -> dict:
    """The [kafka.client] table of the security example in docs/operations.md."""
    text = DOC.read_text()
    block = re.search(r"<!-- security-example:[^>]*-->\n```toml\n(.*?)```", text, re.DOTALL)
    assert block, "docs/operations.md lost its security example"
    return tomllib.loads(block[1])["kafka"]["client"]


def _doc_acls() -> set[tuple[str, str, str, frozenset]]:
    """(resource, name, pattern, operations) of each row of the ACL table in docs/operations.md."""
    text = DOC.read_text()
    table = re.search(r"<!-- security-acls:[^>]*-->\n((?:\|.*\n)+)", text)
    assert table, "docs/operations.md lost its ACL table"
    rows = [[c.strip().strip("`") for c in line.strip("|").split("|")] for line in table[1].splitlines()[2:]]
    return {(r[0], r[1], r[2], frozenset(o.strip() for o in r[3].split(","))) for r in rows}


_KIND = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "transactional-id": ResourceType.TRANSACTIONAL_ID}
_PATTERN = {"prefixed": ResourcePatternType.PREFIXED, "literal": ResourcePatternType.LITERAL}


def _acls(s: Settings) -> set[tuple[str, str, str, frozenset]]:
    """What the workers and the commands need, as the table in docs/operations.md says, for these settings."""
    t, rt = s.topics, s.runtime
    names = [*t.inputs, t.models, t.tenants, t.deadletter, t.labels, t.decisions_prefix, t.shadow_prefix]
    common = os.path.commonprefix(names)
    topic_prefix = common[: common.rfind(".") + 1]  # "muse.": every topic of the configuration
    txn = frozenset({"Write", "Describe"})
    return {("topic", topic_prefix, "prefixed", frozenset({"Read", "Write", "Describe", "Create"})),
            ("group", rt.group_id, "literal", frozenset({"Read", "Describe"})),
            ("group", reader_config(s)["group.id"], "literal", frozenset({"Describe"})),
            ("transactional-id", f"{rt.transactional_id_prefix}-{rt.group_id}-", "prefixed", txn),
            ("transactional-id", intent_transactional_id(s, ""), "prefixed", txn),
            ("transactional-id", tenant_transactional_id(s, ""), "prefixed", txn)}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    broker = LocalBroker(free_port(), home=tmp_path_factory.mktemp("sasl-broker"), heap="384m",
                         sasl=SaslPlain({"admin": ADMIN_SECRET, "muse": SECRET}))
    broker.start(timeout=90)
    try:
        yield broker
    finally:
        broker.kill(timeout=10)  # throwaway data


def _settings(broker: LocalBroker, unique: str, **client) -> Settings:
    base = load_settings(REPO / "tests" / "data" / "test.toml", bootstrap=broker.bootstrap)
    return base.with_overrides(
        kafka={"client": {**_doc_example(), "sasl.password": SECRET, **client}},
        topics={"events": f"s{unique}.events", "models": f"s{unique}.models", "tenants": f"s{unique}.tenants",
                "deadletter": f"s{unique}.deadletter", "decisions_prefix": f"s{unique}.decisions.",
                "shadow_prefix": f"s{unique}.shadow.", "labels": f"s{unique}.labels"},
        runtime={"group_id": f"g{unique}", "transactional_id_prefix": f"tx{unique}"})


def _grant(broker: LocalBroker, s: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, **broker.client_config})
    bindings = [AclBinding(_KIND[kind], name, _PATTERN[pattern], "User:muse", "*",
                           getattr(AclOperation, op.upper()), AclPermissionType.ALLOW)
                for kind, name, pattern, ops in _acls(s) for op in sorted(ops)]
    for fut in admin.create_acls(bindings).values():
        fut.result(timeout=30)


def _run_cli(config: str, *args: str) -> tuple[int, str, float]:
    """`muse-stream ARGS --config CONFIG` in a subprocess: exit code, everything it printed, seconds taken."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "muse_stream", *args, "--config", config], capture_output=True,
                       check=False, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


def _no_secret(text: str, where: str) -> None:
    for secret in (SECRET, WRONG, ADMIN_SECRET):
        assert secret not in text, f"a password shows in {where}"
    assert "Traceback" not in text, f"a traceback in {where}:\n{text[-3000:]}"


def test_the_documented_acls_are_what_the_test_grants():
    assert _doc_acls() == _acls(Settings())
    assert set(_doc_example()) == {"security.protocol", "sasl.mechanism", "sasl.username", "sasl.password"}


def test_sasl_plain_workers_and_commands_score_exactly_once_without_showing_the_secret(secured, unique, tmp_path):
    port = free_port()
    s = _settings(secured, unique).with_overrides(telemetry={"metrics_port": port})
    _grant(secured, s)
    config = write_config(s, tmp_path / "muse.toml")
    code, out, _ = _run_cli(config, "topics", "create")
    assert code == 0, out
    _no_secret(out, "topics create")
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    code, out, _ = _run_cli(config, "models", "list")
    assert code == 0 and "card_fraud" in out and "account_takeover" in out, out
    _no_secret(out, "models list")

    n = 600
    produce(s, [event(i, TENANTS[i % 3]) for i in range(n)])
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    run = RunCommand(s, tmp_path, workers=1)
    try:
        recs = reader.until(lambda r: len(r) >= n, timeout=90)
        reader.poll_for(2.0)  # anything extra would be a duplicate
        for path in ("/metrics", "/status"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                _no_secret(r.read().decode(), path)
        for args in (["status"], ["status", "--json"]):
            code, out, _ = _run_cli(config, *args)
            assert code == 0 and s.runtime.group_id in out, out
            _no_secret(out, " ".join(args))
        assert run.terminate() == 0
    finally:
        run.close()
        reader.close()
    _no_secret(run.log(), "the run log")
    assert_exactly_once(recs, n)


def test_a_wrong_password_is_named_as_an_authentication_failure_within_seconds(secured, unique, tmp_path):
    s = _settings(secured, unique, **{"sasl.password": WRONG})
    config = write_config(s, tmp_path / "muse.toml")
    for args in (["status"], ["topics", "create"], ["run", "--workers", "1"]):
        code, out, took = _run_cli(config, *args)
        assert code != 0 and took < 15, (args, code, took, out)
        lines = out.strip().splitlines()
        assert len(lines) == 1, f"{args}: {out}"
        assert (f"cannot reach Kafka at {secured.bootstrap}: authentication failed (mechanism PLAIN, user 'muse'"
                in lines[0]), f"{args}: {out}"
        _no_secret(out, " ".join(args))


def test_an_invalid_client_value_is_named_by_its_property_never_its_value(secured, unique, tmp_path):
    s = _settings(secured, unique, **{"linger.ms": "not-a-number"})
    config = write_config(s, tmp_path / "muse.toml")
    for args in (["status"], ["topics", "create"], ["run", "--workers", "1"]):
        code, out, _ = _run_cli(config, *args)
        lines = out.strip().splitlines()
        assert code != 0 and len(lines) == 1, f"{args}: {out}"
        assert "linger.ms" in lines[0] and "not-a-number" not in lines[0], f"{args}: {out}"
        _no_secret(out, " ".join(args))
