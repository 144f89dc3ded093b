"""Shared fixtures. `bootstrap` is a real Kafka broker: MUSE_BOOTSTRAP when set, else a local one on a free port."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from muse_stream.config import Settings, load_settings


@pytest.fixture(autouse=True)
def _root_logging():
    """The CLI's setup_logging replaces the root logger's handlers with one bound to the stderr of the moment
    (a test's captured one, closed after it): put them back after each test, so no test depends on the order."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.fixture(scope="session")
def bootstrap() -> str:
    given = os.environ.get("MUSE_BOOTSTRAP")
    if given:
        yield given
        return
    from muse_stream.kafka.local import LocalBroker, free_port

    home = Path(tempfile.mkdtemp(prefix="muse-test-broker-"))
    broker = LocalBroker(free_port(), home=home)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def unique() -> str:
    """A short unique suffix, so each test has its own topics and groups on the shared broker."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def settings_for(bootstrap: str):
    """Build Settings with every topic name made unique to the test."""

    def make(unique: str, **overrides) -> Settings:
        base = load_settings(Path(__file__).parent / "data" / "test.toml", bootstrap=bootstrap)
        topics = {
            "events": f"t{unique}.events", "models": f"t{unique}.models", "tenants": f"t{unique}.tenants",
            "deadletter": f"t{unique}.deadletter", "decisions_prefix": f"t{unique}.decisions.",
            "shadow_prefix": f"t{unique}.shadow.", "labels": f"t{unique}.labels",
        }
        runtime = {"group_id": f"g{unique}", "transactional_id_prefix": f"tx{unique}"}
        sections = {"topics": topics, "runtime": runtime}
        for k, v in overrides.items():
            sections[k] = {**sections.get(k, {}), **v}
        return base.with_overrides(**sections)

    return make


@pytest.fixture
def stack(settings_for, unique) -> Settings:
    """Settings with the test's own topics created and its tenants seeded on the tenants topic."""
    from muse_stream.kafka.topics import ensure_all
    from muse_stream.tenants import seed_tenants

    s = settings_for(unique)
    ensure_all(s)
    seed_tenants(s)
    return s
