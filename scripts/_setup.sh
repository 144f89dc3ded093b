# Sourced by the scripts: makes .venv (once) and installs the project into it when its build inputs changed.
# Sourced by hand in an interactive shell (`source scripts/_setup.sh`), it does the same and puts .venv/bin on
# PATH, without leaving `set -e` behind or closing the shell on a failure.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_muse_setup() {
  set -euo pipefail
  cd "$ROOT"
  local PY="${MUSE_PYTHON:-python3}"
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "muse-stream needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2
    exit 2
  fi
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
  fi
  local stamp=".venv/.muse-installed"
  # The stamp covers the build's inputs (a changed C source is rebuilt) and whether the C extension was there
  # after the install: if it goes missing (git clean), the next run rebuilds it; where none could be compiled,
  # the pure-Python path runs and nothing is retried.
  local src
  src="$(cat pyproject.toml setup.py muse_stream/scoring/_native.c muse_stream/scoring/_treeshap.c muse_stream/scoring/_forest.c | sha256sum | cut -c1-16)-${MUSE_EXTRAS:-test}"
  built() { if ls muse_stream/scoring/_native*.so muse_stream/scoring/_treeshap*.so muse_stream/scoring/_forest*.so >/dev/null 2>&1; then echo native; else echo python; fi; }
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$src-$(built)" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[${MUSE_EXTRAS:-test}]"
    echo "$src-$(built)" > "$stamp"
  fi
}

if [[ $- == *i* ]]; then
  if (_muse_setup); then
    export PATH="$ROOT/.venv/bin:$PATH"
  else
    echo "muse-stream: set-up failed (above); PATH unchanged" >&2
  fi
else
  _muse_setup
  export PATH="$ROOT/.venv/bin:$PATH"
fi
unset -f _muse_setup
