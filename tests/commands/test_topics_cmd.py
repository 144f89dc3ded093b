"""`topics create|list` on the real broker: the labels topic that `deploy`'s recall guard reads is one of them."""

from __future__ import annotations

import orjson
import pytest

from muse_stream.cli import main
from muse_stream.config import Settings
from tests.fixtures.helpers import write_config

pytestmark = pytest.mark.kafka


def test_topics_create_makes_the_labels_topic_that_deploy_reads(settings_for, unique, tmp_path, capsys):
    s = settings_for(unique, topics={"labels": f"t{unique}.labels"})
    cfg = write_config(s, tmp_path / "muse.toml")
    assert main(["topics", "list", "--config", cfg]) == 0
    assert f"{s.topics.labels}\tmissing\tpartitions={s.topics.decisions_partitions}" in capsys.readouterr().out
    assert main(["topics", "create", "--config", cfg]) == 0
    made = capsys.readouterr().out
    assert f"created  {s.topics.labels}\n" in made and f"created  {s.topics.models}\n" in made
    assert main(["topics", "list", "--config", cfg]) == 0
    assert f"{s.topics.labels}\texists" in capsys.readouterr().out


def test_topics_list_and_create_cover_shadow_topics_and_state_changelogs(settings_for, unique, tmp_path, capsys):
    """Every topic the workers would make is listed and made up front: each intent's shadow topic, and with
    entity state each input's compacted changelog, partitioned as the input."""
    data = settings_for(unique).model_dump()
    data["intents"] = [{"name": "card_fraud", "state": {"entity": ["card_id"], "windows": ["10m"],
                                                        "aggregates": ["count"]}}, {"name": "account_takeover"}]
    s = Settings.model_validate(data)
    cfg = write_config(s, tmp_path / "muse.toml")
    changelog = f"{s.runtime.group_id}.{s.topics.events}.state-changelog"
    shadows = [s.topics.shadow_topic(i) for i in ("card_fraud", "account_takeover")]
    assert main(["topics", "list", "--json", "--config", cfg]) == 0
    rows = {r["name"]: r for r in orjson.loads(capsys.readouterr().out)}
    assert rows[changelog]["state"] == "missing" and rows[changelog]["config"]["cleanup.policy"] == "compact"
    assert rows[changelog]["partitions"] == s.topics.events_partitions
    assert all(rows[t]["state"] == "missing" for t in shadows)
    assert main(["topics", "create", "--config", cfg]) == 0
    made = capsys.readouterr().out
    assert all(f"created  {t}\n" in made for t in [changelog, *shadows])
    assert main(["topics", "list", "--json", "--config", cfg]) == 0
    assert all(r["state"] == "exists" for r in orjson.loads(capsys.readouterr().out))
