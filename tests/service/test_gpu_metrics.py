"""NVML metrics on the recorded H200 facts (tests/fixtures/h200/nvidia-smi-q-x.xml) through a stand-in pynvml."""

from __future__ import annotations

import inspect
import json
import logging
import sys
import threading
import time
from pathlib import Path

import pynvml
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sd35_provision.service.app import create_app
from sd35_provision.service.gpu_metrics import FAMILIES, GpuCollector, pinned_gpus
from tests.service.nvml_fakes import FakeNvml, driver_from_smi_xml, gpus_from_smi_xml, loader
from tests.service.support import FakeEngine, make_config

H200_XML = Path(__file__).resolve().parents[1] / "fixtures" / "h200" / "nvidia-smi-q-x.xml"
GPU0 = "GPU-ef6d584d-cafe-0652-0f12-0ec5c3ffe8c0"
GPU1 = "GPU-34f4428c-ff6c-aada-b002-b16896dbd402"


def h200() -> FakeNvml:
    return FakeNvml(gpus_from_smi_xml(H200_XML), driver=driver_from_smi_xml(H200_XML))


def collected(fake: FakeNvml, env: dict[str, str] | None = None, **options) -> dict[str, dict[tuple, float]]:
    """{family name: {labels as sorted (name, value) pairs: value}} of one collect."""
    collector = GpuCollector(loader(fake), environ={} if env is None else env, **options)
    collector.wait_started(5)
    return samples(collector.collect())


def samples(families) -> dict[str, dict[tuple, float]]:
    found: dict[str, dict[tuple, float]] = {}
    for family in families:
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def gpu_labels(index: int, uuid: str, **extra: str) -> tuple:
    return tuple(sorted({"gpu": str(index), "uuid": uuid, **extra}.items()))


def test_the_stand_in_has_pynvmls_signatures():
    replaced = [name for name, member in vars(FakeNvml).items() if name.startswith("nvml") and callable(member)]
    assert len(replaced) >= 20
    fake = h200()
    for name in replaced:
        assert inspect.signature(getattr(fake, name)) == inspect.signature(getattr(pynvml, name)), name


def test_recorded_h200_gpu0_every_metric_in_its_unit():
    got = collected(h200())
    gpu0 = gpu_labels(0, GPU0)
    assert got["sd35_gpu_nvml_up"] == {(): 1.0}
    assert got["sd35_gpu_up"] == {gpu0: 1.0}  # only the GPU the service runs on (device 0)
    assert got["sd35_gpu_info"] == {gpu_labels(0, GPU0, name="NVIDIA H200", driver="580.159.04"): 1.0}
    assert got["sd35_gpu_device_memory_total_bytes"][gpu0] == 143771 * 2**20
    assert got["sd35_gpu_device_memory_used_bytes"][gpu0] == 0
    assert got["sd35_gpu_utilization_percent"][gpu0] == 0
    assert got["sd35_gpu_memory_utilization_percent"][gpu0] == 0
    assert got["sd35_gpu_temperature_celsius"][gpu0] == 34
    assert got["sd35_gpu_power_watts"][gpu0] == pytest.approx(78.29)
    assert got["sd35_gpu_power_limit_watts"][gpu0] == 700
    assert got["sd35_gpu_sm_clock_hertz"][gpu0] == 345e6
    reasons = {dict(labels)["reason"]: value for labels, value in got["sd35_gpu_throttle_reason"].items()}
    assert reasons.pop("gpu_idle") == 1 and set(reasons.values()) == {0} and len(reasons) == 8
    assert got["sd35_gpu_ecc_errors"] == {
        gpu_labels(0, GPU0, error_type=kind, counter=counter): 0
        for kind in ("corrected", "uncorrected")
        for counter in ("volatile", "aggregate")
    }
    assert got["sd35_gpu_remapped_rows"] == {
        gpu_labels(0, GPU0, error_type="corrected"): 0,
        gpu_labels(0, GPU0, error_type="uncorrected"): 0,
    }
    assert got["sd35_gpu_row_remap_pending"] == {gpu0: 0} and got["sd35_gpu_row_remap_failed"] == {gpu0: 0}
    # Hopper remaps rows instead of retiring pages: nvidia-smi's N/A is NotSupported, and the metric is absent.
    assert "sd35_gpu_retired_pages" not in got and "sd35_gpu_retired_pages_pending" not in got
    assert got["sd35_gpu_xid_errors_total"] == {gpu0: 0} and got["sd35_gpu_last_xid"] == {gpu0: 0}
    assert set(got) - {"sd35_gpu_nvml_up", "sd35_gpu_xid_errors_total"} <= set(FAMILIES)


