"""The local development broker: Apache Kafka 4.2.x jars from Maven Central (KAFKA_SERIES says why not newer),
KRaft nodes on 127.0.0.1.

Jars are resolved once into a cache outside the repository (~/.cache/muse-stream/kafka-<version>/libs, and
Kafka's command-line tools of the same version in .../tools);
each broker instance (one per port) keeps its properties, data, log and pid in ~/.cache/muse-stream/broker-<port>.
A node of a multi-node cluster (kafka/cluster.py) is the same LocalBroker given a node id and the shared Quorum.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson

from muse_stream.errors import BrokerError
from muse_stream.kafka.node_config import Quorum, SaslPlain, broker_properties, new_cluster_id

logger = logging.getLogger(__name__)

# The newest of this series. Kafka 4.3.1 and 4.4.0 can leave a transaction open for ever after an unclean
# restart of the node that leads its partitions: they drop the markers of a transaction that was completing
# when the node died ("Couldn't find leader endpoint ... likely deleted already" in the broker log), so
# read_committed readers stop at it and the restarted worker of its slot never gets its committed offsets.
# 4.0.2 to 4.2.x kept every marker (scripts/broker_markers.py; docs/operations.md, "Brokers that leave a
# transaction open").
KAFKA_SERIES = (4, 2)
KAFKA_VERSION_RANGE = f"[{KAFKA_SERIES[0]}.{KAFKA_SERIES[1]},{KAFKA_SERIES[0]}.{KAFKA_SERIES[1] + 1})"


def cache_root() -> Path:
    return Path(os.environ.get("MUSE_CACHE_DIR") or Path.home() / ".cache" / "muse-stream")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".") if x.isdigit())


def _cached_kafka_dirs(root: Path) -> list[Path]:
    """Cached broker folders of the pinned series (KAFKA_SERIES), oldest first; another series cached by
    MUSE_KAFKA_VERSION is used only while that variable names it."""
    found = [d for d in root.glob("kafka-*") if (d / "libs" / ".complete").exists()
             and _version_key(d.name.split("-", 1)[1])[:2] == KAFKA_SERIES]
    return sorted(found, key=lambda d: _version_key(d.name.split("-", 1)[1]))


def fetch_kafka(root: Path | None = None, *, version: str | None = None) -> Path:
    """Return a folder holding the broker jars, resolving them with Maven on first use."""
    root = root or cache_root()
    version = version or os.environ.get("MUSE_KAFKA_VERSION")
    if version:
        ready = root / f"kafka-{version}"
        if (ready / "libs" / ".complete").exists():
            return ready
    else:
        have = _cached_kafka_dirs(root)
        if have:
            return have[-1]
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is not on PATH: it is needed once to fetch the Kafka broker jars "
                          "(or run a broker with docker-compose.kafka.yml and set MUSE_BOOTSTRAP)")
    if shutil.which("java") is None:
        raise BrokerError("Java 17+ (java) is not on PATH: the local Kafka broker needs it")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        libs = Path(tmp) / "libs"
        print(f"fetching the Kafka broker jars with Maven into {root} (once) ...", file=sys.stderr, flush=True)
        _maven_copy("broker-pom.xml", version or KAFKA_VERSION_RANGE, libs, what="the Kafka broker jars")
        jars = sorted(libs.glob("kafka_2.13-*.jar"))
        if not jars:
            raise BrokerError("Maven finished but no kafka_2.13 jar was fetched")
        resolved = jars[0].name[len("kafka_2.13-"):-len(".jar")]
        (libs / ".complete").write_text(resolved)
        dest = root / f"kafka-{resolved}"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        shutil.move(str(libs), dest / "libs")
    return dest


CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"


def fetch_tools(kafka_dir: Path | None = None) -> Path:
    """Return a folder holding Kafka's command-line tools (`org.apache.kafka:kafka-tools`) of the broker's own
    version, resolving them with Maven on first use. A classpath of their own (kafka_dir/tools), so the
    broker's jars stay exactly as their pom resolved them; a cache made before the tools existed gains them."""
    kafka_dir = kafka_dir or fetch_kafka()
    tools = kafka_dir / "tools"
    if (tools / ".complete").exists():
        return tools
    version = (kafka_dir / "libs" / ".complete").read_text().strip()
    with tempfile.TemporaryDirectory(dir=kafka_dir, prefix=".fetch-tools-") as tmp:
        libs = Path(tmp) / "tools"
        print(f"fetching Kafka {version}'s command-line tools with Maven into {tools} (once) ...",
              file=sys.stderr, flush=True)
        _maven_copy("tools-pom.xml", version, libs, what=f"Kafka {version}'s command-line tools")
        if not (libs / f"kafka-tools-{version}.jar").exists():
            raise BrokerError(f"Maven finished but kafka-tools-{version}.jar was not fetched")
        (libs / ".complete").write_text(version)
        if tools.exists():
            shutil.rmtree(tools)
        shutil.move(str(libs), tools)
    return tools


