"""A local multi-node KRaft cluster: N combined broker+controller nodes on one machine, from the same cached
jars as the single broker, for fault tests (kill -9 a node, restart it) and for trying replication settings.

Node i (0-based, node.id i+1) listens on base_port + i for clients and on base_port + N + i for the controller
quorum, so a 3-node cluster on 9092 takes 9092-9097. The cluster keeps its id and layout in
<home>/cluster.json and each node its own folder <home>/node-<i> (properties, data, log, pid).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from muse_stream.errors import BrokerError
from muse_stream.kafka.local import (
    BrokerStatus,
    LocalBroker,
    Quorum,
    answers_metadata,
    cache_root,
    new_cluster_id,
)

logger = logging.getLogger(__name__)


def cluster_home(base_port: int) -> Path:
    return cache_root() / f"cluster-{base_port}"


def free_port_block(count: int, *, low: int = 20000, high: int = 32000, tries: int = 50) -> int:
    """A base port with `count` consecutive free ports, below Linux's ephemeral range so a client's outgoing
    connection cannot take one of them between this check and the brokers' start."""
    for _ in range(tries):
        base = random.randrange(low, high - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise BrokerError(f"no {count} consecutive free ports found between {low} and {high}")


@dataclass(frozen=True)
class ClusterStatus:
    nodes: list[BrokerStatus]
    brokers_in_metadata: int  # registered brokers the cluster itself reports; 0 when no node answers

    @property
    def up(self) -> bool:
        return all(n.up for n in self.nodes) and self.brokers_in_metadata == len(self.nodes)

    def describe(self) -> str:
        alive = sum(n.up for n in self.nodes)
        head = (f"cluster of {len(self.nodes)} nodes: {alive} answering, "
                f"{self.brokers_in_metadata} registered brokers")
        return "\n".join([head, *(f"  node {i}: {n.describe()}" for i, n in enumerate(self.nodes))])


class LocalCluster:
    """`nodes` local KRaft nodes forming one cluster (static controller quorum of all of them)."""

    def __init__(self, nodes: int = 3, *, base_port: int = 9092, home: Path | None = None,
                 heap: str = "384m") -> None:
        if not 1 <= nodes <= 9:
            raise BrokerError(f"a local cluster has 1 to 9 nodes, not {nodes}")
        self.nodes = nodes
        self.base_port = base_port
        self.home = home or cluster_home(base_port)
        self.heap = heap

    @classmethod
    def existing(cls, base_port: int, home: Path | None = None) -> LocalCluster | None:
        """The cluster recorded at this base port (by an earlier `start`), or None."""
        home = home or cluster_home(base_port)
        try:
            meta = orjson.loads((home / "cluster.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return cls(int(meta["nodes"]), base_port=base_port, home=home)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.base_port + i}" for i in range(self.nodes))

    def _meta(self) -> dict:
        try:
            return orjson.loads((self.home / "cluster.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}

    def _ensure_recorded(self) -> None:
        """Create the cluster's id once and keep it in cluster.json: a restarted node must find the same id
        in its formatted log folder. Only starting writes it; status and stop only read."""
        meta = self._meta()
        if meta.get("nodes") == self.nodes and meta.get("base_port") == self.base_port and meta.get("cluster_id"):
            return
        # A new cluster (or a new layout): folders formatted for another one would refuse to join it.
        for i in range(self.nodes):
            shutil.rmtree(self._node_home(i) / "data", ignore_errors=True)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "cluster.json").write_bytes(orjson.dumps(
            {"cluster_id": new_cluster_id(), "nodes": self.nodes, "base_port": self.base_port}))

    @property
    def quorum(self) -> Quorum:
        """The cluster id (empty until the first start records one) and the static voters."""
        voters = {i + 1: self.base_port + self.nodes + i for i in range(self.nodes)}
        return Quorum(cluster_id=self._meta().get("cluster_id", ""), voters=voters)

    def _node_home(self, i: int) -> Path:
        return self.home / f"node-{i}"

    def node(self, i: int) -> LocalBroker:
        """Node i (0-based; its Kafka node.id is i + 1)."""
        if not 0 <= i < self.nodes:
            raise IndexError(f"node {i} is not in a cluster of {self.nodes}")
        return LocalBroker(self.base_port + i, home=self._node_home(i), heap=self.heap, node_id=i + 1,
                           quorum=self.quorum)

    # ---- the whole cluster -------------------------------------------------------------------------

    def start(self, *, timeout: float = 120.0) -> ClusterStatus:
        """Start every node that is not running, then wait until each answers and all are registered."""
        deadline = time.monotonic() + timeout
        self._ensure_recorded()
        for i in range(self.nodes):
            node = self.node(i)
            if node.live_pid() is None and not answers_metadata(node.bootstrap, timeout=1.0):
                node.launch()  # all before any wait: a lone node has no quorum and never answers
        try:
            for i in range(self.nodes):
                self.node(i).wait_ready(self.node(i).live_pid(), max(1.0, deadline - time.monotonic()))
            self._wait_registered(self.nodes, deadline)
        except BrokerError:
            self.stop(timeout=10)
            raise
        return self.status()

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop every node at once (one by one, the last would wait for a quorum that is gone). False when
        none of ours was running."""
        nodes = [self.node(i) for i in range(self.nodes)]
        pids = [n.live_pid() for n in nodes]
        for n, pid in zip(nodes, pids):
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(n.live_pid() is not None for n in nodes):
            time.sleep(0.2)
        for n in nodes:
            n.kill(signal.SIGKILL, timeout=5)  # reaps and clears the pid; kills what did not stop
        return any(p is not None for p in pids)

    def running(self) -> bool:
        """True when any node started by us is alive."""
        return any(self.node(i).live_pid() is not None for i in range(self.nodes))

    def status(self) -> ClusterStatus:
        nodes = [self.node(i).status() for i in range(self.nodes)]
        return ClusterStatus(nodes=nodes, brokers_in_metadata=self._registered())

    def _registered(self) -> int:
        from confluent_kafka.admin import AdminClient

        if not any(answers_metadata(self.node(i).bootstrap, timeout=1.0) for i in range(self.nodes)):
            return 0
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0,
                             "logger": logging.getLogger("muse_stream.librdkafka")})
        try:
            return len(admin.list_topics(timeout=5).brokers)
        except Exception:  # noqa: BLE001 - any failure means none is known to answer
            return 0

    def _wait_registered(self, count: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self._registered() >= count:
                return
            time.sleep(0.3)
        raise BrokerError(f"the cluster did not report {count} brokers in time; see the logs under {self.home}")

    # ---- one node, for fault tests -----------------------------------------------------------------

    def stop_node(self, i: int, *, timeout: float = 30.0) -> bool:
        """Stop node i cleanly (controlled shutdown: its partitions' leadership moves first)."""
        return self.node(i).stop(timeout=timeout)

    def kill_node(self, i: int, sig: int = signal.SIGKILL) -> bool:
        """Send `sig` to node i (SIGKILL by default: a crash, no controlled shutdown) and wait for its exit."""
        return self.node(i).kill(sig, timeout=30.0)

    def start_node(self, i: int, *, timeout: float = 90.0) -> BrokerStatus:
        """Start node i again (its data and cluster id kept) and wait until it answers and is registered."""
        self._ensure_recorded()
        status = self.node(i).start(timeout=timeout)
        self._wait_registered(self.nodes, time.monotonic() + timeout)
        return status
