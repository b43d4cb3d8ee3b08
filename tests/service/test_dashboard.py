"""docs/grafana-dashboard.json graphs only series the service exports (names as /metrics writes them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sd35_provision.service.gpu_metrics import GpuCollector
from sd35_provision.service.metrics import ServiceMetrics
from tests.service.nvml_fakes import FakeNvml, driver_from_smi_xml, gpus_from_smi_xml, loader

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
H200_XML = Path(__file__).resolve().parents[1] / "fixtures" / "h200" / "nvidia-smi-q-x.xml"


def exported_series() -> set[str]:
    """Every sample name of an H200 service's /metrics (recorded facts), histograms' _bucket included."""
    fake = FakeNvml(gpus_from_smi_xml(H200_XML), driver=driver_from_smi_xml(H200_XML))
    gpu = GpuCollector(loader(fake), environ={})
    gpu.wait_started(5)
    metrics = ServiceMetrics(queue_depth=lambda: 0, in_progress=lambda: 0, gpu=gpu)
    metrics.generation.observe(1.0)
    metrics.images.inc()
    metrics.errors.labels("invalid").inc()
    text = metrics.render()[0].decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_panel_queries_exported_series_through_the_chosen_data_source():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_series()
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 10
    used = {name for query in queries for name in re.findall(r"\bsd35_[a-z_0-9]+", query)}
    assert used and used <= exported, sorted(used - exported)
    assert {"sd35_gpu_utilization_percent", "sd35_gpu_power_watts", "sd35_images_generated_total"} <= used
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all('host=~"$host"' in target["expr"] for target in panel["targets"]), panel["title"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["host"]["definition"] == "label_values(sd35_model_ready, host)"
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
