#!/usr/bin/env bash
# Installs what the tests need, checks lint and types, then runs all the tests: unit tests and the
# integration tests that boot the local systemd-nspawn test fleet over real SSH (one of them builds the
# wheel and installs it into a fresh venv). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
echo "test: ruff check, ruff format --check" >&2
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
echo "test: mypy" >&2
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -ra "$@"
