"""The server.properties of a local KRaft node (kafka/local.py): listeners, the controller quorum, replication
defaults, and optionally a SASL/PLAIN listener with the StandardAuthorizer, so security settings and ACLs can be
tried (and tested) against a real broker.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from muse_stream.errors import BrokerError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024 + 1024 * 1024  # 65 MiB: room for 64 MiB model records plus headers
SUPER_USER = "admin"
_JAAS_SAFE = re.compile(r"[A-Za-z0-9_.@:+=/!#%&*?^~-]+")  # nothing that could end or escape a JAAS value


@dataclass(frozen=True)
class Quorum:
    """What every node of one cluster shares: the cluster id it is formatted with and the static controller
    voters (node id -> controller port). Internal topics are replicated to up to 3 nodes, with a min ISR one
    below that, so a 3-node cluster keeps accepting acks=all and transactions with one node down."""

    cluster_id: str
    voters: dict[int, int]

    @property
    def replication(self) -> int:
        return min(3, len(self.voters))

    @property
    def min_isr(self) -> int:
        return max(1, self.replication - 1)


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass(frozen=True, eq=False)
class SaslPlain:
    """Clients connect over SASL_PLAINTEXT with one of `users` (name -> password) and are authorized by ACLs
    (the StandardAuthorizer, ACLs kept in the metadata log). `admin` is the super user, and the identity the
    node itself uses between its broker and controller; every other user has only the ACLs granted to it."""

    users: dict[str, str]

    def __post_init__(self) -> None:
        if SUPER_USER not in self.users:
            raise BrokerError(f"a SASL/PLAIN broker needs the super user {SUPER_USER!r} among its users")
        for name, password in self.users.items():
            if not (_JAAS_SAFE.fullmatch(name) and _JAAS_SAFE.fullmatch(password)):
                raise BrokerError(f"SASL/PLAIN user {name!r}: names and passwords may not hold quotes, "
                                  "backslashes, semicolons or spaces (they go into a JAAS line)")

    def client_config(self, user: str = SUPER_USER) -> dict[str, str]:
        """The librdkafka settings ([kafka.client]) of a client connecting as `user`."""
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": user,
                "sasl.password": self.users[user]}

    def jaas(self) -> str:
        own = f'username="{SUPER_USER}" password="{self.users[SUPER_USER]}"'
        accepted = " ".join(f'user_{n}="{p}"' for n, p in sorted(self.users.items()))
        return f"org.apache.kafka.common.security.plain.PlainLoginModule required {own} {accepted};"


def _listeners(port: int, controller_port: int, sasl: SaslPlain | None) -> list[str]:
    if sasl is None:
        return [f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT"]
    # The controller listener authenticates too: no unauthenticated way in, not even on the quorum's port.
    return [f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}",
            "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            "sasl.mechanism.controller.protocol=PLAIN",
            f"listener.name.sasl_plaintext.plain.sasl.jaas.config={sasl.jaas()}",
            f"listener.name.controller.plain.sasl.jaas.config={sasl.jaas()}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{SUPER_USER}",
            "allow.everyone.if.no.acl.found=false"]


def broker_properties(*, port: int, controller_port: int, data_dir: Path, node_id: int = 1,
                      quorum: Quorum | None = None, sasl: SaslPlain | None = None) -> str:
    """A combined broker+controller KRaft node; without a quorum, the single-node settings that
    docker-compose.kafka.yml mirrors."""
    voters = quorum.voters if quorum else {node_id: controller_port}
    rf, isr = (quorum.replication, quorum.min_isr) if quorum else (1, 1)
    multi = [
        # One machine, many nodes: notice a dead node in seconds so its partitions' leadership moves quickly.
        "broker.session.timeout.ms=6000",
        "broker.heartbeat.interval.ms=1000",
    ] if len(voters) > 1 else []
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        *_listeners(port, controller_port, sasl),
        "controller.listener.names=CONTROLLER",
        "controller.quorum.voters=" + ",".join(f"{n}@127.0.0.1:{p}" for n, p in sorted(voters.items())),
        f"log.dirs={data_dir}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        f"default.replication.factor={rf}",
        f"min.insync.replicas={isr}",
        f"offsets.topic.replication.factor={rf}",
        "offsets.topic.num.partitions=10",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={isr}",
        "transaction.state.log.num.partitions=10",
        f"share.coordinator.state.topic.replication.factor={rf}",
        f"share.coordinator.state.topic.min.isr={isr}",
        "group.initial.rebalance.delay.ms=0",
        *multi,
        f"message.max.bytes={MAX_MESSAGE_BYTES}",
        f"replica.fetch.max.bytes={MAX_MESSAGE_BYTES}",
        "log.cleaner.min.compaction.lag.ms=0",
        "",
    ])
