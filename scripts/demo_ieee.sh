#!/usr/bin/env bash
# The second demo: entity features computed in the stream, on real e-commerce transactions (IEEE-CIS), with and
# without them, offline and through Kafka. Options: ./scripts/demo_ieee.sh --help
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec python -m muse_stream.demo.ieee "$@"
