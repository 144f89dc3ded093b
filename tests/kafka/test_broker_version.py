"""Which cached broker jars the local broker runs: the pinned series only (see KAFKA_SERIES), newest first, unless
MUSE_KAFKA_VERSION names another."""

from muse_stream.kafka.local import KAFKA_SERIES, KAFKA_VERSION_RANGE, fetch_kafka


def _cache(root, *versions: str) -> None:
    for v in versions:
        libs = root / f"kafka-{v}" / "libs"
        libs.mkdir(parents=True)
        (libs / ".complete").write_text(v)


def test_the_newest_cached_jars_of_the_pinned_series_win_over_a_newer_series(tmp_path, monkeypatch):
    monkeypatch.delenv("MUSE_KAFKA_VERSION", raising=False)
    a, b = KAFKA_SERIES
    _cache(tmp_path, f"{a}.{b}.2", f"{a}.{b}.10", f"{a}.{b + 1}.0", f"{a + 1}.0.0", f"{a}.{b - 1}.9")
    assert fetch_kafka(tmp_path).name == f"kafka-{a}.{b}.10"
    assert KAFKA_VERSION_RANGE == f"[{a}.{b},{a}.{b + 1})"  # what Maven resolves when nothing is cached


def test_a_version_named_by_the_environment_runs_whatever_its_series(tmp_path, monkeypatch):
    a, b = KAFKA_SERIES
    _cache(tmp_path, f"{a}.{b}.2", f"{a}.{b + 2}.0")
    monkeypatch.setenv("MUSE_KAFKA_VERSION", f"{a}.{b + 2}.0")
    assert fetch_kafka(tmp_path).name == f"kafka-{a}.{b + 2}.0"


def _newer_folder(tmp_path):
    """A broker folder that says a Kafka two minor versions past the jars in use formatted it: (the version in
    use, that newer one, the folder)."""
    from muse_stream.kafka.local import fetch_kafka

    version = (fetch_kafka() / "libs" / ".complete").read_text().strip()
    newer = ".".join([version.split(".")[0], str(int(version.split(".")[1]) + 2), "0"])
    home = tmp_path / "broker"
    (home / "data").mkdir(parents=True)
    (home / "data" / "meta.properties").write_text("version=1\nnode.id=1\n")
    (home / "state.json").write_text(f'{{"version": "{newer}", "port": 1}}')
    return version, newer, home


def test_a_broker_folder_of_a_newer_kafka_is_refused_in_one_line(tmp_path):
    from muse_stream.errors import BrokerError
    from muse_stream.kafka.local import LocalBroker, free_port

    _, newer, home = _newer_folder(tmp_path)
    broker = LocalBroker(free_port(), home=home)
    try:
        broker.launch()
    except BrokerError as e:
        assert f"Kafka {newer}" in str(e) and f"MUSE_KAFKA_VERSION={newer}" in str(e), str(e)
    else:
        broker.kill()
        raise AssertionError("a folder of a newer Kafka was started")
    assert f'"version": "{newer}"' in (home / "state.json").read_text()  # left as it was


def test_the_demos_own_broker_sets_a_newer_kafkas_data_aside_and_starts(tmp_path):
    """What the demos and the bench do with their broker folder (their topics are theirs for one run): the old
    data kept under another name, a new broker formatted and answering."""
    from muse_stream.kafka.local import LocalBroker, free_port

    version, newer, home = _newer_folder(tmp_path)
    broker = LocalBroker(free_port(), home=home, heap="256m", set_aside_newer=True)
    try:
        st = broker.start(timeout=90)
        assert st.up and st.version == version
    finally:
        broker.stop()
    assert (home / f"data.kafka-{newer}" / "meta.properties").read_text() == "version=1\nnode.id=1\n"
    assert (home / "data" / "meta.properties").exists()  # formatted anew
