"""Entry point for plain pyinfra.

    SD35_SPEC=inventory/example.yaml pyinfra deploys/inventory.py deploys/site.py

The sd35-provision CLI runs the same layers with preflight checks, plans,
diffs and reports; this file exists so the deploys stay ordinary pyinfra code.
Each host's plan is worked out here from its settings (``host.data.sd35``)
and the facts the plan needs, then handed to every layer.
"""

from pyinfra import host

from sd35_provision.deploys.layers import LAYERS
from sd35_provision.deploys.plan import plan_host
from sd35_provision.operations import HostRecorder

# A gateway host's plan needs the plans of every host behind it (their instances), which only
# sd35-provision works out (it reads them all): plain pyinfra leaves gateway hosts alone.
if not host.data.sd35.runs_gateway:
    _plan = plan_host(host, host.data.sd35)
    _recorder = HostRecorder()  # plain pyinfra shows its own output; the notes are for sd35-provision's report
    for layer in LAYERS:
        layer(_plan, _recorder)
