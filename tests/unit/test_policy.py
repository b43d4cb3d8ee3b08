"""The pure precision policy: no torch, plans chosen from a GPU's memory (facts or the service's own limit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sd35_provision.facts.nvidia import NvidiaGpus
from sd35_provision.service import policy
from sd35_provision.service.policy import DeviceInfo, Software, choose_memory_plan, choose_precision, gpu_device

GiB = 1 << 30
# SD3.5 Large's bf16 weights as the H200 service bench wrote them (safetensors sizes).
LARGE_TRANSFORMER = 16_290_000_000
TEXT_ENCODERS = 11_160_000_000
MEDIUM_TRANSFORMER = 4_940_000_000
FULL = Software(float8=True, torchao=True, torch_version="2.11.0")
H200_FIXTURES = Path(__file__).parents[1] / "fixtures" / "h200"


def test_policy_imports_no_torch():
    """The control machine imports the policy without torch installed."""
    code = "import sys, sd35_provision.service.policy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_h200_facts_give_the_devices_the_policy_plans_for():
    output = json.loads((Path(__file__).parents[1] / "facts" / "NvidiaGpus" / "two_h200_recorded.json").read_text())
    status = NvidiaGpus().process(output["output"])
    devices = [gpu_device(g.name, g.compute_capability, g.memory_mib) for g in status.gpus]
    assert [d.total_memory_bytes for d in devices] == [143771 << 20] * 2
    plan = choose_precision("auto", devices[0], FULL)
    assert (plan.mode, plan.compile, plan.compute_dtype) == ("fp8-dynamic", True, "bfloat16")


# name, memory the GPU reports (MiB, as nvidia-smi), images per pipeline call -> lean?
# FP8 keeps T5-XXL in 8 bits when resident (13.6 GiB of weights for Large), so 24 GB
# cards serve it resident: measured on the H200 under a 22.35 GiB cap, 18.1 GiB peak
# with four concurrent clients (docs/benchmarks.md). 16 GB cards need the lean plan.
PLAN_BY_MEMORY = [
    ("NVIDIA H200", 143771, 4, False),
    ("NVIDIA H100 80GB HBM3", 81559, 4, False),
    ("NVIDIA GeForce RTX 4090", 24564, 1, False),
    ("NVIDIA GeForce RTX 4090", 24564, 4, False),
    ("NVIDIA L4", 23034, 1, False),
    ("NVIDIA L4", 23034, 4, False),
    ("H200 capped at 24 GB (SD35_GPU_MEMORY_GIB=22.35)", int(22.35 * 1024), 4, False),
    ("NVIDIA GeForce RTX 4060 Ti", 16380, 1, True),  # 13.6 GiB of weights leave no 4 GiB of headroom
    ("NVIDIA RTX A4000", 16376, 4, True),
]


@pytest.mark.parametrize("name,memory_mib,batch,lean", PLAN_BY_MEMORY)
def test_fp8_large_memory_plan_follows_gpu_memory(name, memory_mib, batch, lean):
    device = gpu_device(name, (8, 9), memory_mib)
    plan = choose_memory_plan("fp8-dynamic", device, LARGE_TRANSFORMER, TEXT_ENCODERS, batch)
    assert (plan.text_encoders_fp8, plan.vae_tiling) == (lean, lean), plan.reason
    assert plan.reason.startswith("lean" if lean else "resident")
    assert plan.name == ("lean" if lean else "resident")
    # resident FP8 stores T5-XXL in 8 bits; lean has all three text encoders in FP8 already
    assert plan.t5_8bit is not lean
    assert plan.expected_peak_bytes is not None
    if not lean:  # resident is picked only where its expected peak fits the card
        assert plan.expected_peak_bytes < memory_mib << 20


def test_fp8_keeps_t5_in_8_bits_and_bf16_does_not():
    h200 = gpu_device("NVIDIA H200", (9, 0), 143771)
    fp8 = choose_memory_plan("fp8-dynamic", h200, LARGE_TRANSFORMER, TEXT_ENCODERS, 4)
    storage = choose_memory_plan("fp8-storage", h200, LARGE_TRANSFORMER, TEXT_ENCODERS, 4)
    bf16 = choose_memory_plan("bf16", h200, LARGE_TRANSFORMER, TEXT_ENCODERS, 4)
    assert (fp8.t5_8bit, storage.t5_8bit, bf16.t5_8bit) == (True, True, False)
    assert "(T5-XXL in 8 bits)" in fp8.reason and "T5" not in bf16.reason
    # The expected peaks, against the H200 service bench (nvidia-smi, whole process, batches of 4):
    # FP8 18.3 GiB and BF16 29.3 GiB measured; the estimate stays above both, within 10%.
    assert fp8.expected_peak_bytes is not None and bf16.expected_peak_bytes is not None
    assert 18.3 < fp8.expected_peak_bytes / GiB < 18.3 * 1.1
    assert 29.3 < bf16.expected_peak_bytes / GiB < 29.3 * 1.1
    assert fp8.expected_peak_bytes / bf16.expected_peak_bytes <= 0.75


def test_lean_plan_says_whether_it_fits():
    small = gpu_device("NVIDIA GeForce RTX 4060 Ti", (8, 9), 16380)
    assert "(" in choose_memory_plan("fp8-dynamic", small, LARGE_TRANSFORMER, TEXT_ENCODERS, 4).reason
    assert "may not fit" in choose_memory_plan("fp8-dynamic", small, LARGE_TRANSFORMER, TEXT_ENCODERS, 8).reason
    card_12gb = gpu_device("NVIDIA GeForce RTX 4070", (8, 9), 12282)
    assert ", fits)" in choose_memory_plan("fp8-dynamic", card_12gb, MEDIUM_TRANSFORMER, TEXT_ENCODERS, 1).reason


def test_bf16_needs_more_memory_than_fp8_for_the_same_plan():
    card = gpu_device("NVIDIA GeForce RTX 5090", (12, 0), 32607)
    assert not choose_memory_plan("fp8-dynamic", card, LARGE_TRANSFORMER, TEXT_ENCODERS, 2).text_encoders_fp8
    assert choose_memory_plan("bf16", card, LARGE_TRANSFORMER, TEXT_ENCODERS, 2).text_encoders_fp8


def test_cpu_and_unknown_sizes_stay_resident():
    cpu = DeviceInfo("cpu", "x86_64", None, None)
    assert not choose_memory_plan("fp32", cpu, LARGE_TRANSFORMER, TEXT_ENCODERS, 4).text_encoders_fp8
    h200 = gpu_device("NVIDIA H200", (9, 0), 143771)
    assert choose_memory_plan("bf16", h200, None, None).reason.startswith("resident: sizes")


@pytest.mark.parametrize(
    "software,mode",
    [
        (FULL, "fp8-dynamic"),
        (Software(float8=True, torchao=False, torch_version="2.11.0"), "bf16"),
        (Software(float8=False, torchao=False, torch_version="2.2.0"), "bf16"),
    ],
)
def test_auto_follows_the_software(software, mode):
    assert choose_precision("auto", gpu_device("NVIDIA H200", (9, 0), 143771), software).mode == mode


def test_old_torch_is_named_in_the_error():
    with pytest.raises(ValueError, match="this torch is 2.2.0"):
        choose_precision(
            "fp8",
            gpu_device("NVIDIA H200", (9, 0), 143771),
            Software(float8=False, torchao=False, torch_version="2.2.0"),
        )


def test_activation_budget_is_per_image():
    # The rule the plans above rest on: each image of a batch adds its activations.
    total = 40 * GiB
    weights = total - policy.memory_need(0, 2, tiled=False, total=total)
    device = DeviceInfo("cuda", "test", (9, 0), total)
    assert not choose_memory_plan("bf16", device, weights, 0, 2).text_encoders_fp8
    assert choose_memory_plan("bf16", device, weights, 0, 3).text_encoders_fp8
    assert policy.memory_need(weights, 3, tiled=True, total=total) < total  # what lean saves makes room


@pytest.mark.parametrize(
    "memory_mib,repo,max_batch,expected",
    [
        (143771, "stabilityai/stable-diffusion-3.5-large", 4, "service: fp8-dynamic + compile, memory resident"),
        (23034, "stabilityai/stable-diffusion-3.5-large", 4, "service: fp8-dynamic + compile, memory resident"),
        (16380, "stabilityai/stable-diffusion-3.5-large", 4, "service: fp8-dynamic + compile, memory lean"),
        (23034, "stabilityai/stable-diffusion-3.5-medium", 1, "service: fp8-dynamic + compile, memory resident"),
        (23034, "someone/custom-sd3", 4, "service: fp8-dynamic + compile, memory resident (sizes or GPU unknown)"),
    ],
)
def test_host_plan_from_gpu_facts(memory_mib, repo, max_batch, expected):
    """What the control machine can say about a host before the model is there: from its GPU facts and the spec."""
    line = policy.host_plan("auto", "auto", gpu_device("NVIDIA L4", (8, 9), memory_mib), repo, max_batch)
    assert line.startswith(expected), line


def test_host_plan_names_a_precision_the_gpu_cannot_run():
    line = policy.host_plan(
        "fp8-dynamic", "auto", gpu_device("NVIDIA A100", (8, 0), 81920), "stabilityai/stable-diffusion-3.5-large", 4
    )
    assert line.startswith("service: precision fp8-dynamic cannot run: fp8-dynamic needs compute capability >= 8.9")
