#!/usr/bin/env bash
# Installs what it needs, then runs the main job end to end on the embedded
# default: a local two-host test fleet (systemd-nspawn) and the tiny SD3 model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/sd35-provision demo "$@"
