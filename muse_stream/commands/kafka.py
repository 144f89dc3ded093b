"""`muse-stream kafka start|stop|status`: the local development broker, or a local multi-node cluster;
`kafka console-consumer -- ARGS` and `kafka classpath`: Kafka's own command-line tools, cached by `start`."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kafka", help="start, stop or inspect the local development broker (or cluster)")
    p.add_argument("action", choices=["start", "stop", "status", "console-consumer", "classpath"],
                   help="console-consumer runs Kafka's own ConsoleConsumer with the arguments after `--`; "
                        "classpath prints the `java -cp` argument for any other Kafka tool")
    p.add_argument("--port", type=int, default=9092,
                   help="broker port on 127.0.0.1; a cluster's first node (default 9092)")
    p.add_argument("--nodes", type=int, default=None,
                   help="start: 1 (default) for one broker, or N combined broker+controller nodes on ports "
                        "port..port+N-1 (controllers on the N ports after them); stop/status find a cluster "
                        "started at --port by themselves")
    p.add_argument("tool_args", nargs="*", metavar="-- ARGS",
                   help="console-consumer: Kafka's own options, e.g. -- --bootstrap-server 127.0.0.1:9092 "
                        "--topic muse.decisions.acme --from-beginning --isolation-level read_committed")
    p.set_defaults(func=run)


def _tool(args: argparse.Namespace) -> int:
    import os
    import shutil

    from muse_stream.errors import BrokerError
    from muse_stream.kafka.local import CONSOLE_CONSUMER, tools_classpath

    cp = tools_classpath()
    if args.action == "classpath":
        print(cp)
        return 0
    if shutil.which("java") is None:
        raise BrokerError("Java 17+ (java) is not on PATH: Kafka's tools need it")
    # The tools log every client setting at INFO; warnings and errors are what a person at a console wants.
    argv = ["java", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", cp, CONSOLE_CONSUMER, *args.tool_args]
    os.execvp("java", argv)  # Kafka's tool owns the terminal from here: its exit code, its signals
    return 1  # not reached


def run(args: argparse.Namespace) -> int:
    from muse_stream.errors import BrokerError
    from muse_stream.kafka.cluster import LocalCluster
    from muse_stream.kafka.local import LocalBroker, fetch_tools

    if args.tool_args and args.action != "console-consumer":
        raise BrokerError(f"kafka {args.action} takes no arguments after --")
    if args.action in ("console-consumer", "classpath"):
        return _tool(args)
    if args.nodes is not None and not 1 <= args.nodes <= 9:
        raise BrokerError(f"--nodes must be 1 to 9, not {args.nodes}")
    last = args.port + 2 * args.nodes - 1 if (args.nodes or 1) > 1 else args.port  # a cluster's controllers follow
    if args.port < 1 or last > 65535:
        ports = f"port {args.port}" if last == args.port else f"ports {args.port}..{last} (the cluster's nodes)"
        raise BrokerError(f"--port {args.port}: {ports} not within 1..65535")
    if args.action == "start" and (args.nodes or 1) > 1:
        cluster = LocalCluster(args.nodes, base_port=args.port)
        status = cluster.start()
        fetch_tools()  # Kafka's own console tools, ready for `kafka console-consumer`
        print(status.describe())
        print(f"bootstrap: {cluster.bootstrap}")
        return 0
    cluster = None
    if args.action != "start" and args.nodes != 1:
        cluster = LocalCluster.existing(args.port)
        if args.nodes is None and cluster is not None and not cluster.running():
            cluster = None  # a cluster once started here, now stopped: this is about the single broker
        elif cluster is None and args.nodes:
            cluster = LocalCluster(args.nodes, base_port=args.port)
    if cluster is not None:
        if args.action == "stop":
            stopped = cluster.stop()
            print(f"stopped the {cluster.nodes}-node cluster at {cluster.bootstrap}" if stopped
                  else f"no node of the cluster at {cluster.bootstrap} was running")
            return 0
        status = cluster.status()
        print(status.describe())
        return 0 if status.up else 1
    broker = LocalBroker(args.port)
    if args.action == "start":
        status = broker.start()
        fetch_tools()  # Kafka's own console tools, ready for `kafka console-consumer`
        print(status.describe())
        return 0
    if args.action == "stop":
        stopped = broker.stop()
        print(f"stopped the broker at {broker.bootstrap}" if stopped else f"no broker of ours was running at {broker.bootstrap}")
        return 0
    status = broker.status()
    print(status.describe())
    return 0 if status.up else 1
