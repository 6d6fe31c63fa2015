#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what is missing, lint, type-check, and run
# pytest (unit, doctests and integration tests against a real Kafka broker and Redis server,
# which the test fixtures start through scripts/services.py and stop again afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
. .venv/bin/activate
echo "[test] ruff" >&2
ruff check .
ruff format --check .
echo "[test] mypy" >&2
mypy
echo "[test] pytest" >&2
# pytest exits 5 when it collected no test: set -e makes that a failure too
python -m pytest "$@"
echo "[test] done in $(( $(date +%s) - start ))s" >&2
