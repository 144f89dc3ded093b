"""`muse-stream tenants` against the real broker: each subcommand, and the refusals that name the field and
write nothing. The worked examples of docs/tenants.md are these calls."""

from __future__ import annotations

import orjson
import pytest

from muse_stream.bandspec import BandRate
from muse_stream.cli import main
from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.topics import TopicSpec, create_topics
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.store import read_models
from muse_stream.tenants import read_tenants
from tests.fixtures.helpers import event, produce, publish_model, write_config

pytestmark = pytest.mark.kafka


def _json(capsys):
    return orjson.loads(capsys.readouterr().out)


def test_set_show_and_list_with_rate_bands(stack, tmp_path, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    publish_model(stack, "card_fraud")  # the intent's reference: what a rate resolves through
    ref = ReferenceDistribution.from_dict(read_models(stack).references["card_fraud"].reference)

    assert main(["tenants", "set", "acme", "--band", "review=1%", "--band", "decline=0.1%", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "tenant acme written to" in out and "review" in out and "1.0000%" in out
    rec = read_tenants(stack)["acme"]
    assert rec.model_dump(mode="json")["bands"] == {"review": {"rate": 0.01}, "decline": {"rate": 0.001}}

    assert main(["tenants", "show", "acme", "--json", "--config", cfg]) == 0
    doc = _json(capsys)
    bands = doc["bands"]["card_fraud"]
    assert [(b["name"], b["text"]) for b in bands] == [("review", "1%"), ("decline", "0.1%")]
    assert [b["threshold"] for b in bands] == pytest.approx(ref.quantile([0.99, 0.999]).tolist())
    assert [b["reference_rate"] for b in bands] == pytest.approx([0.01, 0.001], rel=1e-6)
    assert doc["decision_topic"] == stack.topics.decisions_topic("acme") and doc["state"] == "active"

    # A partial change merges: decline moves to a threshold from an event time, review is kept.
    t = 1_800_000_000_000
    assert main(["tenants", "set", "acme", "--band", "decline=0.995", "--from", str(t), "--config", cfg]) == 0
    capsys.readouterr()
    rec = read_tenants(stack)["acme"]
    assert rec.model_dump(mode="json")["bands"] == {"review": {"rate": 0.01}, "decline": 0.995}
    assert [p.from_time for p in rec.band_periods()] == [None, t]

    assert main(["tenants", "list", "--json", "--config", cfg]) == 0
    rows = {r["tenant_id"]: r for r in _json(capsys)}
    # t (2027-01-15) is ahead of now: the bands in force are still the earlier ones, the change is shown ahead
    ahead = "review=1%, decline=0.1%; from 2027-01-15T08:00:00Z: review=1%, decline=0.995"
    assert set(rows) == {"acme", "globex", "initech"} and rows["acme"]["bands_text"] == ahead
    assert main(["tenants", "list", "--config", cfg]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split()[:3] == ["tenant", "state", "intents"] and len(text) == 4
    assert ahead in next(line for line in text if line.startswith("acme"))
    # The pending change widens the bands column; the output topic stays in its own column on every line.
    col = text[0].index("output topic")
    assert [line[col:] for line in text[1:]] == [stack.topics.decisions_topic(t) for t in ("acme", "globex", "initech")]
    assert all(line[col - 2:col] == "  " for line in text[1:])
    assert main(["tenants", "show", "acme", "--json", "--config", cfg]) == 0
    assert [b["text"] for b in _json(capsys)["bands"]["card_fraud"]] == ["1%", "0.1%"]  # in force now


def test_refusals_name_the_field_and_write_nothing(stack, tmp_path, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    before = read_tenants(stack)
    create_topics(stack, [TopicSpec("elsewhere.made." + stack.topics.events, 1)])
    cases = [
        (["--band", "review=150%"], "a rate band is at least 0.0001% (1e-6) and below 100%"),
        # Below the floor: a reference cannot resolve it, and publish/deploy would wait for ever.
        (["--band", "review=1e-9%"], "got rate 1e-11: an intent's reference cannot resolve a smaller share"),
        # --from takes an event time only, and its message says so (no offset:N, start or end).
        (["--band", "review=1%", "--from", "yesterday"], "'yesterday': expected an event time (epoch ms or ISO-8601)\n"),
        (["--band", "review=1%", "--from", "offset:x"], "expected an event time (epoch ms or ISO-8601)\n"),
        # Past the last event time there is, and past 64 bits: refused here, never written for workers to meet.
        *((["--band", "review=1%", "--from", t], "an event time is from 0 to 4611686018427387904 (epoch ms)")
          for t in (str(2**62 + 1), str(2**64 - 1), "99999999999999999999999")),
        (["--band", "review=1.5"], "bands.review.threshold"),
        # float() would have taken these (as 10%, -0, 5%, NaN): plain decimal numbers only.
        *((["--band", b], "with P and X plain decimal numbers") for b in ("review=1_0%", "review=-0", "review=5 %",
                                                                          "review=nan")),
        (["--output-topic", stack.topics.decisions_topic("globex")], "is tenant 'globex''s decision topic"),
        (["--output-topic", stack.topics.models], "is the models topic"),
        (["--output-topic", "not a topic!"], "output_topic: 'not a topic!' is not a valid Kafka topic"),
        (["--output-topic", "__consumer_offsets"], "is a Kafka-internal topic"),
        (["--output-topic", stack.topics.labels], "is the labels topic"),
        (["--output-topic", "muse-stream.x.state-changelog"], "is a state changelog topic"),
        # Kafka reads '.' and '_' alike: these collide with globex's decision topic and the models topic
        (["--output-topic", stack.topics.decisions_topic("globex").replace(".", "_")],
         "is tenant 'globex''s decision topic (Kafka reads '.' and '_' alike"),
        (["--output-topic", stack.topics.models.replace(".", "_")], "is the models topic (Kafka reads"),
        # and this one with a topic that exists on the cluster, whatever made it
        (["--output-topic", "elsewhere_made_" + stack.topics.events.replace(".", "_")], "collides with the existing topic"),
        (["--default-intent", "account_takeover"], "default_intent 'account_takeover' is not among intents"),
        (["--intents", "card_fraud,nosuch"], "intents: ['nosuch'] are not in the config's intents"),
        (["--remove-band", "hold"], "bands: no band 'hold' to remove"),
        # A band named twice: refused, not "the last wins".
        (["--band", "review=1%", "--band", "review=2%"], "band 'review' named more than once"),
        (["--band", "review=1%", "--remove-band", "review"], "band 'review' named more than once"),
    ]
    for opts, why in cases:
        assert main(["tenants", "set", "acme", *opts, "--config", cfg]) == 2, opts
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, (opts, err)
    assert "a new tenant needs --intents" in _err(["set", "newco", "--band", "review=1%"], cfg, capsys)
    assert "not suspended" in _err(["remove", "acme"], cfg, capsys)
    assert _err(["suspend", "nobody"], cfg, capsys).endswith(f"tenant 'nobody' is not on {stack.topics.tenants}\n")
    assert "is not on" in _err(["show", "nosuch"], cfg, capsys)
    assert read_tenants(stack) == before


def _err(args: list[str], cfg: str, capsys) -> str:
    assert main(["tenants", *args, "--config", cfg]) == 2
    return capsys.readouterr().err


def test_suspend_resume_remove_and_old_refusals_stay_quiet(stack, tmp_path, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    # A record written by hand that every worker refuses: the tools report it where asked, never as a log line.
    p = OutputProducer(producer_config(stack), name="test writer")
    p.produce(stack.topics.tenants, orjson.dumps({"tenant_id": "globex", "intents": []}), b"globex")
    p.flush(30)

    assert main(["tenants", "suspend", "acme", "--config", cfg]) == 0
    assert "suspended" in capsys.readouterr().out and read_tenants(stack)["acme"].suspended
    assert main(["tenants", "resume", "acme", "--config", cfg]) == 0
    assert not read_tenants(stack)["acme"].suspended
    assert main(["tenants", "suspend", "acme", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["tenants", "remove", "acme", "--config", cfg]) == 0
    io = capsys.readouterr()
    assert "tombstone" in io.out and "unknown_tenant" in io.out and "refused" not in io.err
    assert "acme" not in read_tenants(stack)
    assert main(["tenants", "show", "globex", "--config", cfg]) == 0
    io = capsys.readouterr()
    assert "intents          card_fraud, account_takeover (default card_fraud)" in io.out
    assert "refused (intents: " in io.err and io.err.count("\n") == 1  # the one note, not a log of it


def test_a_hand_written_record_naming_an_unknown_intent_is_refused_and_the_previous_stays(stack, tmp_path, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    before = read_tenants(stack)["acme"]
    p = OutputProducer(producer_config(stack), name="test writer")
    bad = {"tenant_id": "acme", "intents": ["card_fraud", "nope"], "bands": {"review": 0.5}}
    p.produce(stack.topics.tenants, orjson.dumps(bad), b"acme")
    p.produce(stack.topics.tenants, orjson.dumps({**bad, "tenant_id": "handbad"}), b"handbad")
    p.flush(30)
    why = "intents: ['nope'] are not in the config's intents ['account_takeover', 'card_fraud']"

    # Refused by the rule the workers apply: acme's previous record stays in force, handbad stays unknown.
    assert read_tenants(stack)["acme"] == before and "handbad" not in read_tenants(stack)
    assert main(["tenants", "list", "--json", "--config", cfg]) == 0
    rows = {r["tenant_id"]: r for r in _json(capsys)}
    assert rows["acme"]["intents"] == ["card_fraud"] and rows["acme"]["refused"] == why
    assert rows["handbad"]["state"] == "refused" and rows["handbad"]["refused"] == why
    assert rows["handbad"]["decision_topic"] is None and rows["handbad"]["bands_text"] is None  # as `show`

    # `show` of a tenant with refused records only: the record and why, as `list` reports it.
    assert main(["tenants", "show", "handbad", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "state            refused" in out and f"refused because  {why}" in out and '"nope"' in out
    assert main(["tenants", "show", "handbad", "--json", "--config", cfg]) == 0
    assert _json(capsys)["refused_record"] == {**bad, "tenant_id": "handbad"}

    # A later change merges with the record in force, not with the refused one: no --intents needed.
    assert main(["tenants", "set", "acme", "--band", "review=0.6", "--config", cfg]) == 0
    capsys.readouterr()
    rec = read_tenants(stack)["acme"]
    assert rec.intents == before.intents and rec.bands == {**before.bands, "review": 0.6}


def test_a_band_change_starts_at_the_watermark_or_later_and_names_the_pending_change_it_replaces(stack, tmp_path,
                                                                                                 capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    t0 = 1_700_000_000_000
    produce(stack, [event(i, "acme", t0=t0) for i in range(5)])  # scored, or about to be: event times < t0 + 5
    earliest = t0 + 5 + stack.runtime.change_lead_ms  # what the default --from would use
    before = read_tenants(stack)["acme"]

    def tset(*opts) -> int:
        return main(["tenants", "set", "acme", *opts, "--config", cfg])

    # Earlier than the default would re-band events already scored: refused in one line naming the earliest.
    for when in ("2020-01-01T00:00:00Z", str(earliest - 1)):
        assert tset("--band", "review=3%", "--from", when) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"(epoch ms {earliest}), the earliest a band change may start" in err, err
    assert read_tenants(stack)["acme"] == before

    # A change ahead, then an earlier one: it replaces the later one and says so, with its bands.
    y2030, y2099 = 1_893_456_000_000, 4_070_908_800_000
    assert tset("--band", "review=5%", "--from", "2099-01-01T00:00:00Z") == 0
    assert "replaced" not in capsys.readouterr().out
    assert tset("--band", "review=10%", "--from", "2030-01-01T00:00:00Z") == 0
    out = capsys.readouterr().out
    assert f"replaced the pending band change from 2099-01-01T00:00:00Z ({y2099}): " in out and "review=5%" in out
    rec = read_tenants(stack)["acme"]
    # The new bands edit those in force before 2030 (the replaced change's are not carried over).
    assert [(p.from_time, p.bands) for p in rec.band_periods()] == [
        (None, before.bands), (y2030, {**before.bands, "review": BandRate(rate=0.1)})]
    # Setting the bands a pending period already holds, at an earlier time, moves them there.
    assert tset("--band", "review=10%", "--from", str(earliest)) == 0
    assert f"replaced the pending band change from 2030-01-01T00:00:00Z ({y2030})" in capsys.readouterr().out
    assert [p.from_time for p in read_tenants(stack)["acme"].band_periods()] == [None, earliest]


def test_a_removed_tenants_topic_is_not_taken_by_another_without_reuse_topic(stack, unique, tmp_path, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    topic = f"own.{unique}"
    assert main(["tenants", "set", "oldco", "--intents", "card_fraud", "--output-topic", topic, "--config", cfg]) == 0
    create_topics(stack, [TopicSpec(topic, 1)])
    p = OutputProducer(producer_config(stack), name="test writer")
    p.produce(topic, b"{}", b"e-1")  # a decision oldco's readers have
    p.flush(30)
    assert main(["tenants", "suspend", "oldco", "--config", cfg]) == 0
    assert main(["tenants", "remove", "oldco", "--config", cfg]) == 0
    capsys.readouterr()
    args = ["tenants", "set", "newco", "--intents", "card_fraud", "--output-topic", topic, "--config", cfg]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{topic!r} exists and holds records" in err and "--reuse-topic" in err and "newco" not in read_tenants(stack)
    assert main([*args, "--reuse-topic"]) == 0
    assert read_tenants(stack)["newco"].output_topic == topic
    # Another tenant's claimed topic is still the registry's refusal, not this one.
    assert main(["tenants", "set", "third", "--intents", "card_fraud", "--output-topic", topic, "--config", cfg]) == 2
    assert "is already tenant 'newco''s output topic" in capsys.readouterr().err
    assert main(["tenants", "set", "fourth", "--intents", "card_fraud", "--reuse-topic", "--config", cfg]) == 2
    assert "--reuse-topic goes with --output-topic" in capsys.readouterr().err


def test_a_topic_that_takes_smaller_batches_than_the_workers_send_is_refused(stack, unique, tmp_path, capsys):
    cfg = write_config(stack, tmp_path / "muse.toml")
    small = f"small.{unique}"
    create_topics(stack, [TopicSpec(small, 1, {"max.message.bytes": "480"})])  # one decision fits; a batch not
    assert main(["tenants", "set", "tc", "--intents", "card_fraud", "--output-topic", small, "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "takes record batches of at most 480 bytes" in err and "1000000" in err and "tc" not in read_tenants(stack)
