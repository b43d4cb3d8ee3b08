"""SD3.5 speed/memory benchmark of the service's precision modes (``python -m sd35_provision.bench``).

``harness`` measures, ``flops`` gives the roofline floor from the model config,
``models`` builds random-weight SD3.5 pipelines from the published configs,
``report`` renders the tables and docs/benchmarks.md, ``cli`` is the command.
"""
