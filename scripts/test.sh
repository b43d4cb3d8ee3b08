#!/usr/bin/env bash
# Installs what the tests need, then runs all of them: unit tests and the
# integration tests that boot the local systemd-nspawn test fleet over real SSH.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q -ra "$@"