def tools_classpath() -> str:
    """The `java -cp` argument for Kafka's tools (ConsoleConsumer and the rest)."""
    return str(fetch_tools() / "*")


def _maven_copy(pom_name: str, version: str, out: Path, *, what: str) -> None:
    if shutil.which("mvn") is None:
        raise BrokerError(f"Maven (mvn) is not on PATH: it is needed once to fetch {what}")
    pom = out.parent / pom_name
    pom.write_text(resources.files(__package__).joinpath(pom_name).read_text())
    cmd = ["mvn", "-B", "-q", "-f", str(pom), f"-Dkafka.version={version}", "dependency:copy-dependencies",
           f"-DoutputDirectory={out}"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BrokerError(f"Maven could not fetch {what}:\n{tail}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_metadata(bootstrap: str, timeout: float = 3.0, client: dict | None = None) -> bool:
    """True when a Kafka broker at `bootstrap` answers a metadata request (`client`: security settings)."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.rpartition(":")
    if not port_open(host or "127.0.0.1", int(port)):
        return False
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000,
                         "log_level": 0, "logger": logging.getLogger("muse_stream.librdkafka"), **(client or {})})
    try:
        admin.list_topics(timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not answering"
        return False


@dataclass(frozen=True)
class BrokerStatus:
    up: bool
    bootstrap: str
    version: str | None
    log_file: Path
    pid: int | None
    managed: bool  # started by muse-stream (we hold its pid)

    def describe(self) -> str:
        if not self.up:
            return f"no broker at {self.bootstrap} (log: {self.log_file})"
        who = f"pid {self.pid}" if self.managed else "not started by muse-stream"
        return f"broker up at {self.bootstrap}, Kafka {self.version or 'unknown version'}, {who}, log: {self.log_file}"


class LocalBroker:
    """One local KRaft broker instance, identified by its port; alone (its own one-voter quorum), or node
    `node_id` of a cluster whose Quorum it is given. With `sasl`, clients must authenticate (SASL/PLAIN) and
    are authorized by ACLs; the broker's own checks connect as the super user."""

    def __init__(self, port: int = 9092, *, home: Path | None = None, heap: str = "512m", node_id: int = 1,
                 quorum: Quorum | None = None, sasl: SaslPlain | None = None, set_aside_newer: bool = False) -> None:
        self.port = port
        # A folder formatted by a newer Kafka: refused (BrokerError) by default; with set_aside_newer (the demos'
        # and the bench's own brokers, whose topics are theirs for one run) its data is renamed, kept, and a
        # new broker is formatted beside it.
        self.set_aside_newer = set_aside_newer
        self.home = home or cache_root() / f"broker-{port}"
        self.heap = heap
        self.node_id = node_id
        self.quorum = quorum
        self.sasl = sasl

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_config(self) -> dict[str, str]:
        """What a client needs besides bootstrap.servers to talk to this broker as its super user."""
        return self.sasl.client_config() if self.sasl else {}

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def _state_file(self) -> Path:
        return self.home / "state.json"

    def _state(self) -> dict:
        try:
            return orjson.loads(self._state_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}

    def live_pid(self) -> int | None:
        pid = self._state().get("pid")
        if not pid:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return pid  # no procfs: trust the signal check
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return None  # exited, not yet reaped by its parent
        return pid

    def status(self) -> BrokerStatus:
        pid = self.live_pid()
        up = answers_metadata(self.bootstrap, client=self.client_config)
        return BrokerStatus(up=up, bootstrap=self.bootstrap, version=self._state().get("version") if pid else None,
                            log_file=self.log_file, pid=pid, managed=pid is not None)

    def start(self, *, timeout: float = 90.0) -> BrokerStatus:
        """Start the broker and wait until it answers; return at once when one already answers there."""
        if answers_metadata(self.bootstrap, client=self.client_config):
            return self.status()
        # Ours, still starting (or hung): wait for it rather than start a second one.
        pid = self.live_pid() or self.launch()
        return self.wait_ready(pid, timeout)

    def launch(self) -> int:
        """Format (first time only) and start the broker process without waiting for it; return its pid.
        A cluster launches every node before waiting: no node answers until a majority of voters is up."""
        if port_open("127.0.0.1", self.port):
            raise BrokerError(f"port {self.port} is taken by something that is not a Kafka broker")
        kafka_dir = fetch_kafka()
        version = (kafka_dir / "libs" / ".complete").read_text().strip()
        self.home.mkdir(parents=True, exist_ok=True)
        data = self.home / "data"
        before = self._state().get("version")
        if before and (data / "meta.properties").exists() and _version_key(before) > _version_key(version):
            # Kafka cannot read metadata a newer version wrote: say so instead of its stack trace.
            if self.set_aside_newer:
                aside = self.home / f"data.kafka-{before}"
                n = 1
                while aside.exists():
                    n += 1
                    aside = self.home / f"data.kafka-{before}.{n}"
                data.rename(aside)
                logger.warning("%s held a broker of Kafka %s, newer than the %s this muse-stream runs: its data is "
                               "kept in %s, and a new broker is formatted", self.home, before, version, aside)
            else:
                raise BrokerError(f"{self.home} holds a broker of Kafka {before}, newer than the {version} this "
                                  f"muse-stream runs (KAFKA_SERIES in muse_stream/kafka/local.py says why): delete "
                                  f"that folder (its topics go with it), or set MUSE_KAFKA_VERSION={before}")
        if self.quorum is not None:
            cport = self.quorum.voters[self.node_id]  # fixed: every node lists it among the voters
            if port_open("127.0.0.1", cport):
                raise BrokerError(f"controller port {cport} of node {self.node_id} is taken")
        else:
            cport = self._state().get("controller_port")
            if not cport or port_open("127.0.0.1", cport):
                cport = free_port()
        props = self.home / "server.properties"
        props.touch()
        props.chmod(0o600)  # it may hold SASL passwords
        props.write_text(broker_properties(port=self.port, controller_port=cport, data_dir=data,
                                           node_id=self.node_id, quorum=self.quorum, sasl=self.sasl))
        log4j = self.home / "log4j2.properties"
        log4j.write_text(resources.files(__package__).joinpath("log4j2.properties").read_text())
        java = ["java", f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={log4j}", "-Djava.awt.headless=true",
                "-cp", str(kafka_dir / "libs" / "*")]
        if not (data / "meta.properties").exists():
            # The id may start with "-": pass it as --cluster-id=ID so it is not read as an option. Formatted
            # with the static controller.quorum.voters of the properties (Kafka 4 refuses them with --standalone).
            cluster_id = self.quorum.cluster_id if self.quorum else new_cluster_id()
            fmt = subprocess.run([*java, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)],
                                 check=False, capture_output=True, text=True)
            if fmt.returncode != 0:
                raise BrokerError(f"formatting the KRaft log folder failed: {(fmt.stdout + fmt.stderr).strip()[-800:]}")
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen([*java, "kafka.Kafka", str(props)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.home)
        self._state_file.write_bytes(orjson.dumps({"pid": proc.pid, "version": version, "controller_port": cport,
                                                   "port": self.port}))
        return proc.pid

    def wait_ready(self, pid: int | None, timeout: float) -> BrokerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers_metadata(self.bootstrap, timeout=2.0, client=self.client_config):
                return self.status()
            if pid is None or self.live_pid() is None:
                raise BrokerError(f"the broker exited during start-up; last lines of {self.log_file}:\n{self.log_tail()}")
            time.sleep(0.3)
        self.stop()
        raise BrokerError(f"the broker did not answer within {timeout:.0f}s; last lines of {self.log_file}:\n"
                          f"{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log file)"

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after `timeout`). False when none of ours was running."""
        return self.kill(signal.SIGTERM, timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL, *, timeout: float = 30.0) -> bool:
        """Send `sig` to the broker, wait up to `timeout` for it to exit, then SIGKILL it. Fault tests kill -9
        a node this way. False when none of ours was running."""
        pid = self.live_pid()
        if pid is None:
            return False
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.live_pid() is not None:
            time.sleep(0.2)
        if self.live_pid() is not None:
            logger.warning("broker pid %s did not stop in %.0fs; killing it", pid, timeout)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.5)
        # Reap it when it is our own child (tests start and stop the broker in one process).
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        state = self._state()
        state.pop("pid", None)
        self._state_file.write_bytes(orjson.dumps(state))
        return True
