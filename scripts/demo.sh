#!/usr/bin/env bash
# The main job: a seamless model update on real card transactions, end to end. Options: muse-stream demo --help
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec muse-stream demo "$@"
