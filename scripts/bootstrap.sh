#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian 12 machine (as root):
# the test fleet's tools (debootstrap, systemd-nspawn), git-lfs, chromium, and a project
# venv in .venv with the control side plus the service stack used by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# chromium: the headless browser the playground and status-page tests drive (DevTools over a pipe).
for tool in debootstrap:debootstrap systemd-nspawn:systemd-container git-lfs:git-lfs ssh-keygen:openssh-client git:git chromium:chromium; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool#*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "bootstrap: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.sd35-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing Python packages into .venv"
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
    # torch 2.13.0: the CPU build (the tests run the tiny model on the CPU).
    .venv/bin/python -m pip install -q "torch==2.13.0" -e ".[test]" 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -c "import pyinfra, torch, diffusers, fastapi" 
    touch "$stamp"
fi
