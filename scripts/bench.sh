#!/usr/bin/env bash
# The benchmark: scripts/bench.sh [--events N] [--json PATH] ... (muse-stream bench --help)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec muse-stream bench "$@"