@pytest.mark.parametrize(
    "visible, expected",
    [
        (None, [(0, GPU0)]),
        (GPU1, [(1, GPU1)]),  # the unit pins an instance by UUID
        ("1", [(1, GPU1)]),
        (f"{GPU1},{GPU0}", [(1, GPU1), (0, GPU0)]),
    ],
)
def test_the_gpus_cuda_visible_devices_gives_are_the_ones_reported(visible, expected):
    got = collected(h200(), {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible})
    assert sorted(got["sd35_gpu_up"]) == sorted(gpu_labels(index, uuid) for index, uuid in expected)
    assert sorted(got["sd35_gpu_temperature_celsius"]) == sorted(gpu_labels(i, u) for i, u in expected)


def test_cuda_visible_devices_parsing_follows_cuda():
    assert pinned_gpus({}) == (0,)
    assert pinned_gpus({"CUDA_VISIBLE_DEVICES": " 2, GPU-abc"}) == (2, "GPU-abc")
    assert pinned_gpus({"CUDA_VISIBLE_DEVICES": "MIG-1234"}) == ("MIG-1234",)
    assert pinned_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,0"}) == (1,)  # CUDA stops at the first invalid entry
    assert pinned_gpus({"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert pinned_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == ()


def test_unsupported_queries_leave_their_metrics_out_and_the_rest_stays():
    fake = h200()
    gpu = fake.gpus[0]
    gpu.ecc = gpu.remapped_rows = gpu.power_mw = gpu.event_reasons = None  # a consumer card without them
    fake.xid_supported = False
    got = collected(fake)
    for absent in ("sd35_gpu_ecc_errors", "sd35_gpu_remapped_rows", "sd35_gpu_power_watts", "sd35_gpu_throttle_reason"):
        assert absent not in got, absent
    assert "sd35_gpu_xid_errors_total" not in got and "sd35_gpu_last_xid" not in got
    assert got["sd35_gpu_up"] == {gpu_labels(0, GPU0): 1.0}
    assert got["sd35_gpu_temperature_celsius"] == {gpu_labels(0, GPU0): 34}


def test_retired_pages_are_counted_where_the_gpu_retires_pages():
    fake = h200()
    fake.gpus[0].retired_pages = {
        pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: [0x1000, 0x2000],
        pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: [0x3000],
    }
    fake.gpus[0].retired_pending = 1
    got = collected(fake)
    assert got["sd35_gpu_retired_pages"] == {
        gpu_labels(0, GPU0, cause="single_bit_ecc"): 2,
        gpu_labels(0, GPU0, cause="double_bit_ecc"): 1,
    }
    assert got["sd35_gpu_retired_pages_pending"] == {gpu_labels(0, GPU0): 1}


def test_a_lost_gpu_says_so_and_the_other_gpu_still_reports(caplog):
    fake = h200()
    fake.gpus[1].errors["nvmlDeviceGetTemperature"] = pynvml.NVML_ERROR_GPU_IS_LOST
    with caplog.at_level(logging.WARNING, logger="sd35.service.gpu"):
        got = collected(fake, {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert got["sd35_gpu_up"] == {gpu_labels(0, GPU0): 1.0, gpu_labels(1, GPU1): 0.0}
    assert gpu_labels(1, GPU1) not in got["sd35_gpu_temperature_celsius"]
    assert got["sd35_gpu_device_memory_total_bytes"][gpu_labels(1, GPU1)] == 143771 * 2**20  # read before it failed
    assert "GPU 1 (GPU-34f4428c-ff6c-aada-b002-b16896dbd402): NVML query failed: GPU is lost" in caplog.text


def test_xid_errors_are_counted_from_nvml_events():
    fake = h200()
    collector = GpuCollector(loader(fake), environ={"CUDA_VISIBLE_DEVICES": "0,1"}, cache_s=0)
    collector.wait_started(5)
    fake.xid_queue += [(1, 48), (1, 79)]
    got = samples(collector.collect())
    assert got["sd35_gpu_xid_errors_total"] == {gpu_labels(0, GPU0): 0, gpu_labels(1, GPU1): 2}
    assert got["sd35_gpu_last_xid"] == {gpu_labels(0, GPU0): 0, gpu_labels(1, GPU1): 79}
    assert samples(collector.collect())["sd35_gpu_xid_errors_total"][gpu_labels(1, GPU1)] == 2  # counted once


def test_nvml_is_read_at_most_once_per_cache_period():
    fake = h200()
    now = [100.0]
    collector = GpuCollector(loader(fake), environ={}, cache_s=1.0, clock=lambda: now[0])
    collector.wait_started(5)
    first = collector.collect()
    reads = fake.calls.count("nvmlDeviceGetTemperature")
    now[0] += 0.5
    assert collector.collect() is first and fake.calls.count("nvmlDeviceGetTemperature") == reads == 1
    now[0] += 0.6
    collector.collect()
    assert fake.calls.count("nvmlDeviceGetTemperature") == 2


def test_a_hung_driver_call_never_hangs_the_scrape():
    fake = h200()
    collector = GpuCollector(loader(fake), environ={}, cache_s=0, timeout_s=0.2)
    collector.wait_started(5)
    fake.block = threading.Event()
    begin = time.monotonic()
    assert samples(collector.collect()) == {"sd35_gpu_nvml_up": {(): 0.0}}
    assert samples(collector.collect()) == {"sd35_gpu_nvml_up": {(): 0.0}}
    assert time.monotonic() - begin < 2
    assert fake.calls.count("nvmlDeviceGetName") == 1  # the second scrape waited on the same read
    fake.block.set()
    deadline = time.monotonic() + 5
    while "sd35_gpu_up" not in samples(collector.collect()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert samples(collector.collect())["sd35_gpu_up"] == {gpu_labels(0, GPU0): 1.0}


def test_nvml_that_fails_to_start_warns_once_and_says_nvml_up_0(caplog):
    fake = h200()
    fake.init_error = pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH  # driver upgraded under a loaded module
    with caplog.at_level(logging.INFO, logger="sd35.service.gpu"):
        collector = GpuCollector(loader(fake), environ={})
        collector.wait_started(5)
        assert samples(collector.collect()) == {"sd35_gpu_nvml_up": {(): 0.0}}
        assert samples(collector.collect()) == {"sd35_gpu_nvml_up": {(): 0.0}}
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert [record.getMessage() for record in warnings] == [
        "no GPU metrics: NVML did not start: RM has detected an NVML/RM version mismatch."
    ]
    assert fake.calls.count("nvmlInit") == 1


def test_a_pinned_gpu_nvml_does_not_know_is_named():
    collector = GpuCollector(loader(h200()), environ={"CUDA_VISIBLE_DEVICES": "GPU-00000000-dead"})
    collector.wait_started(5)
    assert samples(collector.collect()) == {"sd35_gpu_nvml_up": {(): 0.0}}
    assert collector.unavailable == "GPU GPU-00000000-dead (CUDA_VISIBLE_DEVICES): Not Found"


@pytest.mark.parametrize(
    "environ, init_error",
    [({}, pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), ({"CUDA_VISIBLE_DEVICES": ""}, None)],
    ids=["no NVIDIA library", "GPUs hidden"],
)
def test_a_host_without_gpus_exports_none_and_warns_not(environ, init_error, caplog):
    fake = h200()
    fake.init_error = init_error
    with caplog.at_level(logging.WARNING, logger="sd35.service.gpu"):
        collector = GpuCollector(loader(fake), environ=environ)
        collector.wait_started(5)
        assert collector.collect() == []
    assert caplog.records == []


def test_the_service_serves_gpu_metrics_and_never_500s(tiny_model_dir):
    fake = h200()
    fake.gpus[0].errors["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_UNKNOWN
    collector = GpuCollector(loader(fake), environ={})
    app = create_app(make_config(tiny_model_dir), load_engine=FakeEngine().loader(), gpu_metrics=collector)
    with TestClient(app) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    assert families["sd35_gpu_up"].samples[0].value == 0  # the failed query
    assert families["sd35_gpu_temperature_celsius"].samples[0].labels == {"gpu": "0", "uuid": GPU0}
    assert families["sd35_gpu_xid_errors"].type == "counter"
    assert families["sd35_http_requests"].type == "counter"  # the service's own metrics are all still there


def test_the_service_on_this_cpu_machine_has_no_gpu_metrics(tiny_model_dir):
    """The real pynvml on a machine without NVIDIA's library: nothing NVML, nothing broken."""
    collector = GpuCollector(environ={})
    collector.wait_started(10)
    app = create_app(make_config(tiny_model_dir), load_engine=FakeEngine().loader(), gpu_metrics=collector)
    with TestClient(app) as client:
        begin = time.monotonic()
        text = client.get("/metrics").text
        assert time.monotonic() - begin < 1
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "sd35_model_ready" in names and not any(name in names for name in FAMILIES)
    assert "sd35_gpu_nvml_up" not in names


def load_nvml_check():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "nvml_check.py"
    spec = importlib.util.spec_from_file_location("nvml_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_h200_check_script_passes_the_recorded_h200(monkeypatch, tmp_path, capsys):
    """scripts/nvml_check.py as the lead runs it on the H200, here with pynvml answering from its recording."""
    nvml_check = load_nvml_check()
    monkeypatch.setitem(sys.modules, "pynvml", h200())
    monkeypatch.setattr("sys.argv", ["nvml_check.py", "--json", str(tmp_path / "nvml.json")])
    assert nvml_check.main() == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "nvml.json").read_text())
    assert document["problems"] == [] and [gpu["name"] for gpu in document["gpus"]] == ["NVIDIA H200"] * 2
    temperatures = next(m for m in document["metrics"] if m["name"] == "sd35_gpu_temperature_celsius")
    assert (temperatures["type"], [s["labels"]["gpu"] for s in temperatures["samples"]]) == ("gauge", ["0", "1"])


def test_the_h200_check_names_missing_and_mistyped_metrics():
    from prometheus_client import CollectorRegistry, generate_latest

    nvml_check = load_nvml_check()
    fake = h200()
    fake.gpus[1].temperature = None
    fake.gpus[0].remapped_rows = None
    registry = CollectorRegistry()
    collector = GpuCollector(loader(fake), environ={"CUDA_VISIBLE_DEVICES": "0,1"})
    collector.wait_started(5)
    registry.register(collector)
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    for family in families:
        if family.name == "sd35_gpu_power_watts":
            family.type = "counter"
    assert nvml_check.check(families, 2, ["NVIDIA H200"] * 2) == [
        "sd35_gpu_temperature_celsius: GPU 1 has 0 sample(s), expected 1",
        "sd35_gpu_power_watts: type counter, expected gauge",
        "sd35_gpu_remapped_rows: GPU 0 has 0 sample(s), expected 2",
        "sd35_gpu_row_remap_pending: GPU 0 has 0 sample(s), expected 1",
        "sd35_gpu_row_remap_failed: GPU 0 has 0 sample(s), expected 1",
    ]
