"""The end-to-end demo on the embedded default: a local test fleet and the tiny model.

validate -> plan (dry run with diffs) -> apply (venv, model, service, smoke test) -> apply again
(must be a no-op) -> the smoke-test images, copied back here.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from sd35_provision import workflow
from sd35_provision.errors import Sd35Error
from sd35_provision.hostspec import load_spec
from sd35_provision.locks import load_lock
from sd35_provision.report import render_plan, render_table
from sd35_provision.testfleet import up
from sd35_provision.tinymodel import generate_tiny_pipeline
from sd35_provision.wheelhouse import cached_wheelhouse


def run_demo(hosts: int, state_dir: Path, echo: Callable[[str], None]) -> Path:
    echo(f"==> booting a test fleet of {hosts} Debian 12 hosts (systemd-nspawn, sshd on 127.0.2.x)")
    fleet = up(hosts, state_dir=state_dir)
    model_dir = fleet.state_dir / "tiny-sd3"
    if not (model_dir / "model_index.json").exists():
        echo("==> generating the tiny random SD3 pipeline")
        generate_tiny_pipeline(model_dir)
    echo("==> wheelhouse: the CPU lock's wheels, pushed to the hosts (they install offline)")
    wheels = cached_wheelhouse(load_lock("cpu"))
    spec_path = fleet.write_spec(
        fleet.state_dir / "demo.yaml",
        extra_defaults={
            "cache": {"root": "/srv/sd35", "min_free_gb": 2},
            "python": {"torch_flavour": "cpu", "wheelhouse": str(wheels)},
            "model": {"source": "push", "path": model_dir.name},
            "service": {"precision": "fp32"},
            "smoke": {"size": "64x64", "steps": 2},
        },
    )
    echo(f"==> validate {spec_path}")
    spec = load_spec(spec_path)
    echo(f"ok: {len(spec.hosts)} host(s)")

    echo("==> plan (dry run: nothing changes)")
    echo(render_plan(workflow.plan(spec)))

    echo("==> apply")
    report = workflow.apply(spec)
    echo(render_table(report))
    if not report.ok:
        raise Sd35Error("apply failed; see the table above")

    echo("==> apply again: must change nothing")
    again = workflow.apply(spec)
    echo(render_table(again))
    if not again.ok or again.drifted:
        raise Sd35Error("the second apply was not a no-op")
    images = []
    for host in report.hosts:
        if host.smoke and host.smoke.get("image"):
            fetched = fleet.run(host.name, f"base64 {host.smoke['image']}")
            if fetched.exit_status == 0:
                target = fleet.state_dir / f"smoke-{host.name}.png"
                target.write_bytes(base64.b64decode(fetched.stdout))
                images.append(target)
    if not images:
        raise Sd35Error("no host produced a smoke-test image")
    for image in images:
        echo(f"==> generated image: {image} (from the service on its host, tiny random model: noise is expected)")
    echo(
        f"==> done. Spec: {spec_path}. Explore with `sd35-provision facts {spec_path}`; "
        "stop the fleet with `sd35-provision testfleet down`."
    )
    return spec_path
