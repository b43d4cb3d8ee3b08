"""The Stable Diffusion 3.5 inference service that runs on the GPU hosts.

This package is copied to the hosts on its own and runs from the host's venv:
it imports only the standard library, its own modules and the venv's packages
(torch, diffusers, transformers, fastapi, uvicorn, pillow, prometheus_client, pynvml),
never pyinfra, click or the rest of sd35_provision. Start it with
``python -m sd35_provision.service``; it is configured by SD35_* environment
variables (see config.py).
"""
