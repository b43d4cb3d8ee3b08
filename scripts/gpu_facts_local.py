"""Run the facts and preflight layer on this machine through pyinfra's @local connector.

    python scripts/gpu_facts_local.py [--cache-root /var/lib/sd35] [--json OUT]

Used on the lent H100 box (issue #6): what `sd35-provision facts` reads over
SSH, read here locally, plus the preflight verdict for an FP8 GPU host and the
raw nvidia-smi output the NvidiaGpus fact parsed (saved as a test fixture).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyinfra.api import Config, Inventory, State  # noqa: E402
from pyinfra.api.connect import connect_all  # noqa: E402
from pyinfra.context import ctx_host, ctx_state  # noqa: E402

from sd35_provision.facts import gather_host_facts  # noqa: E402
from sd35_provision.facts.nvidia import NvidiaGpus  # noqa: E402
from sd35_provision.facts.table import facts_row, render_facts_table  # noqa: E402
from sd35_provision.hostspec.settings import CacheSettings, GpuSettings, HostSettings  # noqa: E402
from sd35_provision.preflight import check_preflight  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-root", default="/tmp")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    settings = HostSettings(
        name="@local",
        address="127.0.0.1",
        gpu=GpuSettings(accelerator="nvidia", require_fp8=True),
        cache=CacheSettings(root=args.cache_root, min_free_gb=1, require_ssd=False),
    )
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    host = state.inventory.get_host("@local")
    with ctx_state.use(state), ctx_host.use(host):
        facts = gather_host_facts(host, settings)
        command = NvidiaGpus().command()
    print(render_facts_table([facts_row("@local", facts)]))
    failures = check_preflight(settings, facts)
    print("preflight:", "ok" if not failures else "\n  ".join(["FAILED"] + failures))
    raw = subprocess.run(["sh", "-c", command], capture_output=True, text=True).stdout.splitlines()
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "facts": facts.to_dict(),
                    "preflight": failures,
                    "nvidia_gpus_command": command,
                    "nvidia_gpus_output": raw,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
