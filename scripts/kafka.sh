#!/usr/bin/env bash
# The local development broker: scripts/kafka.sh start|stop|status [--port N] [--nodes 3]
# (--nodes 3: a three-node KRaft cluster on ports N..N+2, controllers on N+3..N+5)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec muse-stream kafka "$@"
