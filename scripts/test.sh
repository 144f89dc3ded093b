#!/usr/bin/env bash
# Runs every test. Tests that need Kafka start a real local broker on a free port (or use MUSE_BOOTSTRAP).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec python -m pytest "$@"
