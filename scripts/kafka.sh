#!/usr/bin/env bash
# The local development broker: scripts/kafka.sh start|stop|status [--port N]
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec muse-stream kafka "$@"
