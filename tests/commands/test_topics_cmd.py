"""`topics create|list` on the real broker: the labels topic that `deploy`'s recall guard reads is one of them."""

from __future__ import annotations

import pytest

from muse_stream.cli import main
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
