"""Entry point for plain pyinfra.

    SD35_SPEC=inventory/example.yaml pyinfra deploys/inventory.py deploys/site.py

The sd35-provision CLI runs the same layers with preflight checks, plans,
diffs and reports; this file exists so the deploys stay ordinary pyinfra code.
"""

from sd35_provision.deploys.layers import LAYERS

for layer in LAYERS:
    layer()
