"""Orchestrating the demo: broker, topics, models, tenants, workers, a paced replay, the deployment of the
retrained model on it (live_deploy.py), the read-back."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from muse_stream.config import Settings, TenantConfig, dump_toml, load_settings
from muse_stream.demo import scenario
from muse_stream.demo.live_deploy import LiveDeploy, change_lead_ms, deploy_settings
from muse_stream.errors import MuseError
from muse_stream.kafka.clients import admin_config, consumer_config, producer_config
from muse_stream.kafka.local import LocalBroker, answers_metadata
from muse_stream.kafka.producer import OutputProducer
from muse_stream.kafka.topics import ensure_all
from muse_stream.models.bands import format_bands
from muse_stream.models.registry import load_version
from muse_stream.models.store import publish, read_models
from muse_stream.tenants import put_tenants

logger = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    events: int | None = None  # held-out transactions per replayed day (None: all of them)
    workers: int = 2
    rate: int = 10_000  # offered events/s; 0: as fast as possible
    out_dir: Path = Path("out")
    bootstrap: str | None = None
    config: str | None = None
    keep_topics: bool = False
    progress: bool = True
    tenants: list[TenantConfig] | None = None  # None: scenario.tenants() (a test's small slice needs wider bands)
    deploy: dict = field(default_factory=dict)  # overrides of the demo's [deploy] settings


@dataclass
class Readback:
    """Every decision and dead letter read back by a read_committed consumer, with its arrival time."""

    decisions: list[dict] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)
    dead: list[tuple[str, int]] = field(default_factory=list)  # (reason, source offset)
    sources: set = field(default_factory=set)
    duplicates: int = 0

    @property
    def count(self) -> int:
        return len(self.decisions) + len(self.dead)


def reader_from_start(settings: Settings, topics: list[str], name: str) -> Consumer:
    """A read_committed consumer assigned every partition of `topics` from offset 0, committing nothing: how a
    demo reads its outputs back as a tenant would."""
    c = Consumer(consumer_config(settings, group_id=f"{name}-{uuid.uuid4().hex[:6]}"))
    parts = []
    for t in topics:
        md = c.list_topics(t, timeout=10).topics[t]
        parts += [TopicPartition(t, p, 0) for p in md.partitions]
    c.assign(parts)
    return c


class Reader(threading.Thread):
    def __init__(self, settings: Settings, topics: list[str]) -> None:
        super().__init__(daemon=True)
        self.c = reader_from_start(settings, topics, "demo-reader")
        self.deadletter = settings.topics.deadletter
        self.data = Readback()
        self.stop = threading.Event()

    def run(self) -> None:
        d = self.data
        while not self.stop.is_set():
            msgs = self.c.consume(2000, 0.1)
            now = int(time.time() * 1000)
            for m in msgs:
                if m.error() is not None:
                    continue
                if m.topic() == self.deadletter:
                    h = dict(m.headers() or [])
                    src = (h["muse.source.topic"], int(h["muse.source.partition"]), int(h["muse.source.offset"]))
                    d.dead.append((h["muse.reason"].decode(), src[2]))
                else:
                    rec = orjson.loads(m.value())
                    s = rec["source"]
                    src = (s["topic"], s["partition"], s["offset"])
                    d.decisions.append(rec)
                    d.arrivals.append(now)
                if src in d.sources:
                    d.duplicates += 1
                d.sources.add(src)
        self.c.close()


def demo_settings(opts: DemoOptions, run_id: str) -> Settings:
    base = load_settings(opts.config, bootstrap=opts.bootstrap)
    ns = f"demo.{run_id}."
    return base.with_overrides(
        topics={"events": ns + "events", "models": ns + "models", "tenants": ns + "tenants",
                "deadletter": ns + "deadletter", "decisions_prefix": ns + "decisions.", "shadow_prefix": ns + "shadow.",
                "labels": ns + "labels"},
        runtime={"group_id": f"muse-demo-{run_id}", "transactional_id_prefix": f"muse-demo-{run_id}",
                 "workers": opts.workers},
    )


class Workers:
    """`muse-stream run` as a child process, its log in the output folder."""

    def __init__(self, settings: Settings, workers: int, out_dir: Path) -> None:
        self.config = out_dir / "demo-settings.toml"
        self.config.write_text(dump_toml(settings))
        self.log = out_dir / "workers.log"
        self._log = open(self.log, "ab")  # noqa: SIM115 - the workers write to it until stop() closes it
        self.proc = subprocess.Popen([sys.executable, "-m", "muse_stream", "run", "--config", str(self.config),
                                      "--workers", str(workers)], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, "MUSE_BOOTSTRAP": ""})

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise MuseError(f"the workers exited early (code {self.proc.returncode}); see {self.log}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def _produce_day(producer: OutputProducer, topic: str, events, rate: int, advance) -> int:
    n, start = 0, time.monotonic()
    for key, value in events:
        producer.produce(topic, value, key)
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
            advance(1000)
            if rate:
                ahead = n / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    advance(n % 1000)
    producer.flush(60)  # raises DeliveryError (a MuseError) naming what was not delivered
    return n


def _models_and_settings(opts: DemoOptions, settings: Settings, ulb, out_dir: Path, console):
    """Train the three models (the retrained one to a file, for `deploy`), choose the tenants and the replayed
    rows, and complete the settings: intents, tenants, the activation lead and the demo's [deploy] section."""
    from muse_stream.demo.ulb_models import DEFAULT_NEGATIVE_SAMPLING_RATE, train_retrained

    console.print("training the incumbent card_fraud model, the cnp_fraud model and the retrained card_fraud model ...")
    card = scenario.train_card_incumbent(ulb)
    cnp = scenario.train_cnp(ulb)
    model_file = out_dir / "card_fraud-retrained.ubj"
    train_retrained(ulb, negative_sampling_rate=DEFAULT_NEGATIVE_SAMPLING_RATE).save_model(model_file)
    tenants = opts.tenants or scenario.tenants()
    rows = scenario.replay_rows(ulb, opts.events)
    per_day = scenario.day_size(len(rows), len(tenants))
    span_ms = int((ulb.time[rows].max() - ulb.time[rows].min()) * 1000) + 1
    data = settings.model_dump()
    settings = Settings.model_validate({
        **data, "tenants": [t.model_dump() for t in tenants],
        # CNP events carry the card row; the CNP model reads a subset of it
        "intents": [{"name": scenario.CARD}, {"name": scenario.CNP, "unknown_features": "ignore"}],
        "runtime": {**data["runtime"], "change_lead_ms": change_lead_ms(opts.rate, per_day, span_ms)},
        "deploy": deploy_settings(tenants, scenario.CARD, card.reference, opts.deploy)})
    return settings, card, cnp, model_file, tenants, rows, per_day


