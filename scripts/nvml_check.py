"""Read the service's NVML metrics for every GPU of this machine and check them (issue 13, on the lent H200).

    python scripts/nvml_check.py [--json OUT]
    nvidia-smi -q -x > OUT.xml          # the recorded facts the unit tests' stand-in pynvml answers from

Reads through sd35_provision/service/gpu_metrics.py exactly as /metrics does
(the GPUs given as CUDA_VISIBLE_DEVICES, every one of them here), renders the
Prometheus text and parses it back, and prints one JSON document: the driver,
each metric's name, type, help and samples, how long a read took, and the
problems found. Exit 1 when a metric every NVIDIA data-centre GPU has is
missing, has the wrong type, a sample per GPU too few or too many, or a value
out of its range; metrics a GPU may lack (retired pages before Ampere, Xid
events) are listed but not required. Needs nvidia-ml-py and prometheus-client.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sd35_provision.service.gpu_metrics import GpuCollector  # noqa: E402

# name: (type, samples per GPU, lowest, highest); None: no bound. The upper bounds only catch unit mistakes.
REQUIRED: dict[str, tuple[str, int, float | None, float | None]] = {
    "sd35_gpu_up": ("gauge", 1, 1, 1),
    "sd35_gpu_info": ("gauge", 1, 1, 1),
    "sd35_gpu_utilization_percent": ("gauge", 1, 0, 100),
    "sd35_gpu_memory_utilization_percent": ("gauge", 1, 0, 100),
    "sd35_gpu_device_memory_used_bytes": ("gauge", 1, 0, 2**42),
    "sd35_gpu_device_memory_total_bytes": ("gauge", 1, 2**30, 2**42),
    "sd35_gpu_temperature_celsius": ("gauge", 1, 1, 120),
    "sd35_gpu_power_watts": ("gauge", 1, 1, 2000),
    "sd35_gpu_power_limit_watts": ("gauge", 1, 50, 2000),
    "sd35_gpu_sm_clock_hertz": ("gauge", 1, 1e7, 5e9),
    "sd35_gpu_throttle_reason": ("gauge", 9, 0, 1),
    "sd35_gpu_ecc_errors": ("gauge", 4, 0, None),
}
# Present on Ampere and later (row remapping), absent before: required when the GPU is such.
ROW_REMAPPING = {
    "sd35_gpu_remapped_rows": ("gauge", 2, 0, None),
    "sd35_gpu_row_remap_pending": ("gauge", 1, 0, 1),
    "sd35_gpu_row_remap_failed": ("gauge", 1, 0, 1),
}
OPTIONAL = {
    "sd35_gpu_retired_pages": ("gauge", 2, 0, None),
    "sd35_gpu_retired_pages_pending": ("gauge", 1, 0, 1),
    "sd35_gpu_xid_errors": ("counter", 1, 0, None),
    "sd35_gpu_last_xid": ("gauge", 1, 0, None),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the document here")
    args = parser.parse_args()

    import pynvml

    pynvml.nvmlInit()
    count = pynvml.nvmlDeviceGetCount()
    names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
    environ = {"CUDA_VISIBLE_DEVICES": ",".join(str(index) for index in range(count))}
    collector = GpuCollector(environ=environ, cache_s=0)
    begin = time.monotonic()
    collector.wait_started(60)
    started_s = time.monotonic() - begin
    registry = CollectorRegistry()
    registry.register(collector)
    reads = []
    for _ in range(3):  # the first read, and two more as Prometheus would scrape
        begin = time.monotonic()
        text = generate_latest(registry).decode()
        reads.append(round(time.monotonic() - begin, 4))
        time.sleep(0.2)
    families = list(text_string_to_metric_families(text))
    problems = check(families, count, names)
    document = {
        "gpus": [{"index": index, "name": name} for index, name in enumerate(names)],
        "nvml_start_s": round(started_s, 3),
        "read_s": reads,
        "unavailable": collector.unavailable,
        "metrics": [
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples],
            }
            for family in families
        ],
        "problems": problems,
    }
    rendered = json.dumps(document, indent=1)
    print(rendered)
    if args.json is not None:
        args.json.write_text(rendered + "\n")
    print(f"{len(problems)} problem(s)" + "".join(f"\n  {problem}" for problem in problems), file=sys.stderr)
    return 1 if problems else 0


def check(families: list, count: int, names: list[str]) -> list[str]:
    """What is wrong with one reading of ``count`` GPUs."""
    by_name = {family.name: family for family in families}
    problems = []
    nvml_up = by_name.get("sd35_gpu_nvml_up")
    if nvml_up is None or [s.value for s in nvml_up.samples] != [1.0]:
        problems.append("sd35_gpu_nvml_up is not 1")
    wanted = dict(REQUIRED)
    if any(("A100" in n or "H100" in n or "H200" in n or "B200" in n) for n in names):
        wanted.update(ROW_REMAPPING)
    for name, expected in [*wanted.items(), *OPTIONAL.items()]:
        family = by_name.get(name)
        if family is None:
            if name in wanted:
                problems.append(f"{name}: missing")
            continue
        kind, per_gpu, low, high = expected
        if family.type != kind:
            problems.append(f"{name}: type {family.type}, expected {kind}")
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        for index in range(count):
            mine = [s for s in samples if s.labels.get("gpu") == str(index)]
            if len(mine) != per_gpu:
                problems.append(f"{name}: GPU {index} has {len(mine)} sample(s), expected {per_gpu}")
            for sample in mine:
                if not sample.labels.get("uuid", "").startswith(("GPU-", "MIG-")):
                    problems.append(f"{name}: GPU {index}: uuid label {sample.labels.get('uuid')!r}")
                value = sample.value
                if not isinstance(value, float) or not math.isfinite(value):
                    problems.append(f"{name}: GPU {index}: value {value!r} is not a finite number")
                elif (low is not None and value < low) or (high is not None and value > high):
                    problems.append(f"{name}{sample.labels}: {value} outside [{low}, {high}]")
    for index in range(count):
        used = _value(by_name, "sd35_gpu_device_memory_used_bytes", index)
        total = _value(by_name, "sd35_gpu_device_memory_total_bytes", index)
        if used is not None and total is not None and used > total:
            problems.append(f"GPU {index}: {used} bytes used of {total}")
        power = _value(by_name, "sd35_gpu_power_watts", index)
        limit = _value(by_name, "sd35_gpu_power_limit_watts", index)
        if power is not None and limit is not None and power > limit * 1.5:
            problems.append(f"GPU {index}: drawing {power} W against a {limit} W limit")
    return problems


def _value(by_name: dict, name: str, index: int) -> float | None:
    family = by_name.get(name)
    found = [s.value for s in family.samples if s.labels.get("gpu") == str(index)] if family else []
    return found[0] if len(found) == 1 else None


if __name__ == "__main__":
    sys.exit(main())
