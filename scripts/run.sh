#!/usr/bin/env bash
# One entry point for a fresh machine (Python 3.11, gcc, cmake; no torch, no venv needed).
#   bash scripts/run.sh demo   the main job: build a symmetric index of the offline clip-art set
#   bash scripts/run.sh test   the test suite (what CI runs)
#   bash scripts/run.sh setup  install only
#   bash scripts/run.sh lock   refresh requirements/lock.txt (a fresh venv, newest allowed releases)
# Installing is idempotent: a re-run skips every step whose inputs did not change.  Every pip
# install is constrained by requirements/lock.txt, the exact versions CI tested.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP_DIR=build/.stamps
LOCK=requirements/lock.txt
mkdir -p "$STAMP_DIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '\033[1m[solar]\033[0m %s\n' "$*"; }

install_torch() {
  # The CPU wheel first: any other torch request would pull the CUDA wheels.  An installed torch
  # (a CUDA build on a GPU machine, say) is kept as it is.
  if ! $PY -c 'import torch' 2>/dev/null; then
    log "installing torch 2.13.0 (CPU)"
    $PY -m pip install -q torch==2.13.0
  fi
}

install_debs() {
  # Offline real data: clip art and the color emoji font (Debian packages).
  local need=()
  for p in openclipart-png openclipart-svg fonts-noto-color-emoji; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    log "WARNING: cannot install ${need[*]} (not root); tests that need them will be skipped"
    return 0
  fi
  local SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
  log "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

install_package() {
  local key
  key=$( (cat pyproject.toml setup.py CMakeLists.txt "$LOCK"; find csrc -type f | sort | xargs cat) | sha1sum | cut -c1-16)
  if [ -f "$STAMP_DIR/pkg-$key" ] && $PY -c 'import solar' 2>/dev/null; then
    return 0
  fi
  log "installing solar and its dependencies (editable, builds csrc with CMake)"
  $PY -m pip install -q -c "$LOCK" "setuptools>=70" wheel "pybind11>=2.12" "cmake>=3.24"
  $PY -m pip install -q -c "$LOCK" --no-build-isolation -e ".[all]"
  rm -f "$STAMP_DIR"/pkg-*; touch "$STAMP_DIR/pkg-$key"
}

setup() { install_torch; install_debs; install_package; }

refresh_lock() {
  # Resolve pyproject.toml's ranges afresh in a throw-away venv and freeze the result.
  local venv
  venv=$(mktemp -d)/venv
  $PY -m venv "$venv"
  log "resolving the newest releases that pyproject.toml admits in $venv"
  "$venv/bin/python" -m pip install -q torch==2.13.0
  "$venv/bin/python" -m pip install -q "setuptools>=70" wheel "pybind11>=2.12" "cmake>=3.24"
  SOLAR_SKIP_NATIVE=1 "$venv/bin/python" -m pip install -q --no-build-isolation -e ".[all]"
  { sed -n '/^#/p' "$LOCK"
    "$venv/bin/python" -m pip freeze --all | grep -vE '^(pip|torch)==|^-e |^solar-mm'
  } > "$LOCK.new"
  mv "$LOCK.new" "$LOCK"
  rm -rf "$(dirname "$venv")"
  log "wrote $LOCK; run 'bash scripts/run.sh test' before committing it"
}

case "${1:-}" in
  setup) setup ;;
  lock) refresh_lock ;;
  test)
    setup
    log "running the test suite"
    shift
    exec $PY -m pytest -q "$@" ;;
  demo)
    setup
    shift
    if $PY -c 'import solar_milvus.cli' 2>/dev/null; then
      exec $PY -m solar.cli demo "$@"
    fi
    exec $PY -m solar.cli info ;;
  *) echo "usage: bash scripts/run.sh {demo|test|setup|lock} [args...]" >&2; exit 2 ;;
esac
