"""pyinfra inventory built from an sd35-provision spec file.

    SD35_SPEC=inventory/example.yaml pyinfra deploys/inventory.py deploys/site.py

Every group of the spec becomes a pyinfra group; ``all_hosts`` holds every host.
"""

import os
import sys

from sd35_provision.hostspec import load_spec
from sd35_provision.inventory import connection_data

_spec = load_spec(os.environ.get("SD35_SPEC", "inventory/example.yaml"))
for _warning in _spec.warnings:  # renamed keys still in the file
    print(_warning, file=sys.stderr)
_accept_new = os.environ.get("SD35_ACCEPT_NEW_HOST_KEYS") == "1"

all_hosts = [(host.name, connection_data(host, _accept_new)) for host in _spec.hosts]
for _group, _names in _spec.groups.items():
    globals()[_group] = [entry for entry in all_hosts if entry[0] in _names]
