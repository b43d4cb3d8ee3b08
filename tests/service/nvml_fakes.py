"""A stand-in for the ``pynvml`` module that answers from recorded facts (``nvidia-smi -q -x``).

Only the NVML calls are replaced: constants, exception classes and result
structs are the real ones from the installed pynvml (nvidia-ml-py), and every
replaced function has the real one's signature (tests/service/test_gpu_metrics.py
checks), so code that works against this works against pynvml the same way.
What nvidia-smi shows as ``N/A`` raises ``NVMLError_NotSupported``, as NVML does.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

# nvidia-smi's <clocks_event_reasons> children and pynvml's bits.
SMI_REASONS = {
    "clocks_event_reason_gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
    "clocks_event_reason_applications_clocks_setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "clocks_event_reason_sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "clocks_event_reason_hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "clocks_event_reason_hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "clocks_event_reason_hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    "clocks_event_reason_sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "clocks_event_reason_sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "clocks_event_reason_display_clocks_setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
}
NOT_SUPPORTED = None  # a value nvidia-smi shows as N/A


@dataclass
class FakeGpu:
    uuid: str
    name: str
    memory_total: int  # bytes
    memory_used: int
    utilization: tuple[int, int] | None  # gpu %, memory %
    temperature: int | None
    power_mw: int | None
    power_limit_mw: int | None
    sm_clock_mhz: int | None
    event_reasons: int | None
    ecc: dict[tuple[int, int], int] | None  # (error type, counter type) -> count
    retired_pages: dict[int, list[int]] | None  # cause -> page addresses
    retired_pending: int | None
    remapped_rows: tuple[int, int, int, int] | None  # corrected, uncorrected, pending, failed
    # function name -> NVML error code it raises (a lost GPU, a driver error), beyond N/A
    errors: dict[str, int] = field(default_factory=dict)


def _number(text: str | None) -> float | None:
    """``'78.29 W'`` -> 78.29; ``'N/A'`` -> None."""
    if text is None or text.strip() in ("N/A", "", "[N/A]"):
        return None
    return float(text.split()[0])


def gpus_from_smi_xml(path: Path) -> list[FakeGpu]:
    """The GPUs of a recorded ``nvidia-smi -q -x``, in its order (NVML's index order)."""
    found = []
    for gpu in ET.parse(path).getroot().findall("gpu"):

        def text(where: str, gpu: ET.Element = gpu) -> str | None:
            return gpu.findtext(where)

        def mib(where: str) -> int:
            return int(_number(text(where)) or 0) * 2**20

        def watts_as_mw(where: str) -> int | None:
            value = _number(text(where))
            return None if value is None else round(value * 1000)

        utilization = (_number(text("utilization/gpu_util")), _number(text("utilization/memory_util")))
        reasons = gpu.find("clocks_event_reasons")
        ecc = None
        if text("ecc_mode/current_ecc") == "Enabled":
            ecc = {}
            for counter_name, counter in (
                ("volatile", pynvml.NVML_VOLATILE_ECC),
                ("aggregate", pynvml.NVML_AGGREGATE_ECC),
            ):
                errors = gpu.find(f"ecc_errors/{counter_name}")
                assert errors is not None
                counts = {child.tag: int(child.text or 0) for child in errors if (child.text or "").isdigit()}
                # NVML's total is every memory location's (SRAM and DRAM) errors of that type.
                ecc[(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, counter)] = sum(
                    count for tag, count in counts.items() if tag.endswith("_correctable")
                )
                ecc[(pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counter)] = sum(
                    count for tag, count in counts.items() if "_uncorrectable" in tag
                )
        retired_count = text("retired_pages/multiple_single_bit_retirement/retired_count")
        rows = gpu.find("remapped_rows")
        found.append(
            FakeGpu(
                uuid=text("uuid") or "",
                name=text("product_name") or "",
                memory_total=mib("fb_memory_usage/total"),
                memory_used=mib("fb_memory_usage/used"),
                utilization=None if None in utilization else (int(utilization[0] or 0), int(utilization[1] or 0)),
                temperature=None
                if _number(text("temperature/gpu_temp")) is None
                else int(_number(text("temperature/gpu_temp")) or 0),
                power_mw=watts_as_mw("gpu_power_readings/instant_power_draw"),
                power_limit_mw=watts_as_mw("gpu_power_readings/current_power_limit"),
                sm_clock_mhz=None
                if _number(text("clocks/sm_clock")) is None
                else int(_number(text("clocks/sm_clock")) or 0),
                event_reasons=None
                if reasons is None
                else sum(bit for tag, bit in SMI_REASONS.items() if reasons.findtext(tag) == "Active"),
                ecc=ecc,
                retired_pages=None if _number(retired_count) is None else {0: [], 1: []},
                retired_pending=None if _number(text("retired_pages/pending_retirement")) is None else 0,
                remapped_rows=None
                if rows is None or _number(rows.findtext("remapped_row_corr")) is None
                else (
                    int(rows.findtext("remapped_row_corr") or 0),
                    int(rows.findtext("remapped_row_unc") or 0),
                    int(rows.findtext("remapped_row_pending") == "Yes"),
                    int(rows.findtext("remapped_row_failure") == "Yes"),
                ),
            )
        )
    return found


def driver_from_smi_xml(path: Path) -> str:
    return ET.parse(path).getroot().findtext("driver_version") or ""


class FakeNvml:
    """``pynvml`` with its NVML calls answered from ``gpus`` (handles are the FakeGpu objects)."""

    def __init__(self, gpus: list[FakeGpu], driver: str = "", init_error: int | None = None):
        self.gpus = gpus
        self.driver = driver
        self.init_error = init_error
        self.calls: list[str] = []
        self.xid_queue: list[tuple[int, int]] = []  # (gpu index, xid) waiting in the event set
        self.xid_supported = True
        self.block: threading.Event | None = None  # set: queries wait for it (a hung driver)

    def __getattr__(self, name: str) -> Any:
        # Constants, exception classes, structs: the real module's.
        return getattr(pynvml, name)

    def _answer(self, name: str, handle: FakeGpu | None, value: Any) -> Any:
        self.calls.append(name)
        if self.block is not None:
            self.block.wait(10)
        if handle is not None and name in handle.errors:
            raise pynvml.NVMLError(handle.errors[name])
        if value is NOT_SUPPORTED:
            raise pynvml.NVMLError_NotSupported()
        return value

    # The NVML calls the service makes, each with pynvml's signature.
    def nvmlInit(self):
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlSystemGetDriverVersion(self):
        return self._answer("nvmlSystemGetDriverVersion", None, self.driver)

    def nvmlDeviceGetCount(self):
        return self._answer("nvmlDeviceGetCount", None, len(self.gpus))

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        return self._answer("nvmlDeviceGetHandleByIndex", None, self.gpus[index])

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return self._answer("nvmlDeviceGetHandleByUUID", None, gpu)
        raise pynvml.NVMLError_NotFound()

    def nvmlDeviceGetIndex(self, handle):
        return self._answer("nvmlDeviceGetIndex", handle, self.gpus.index(handle))

    def nvmlDeviceGetUUID(self, handle):
        return self._answer("nvmlDeviceGetUUID", handle, handle.uuid)

    def nvmlDeviceGetName(self, handle):
        return self._answer("nvmlDeviceGetName", handle, handle.name)

    def nvmlDeviceGetUtilizationRates(self, handle):
        rates = handle.utilization
        value = None if rates is None else pynvml.c_nvmlUtilization_t(gpu=rates[0], memory=rates[1])
        return self._answer("nvmlDeviceGetUtilizationRates", handle, value)

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        free = handle.memory_total - handle.memory_used
        value = pynvml.c_nvmlMemory_t(total=handle.memory_total, free=free, used=handle.memory_used)
        return self._answer("nvmlDeviceGetMemoryInfo", handle, value)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._answer("nvmlDeviceGetTemperature", handle, handle.temperature)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._answer("nvmlDeviceGetPowerUsage", handle, handle.power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._answer("nvmlDeviceGetEnforcedPowerLimit", handle, handle.power_limit_mw)

    def nvmlDeviceGetClockInfo(self, handle, type):
        assert type == pynvml.NVML_CLOCK_SM
        return self._answer("nvmlDeviceGetClockInfo", handle, handle.sm_clock_mhz)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._answer("nvmlDeviceGetCurrentClocksEventReasons", handle, handle.event_reasons)

    def nvmlDeviceGetTotalEccErrors(self, handle, errorType, counterType):
        value = None if handle.ecc is None else handle.ecc[(errorType, counterType)]
        return self._answer("nvmlDeviceGetTotalEccErrors", handle, value)

    def nvmlDeviceGetRetiredPages(self, device, sourceFilter):
        value = None if device.retired_pages is None else device.retired_pages[sourceFilter]
        return self._answer("nvmlDeviceGetRetiredPages", device, value)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device):
        return self._answer("nvmlDeviceGetRetiredPagesPendingStatus", device, device.retired_pending)

    def nvmlDeviceGetRemappedRows(self, device):
        return self._answer("nvmlDeviceGetRemappedRows", device, device.remapped_rows)

    def nvmlEventSetCreate(self):
        return self._answer("nvmlEventSetCreate", None, "event-set")

    def nvmlDeviceRegisterEvents(self, handle, eventTypes, eventSet):
        assert eventTypes == pynvml.nvmlEventTypeXidCriticalError and eventSet == "event-set"
        self._answer("nvmlDeviceRegisterEvents", handle, True if self.xid_supported else NOT_SUPPORTED)

    def nvmlEventSetWait(self, eventSet, timeoutms):
        self.calls.append("nvmlEventSetWait")
        if not self.xid_queue:
            raise pynvml.NVMLError_Timeout()
        index, xid = self.xid_queue.pop(0)
        data = pynvml.c_nvmlEventData_t(eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=xid)
        return _Event(data, self.gpus[index])


@dataclass
class _Event:
    """A c_nvmlEventData_t whose ``device`` is a fake handle (a ctypes field cannot hold one)."""

    data: Any
    device: FakeGpu

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)


def loader(fake: FakeNvml) -> Callable[[], Any]:
    return lambda: fake