def run_demo(opts: DemoOptions, console) -> dict:
    """Run the whole demo; return the figures the report prints (and the test checks)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from muse_stream.demo.datasets import load_ulb

    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    out_dir = opts.out_dir / f"demo-{run_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(opts, run_id)
    broker = None
    if not opts.bootstrap and not os.environ.get("MUSE_BOOTSTRAP") and not answers_metadata(
            settings.kafka.bootstrap_servers):
        port = int(settings.kafka.bootstrap_servers.rpartition(":")[2])
        console.print(f"starting a local Kafka broker on 127.0.0.1:{port} ...")
        broker = LocalBroker(port, set_aside_newer=True)
        broker.start()
    workers = reader = dep = None
    try:
        console.print("loading the ULB card transactions (fetched once into the cache) ...")
        ulb = load_ulb()
        settings, card, cnp, model_file, tenants, rows, per_day = _models_and_settings(opts, settings, ulb, out_dir,
                                                                                        console)
        ensure_all(settings)
        put_tenants(settings, tenants)
        for intent, m in ((scenario.CARD, card), (scenario.CNP, cnp)):
            publish(settings, intent=intent, booster_bytes=bytes(m.booster.save_raw("ubj")), features=m.features,
                    transform=m.transform.to_dict(), reference=m.reference.to_dict(),
                    reference_source=f"{intent}@1 calibration window", activate=True,
                    metadata={"demo": run_id, "trained_on": "ULB Time 0-61200 s"})
        console.print(f"published card_fraud@1 and cnp_fraud@1; tenants: "
                      f"{'; '.join(f'{t.tenant_id} {format_bands(t.bands)}' for t in tenants)}")
        workers = Workers(settings, opts.workers, out_dir)
        reader = Reader(settings, [settings.output_topic(t) for t in tenants] + [settings.topics.deadletter])
        reader.start()
        tids = [t.tenant_id for t in tenants]
        producer = OutputProducer(producer_config(settings, **{"linger.ms": 10}), name="demo producer")
        produced: list[tuple[int, int]] = []  # (wall ms, events produced so far): the stream's rate
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, disable=not opts.progress, transient=False) as bar:
            sent = bar.add_task("events replayed ", total=2 * per_day)
            got = bar.add_task("decisions read  ", total=2 * per_day)

            def advance(k: int) -> None:
                produced.append((int(time.time() * 1000), (produced[-1][1] if produced else 0) + k))
                bar.advance(sent, k)
                bar.update(got, completed=reader.data.count)

            t_start = time.time()
            _produce_day(producer, settings.topics.events, scenario.day_events(ulb, rows, 0, tids), opts.rate,
                         advance)
            workers.check()
            # Day 1 follows at once, at the same pace; the retrained model is deployed on it as it flows.
            dep = LiveDeploy(settings, scenario.CARD, model_file,
                             lambda line: bar.console.print(line, markup=False, highlight=False, soft_wrap=True))
            bar.console.print(f"day 0 replayed (card_fraud@1); day 1 is replayed now, and on it:\n$ {dep.command}")
            dep.start()
            _produce_day(producer, settings.topics.events, scenario.day_events(ulb, rows, 1, tids), opts.rate,
                         advance)
            t_sent = time.time()
            g = settings.deploy.for_intent(scenario.CARD)
            dep.finish(g.shadow_timeout_s + g.watch_timeout_s + 60)
            deadline = time.monotonic() + 180
            while reader.data.count < 2 * per_day and time.monotonic() < deadline:
                workers.check()
                bar.update(got, completed=reader.data.count)
                time.sleep(0.2)
            time.sleep(1.0)  # anything more would be a duplicate
            bar.update(got, completed=reader.data.count)
        reader.stop.set()
        reader.join(10)
        code = workers.stop()
        workers = None
        reg = read_models(settings)  # the deployment's versions, before the demo's topics go
        rec = dep.record or reg.latest_deployment(scenario.CARD)
        fitted = None
        if rec is not None and rec.step("activated") is not None:
            fitted = load_version(reg.versions[(scenario.CARD, rec.step("activated").figures["version"])]).transform
        return {"settings": settings, "tenants": tenants, "readback": reader.data, "expected": 2 * per_day,
                "run_id": run_id, "out_dir": out_dir, "workers_exit": code, "replay_seconds": t_sent - t_start,
                "day1_at": scenario.BASE_MS + scenario.DAY_MS, "rows": len(rows), "card": card,
                "deployment": rec, "deploy_lines": dep.lines, "deploy_error": dep.error, "deploy_started_ms":
                dep.started_ms, "fitted_transform": fitted, "produced": produced, "model_file": model_file}
    finally:
        if dep is not None and dep.is_alive():
            dep.finish(0)
        if workers is not None:
            workers.stop()
        if reader is not None and reader.is_alive():
            reader.stop.set()
            reader.join(10)
        if not opts.keep_topics:
            _delete_topics(settings)
        if broker is not None:
            broker.stop()


def _delete_topics(settings: Settings) -> None:
    admin = AdminClient(admin_config(settings))
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topics.events[:-len("events")])]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                fut.result(30)
    except Exception as e:  # noqa: BLE001 - leaving demo topics behind is not worth failing over
        logger.warning("could not delete the demo topics: %s", e)
