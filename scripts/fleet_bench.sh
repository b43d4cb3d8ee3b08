#!/usr/bin/env bash
# Times sd35-provision on 1 and 4 (or 1,4,16) local test hosts (validate, plan, drift, status, no-op apply, fresh
# apply), counting SSH round trips per host from the hosts' sshd logs, with and without 50 ms added latency (a netem
# delay where tc has one, else bench/delay_relay.py as the SSH ProxyCommand), beside the Ansible playbook in
# bench/ansible (ansible-core from PyPI, in its own venv made here), and writes the table into docs/benchmarks.md.
# Needs root (the test fleet, tc). Arguments go to bench/fleet_bench.py:
#   scripts/fleet_bench.sh --hosts 1,4,16 --runs 3 --latency-ms 50
# 16 hosts: ~9 GB of memory with their services running, a 16-host converge ~15-25 min on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ANSIBLE_VENV=${ANSIBLE_VENV:-/var/cache/sd35-provision/bench-ansible}
if [ ! -x "$ANSIBLE_VENV/bin/ansible-playbook" ]; then
    python3 -m venv "$ANSIBLE_VENV"
    "$ANSIBLE_VENV/bin/pip" install --quiet "ansible-core>=2.16,<2.22"
fi
exec .venv/bin/python bench/fleet_bench.py --ansible-venv "$ANSIBLE_VENV" --write docs/benchmarks.md \
    --command-line "scripts/fleet_bench.sh $*" "$@"
