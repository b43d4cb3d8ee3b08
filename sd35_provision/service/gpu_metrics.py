"""Per-GPU metrics from NVML (``pynvml``, from the nvidia-ml-py package in every lock), for /metrics.

Which GPUs: the ones this process is given. CUDA_VISIBLE_DEVICES lists them (NVML
sees every GPU of the host whatever it says, so each entry is looked up: a
``GPU-…``/``MIG-…`` UUID by UUID, a number by NVML index); unset, the service
runs on device 0, so that is the one reported.

How: NVML is read on a thread of its own, never on the GPU worker's or the
event loop's, at most once per ``cache_s`` however many scrapes come, and a
scrape waits at most ``timeout_s`` for it (a hung driver call leaves
``sd35_gpu_nvml_up 0`` and the stale read running, never a hung /metrics).

What a host without NVIDIA's library (a CPU host) exports: none of these
metrics. A host with the library where NVML fails to start (driver/library
mismatch, driver not loaded, no permission): one warning in the log and
``sd35_gpu_nvml_up 0``. A query a GPU does not support (NVMLError_NotSupported,
e.g. ECC on a consumer card): that metric is absent for that GPU, never an error.

Labels: ``gpu`` (the NVML index, as nvidia-smi numbers the GPUs) and ``uuid``.
The host, group and service instance come from the scrape target's labels
(``sd35-provision prometheus`` writes them): a series' own ``instance`` label
would collide with the one Prometheus gives every target.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("sd35.service.gpu")

CACHE_S = 1.0  # Prometheus scrapes every 15 s or so; a dashboard's refresh burst reads NVML once
TIMEOUT_S = 2.0  # a scrape never waits longer than this for NVML
XID_EVENTS_PER_READ = 64  # drained per read; the rest wait for the next one

GPU_LABELS = ["gpu", "uuid"]

# name: (help, extra labels). Every family has GPU_LABELS first; one with no sample is left out.
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "sd35_gpu_up": ("1 while NVML answers for this GPU; 0 when a query failed (GPU lost, driver error).", []),
    "sd35_gpu_info": ("The GPU's model and NVIDIA driver (value 1).", ["name", "driver"]),
    "sd35_gpu_utilization_percent": ("Percent of the last sample period a kernel ran on the GPU.", []),
    "sd35_gpu_memory_utilization_percent": (
        "Percent of the last sample period device memory was read or written.",
        [],
    ),
    "sd35_gpu_device_memory_used_bytes": ("Device memory in use (all processes).", []),
    "sd35_gpu_device_memory_total_bytes": ("Device memory installed.", []),
    "sd35_gpu_temperature_celsius": ("GPU core temperature.", []),
    "sd35_gpu_power_watts": ("Power draw of the board.", []),
    "sd35_gpu_power_limit_watts": ("Power limit the driver enforces.", []),
    "sd35_gpu_sm_clock_hertz": ("SM (shader) clock now.", []),
    "sd35_gpu_throttle_reason": ("1 while this reason holds the clocks down (NVML's clock event reasons).", ["reason"]),
    "sd35_gpu_ecc_errors": (
        "ECC errors counted by NVML: volatile since the driver loaded, aggregate over the GPU's life.",
        ["error_type", "counter"],
    ),
    "sd35_gpu_retired_pages": ("Device memory pages retired, by cause (before Ampere).", ["cause"]),
    "sd35_gpu_retired_pages_pending": ("1 when a retired page waits for a GPU reset to take effect.", []),
    "sd35_gpu_remapped_rows": ("Device memory rows remapped, by error kind (Ampere and later).", ["error_type"]),
    "sd35_gpu_row_remap_pending": ("1 when a row remap waits for a GPU reset to take effect.", []),
    "sd35_gpu_row_remap_failed": ("1 when a row could not be remapped: the GPU needs service.", []),
    "sd35_gpu_last_xid": ("The last critical Xid error NVML reported since the service started; 0 none.", []),
}
XID_FAMILY = "sd35_gpu_xid_errors"  # a counter: sd35_gpu_xid_errors_total
XID_HELP = "Critical Xid errors NVML reported since the service started."
NVML_UP = "sd35_gpu_nvml_up"
NVML_UP_HELP = "1 when NVML started and found this process's GPUs; 0 when it did not (the log says why)."

# The label value of each clock event reason, and pynvml's name of its bit.
THROTTLE_REASONS = {
    "gpu_idle": "nvmlClocksEventReasonGpuIdle",
    "applications_clocks_setting": "nvmlClocksEventReasonApplicationsClocksSetting",
    "sw_power_cap": "nvmlClocksEventReasonSwPowerCap",
    "hw_slowdown": "nvmlClocksEventReasonHwSlowdown",
    "sync_boost": "nvmlClocksEventReasonSyncBoost",
    "sw_thermal_slowdown": "nvmlClocksEventReasonSwThermalSlowdown",
    "hw_thermal_slowdown": "nvmlClocksEventReasonHwThermalSlowdown",
    "hw_power_brake_slowdown": "nvmlClocksEventReasonHwPowerBrakeSlowdown",
    "display_clock_setting": "nvmlClocksEventReasonDisplayClockSetting",
}
ECC_ERROR_TYPES = {"corrected": "NVML_MEMORY_ERROR_TYPE_CORRECTED", "uncorrected": "NVML_MEMORY_ERROR_TYPE_UNCORRECTED"}
ECC_COUNTERS = {"volatile": "NVML_VOLATILE_ECC", "aggregate": "NVML_AGGREGATE_ECC"}
RETIREMENT_CAUSES = {
    "single_bit_ecc": "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS",
    "double_bit_ecc": "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR",
}
# Errors that mean "this GPU or driver cannot answer this query": the metric is left out.
ABSENT_ERRORS = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")
# NVML failing to start because there is no NVIDIA driver at all: a CPU host, nothing to report.
NO_DRIVER_ERRORS = ("NVMLError_LibraryNotFound",)


class NvmlUnavailable(Exception):
    """NVML could not be started, or this process's GPUs not found; says why."""


def pinned_gpus(environ: Mapping[str, str]) -> tuple[int | str, ...]:
    """The GPUs of this process as CUDA_VISIBLE_DEVICES gives them: NVML indexes (int) or UUIDs (str).

    Unset: device 0 (what the service runs on). Empty or ``-1``: none (GPUs hidden on purpose).
    CUDA stops at the first entry it cannot read; so does this.
    """
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return (0,)
    found: list[int | str] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry.startswith(("GPU-", "MIG-")):
            found.append(entry)
        elif entry.isdigit():
            found.append(int(entry))
        else:  # "", "-1", garbage: CUDA sees no further device
            break
    return tuple(found)


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML's
    uuid: str
    handle: Any


def _error_named(nvml: ModuleType, names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    return tuple(getattr(nvml, name) for name in names if hasattr(nvml, name))


class NvmlReader:
    """Reads the metrics of ``gpus`` from an initialised ``nvml`` module (pynvml, or a test's stand-in)."""

    def __init__(self, nvml: ModuleType, gpus: Iterable[Gpu]):
        self.nvml = nvml
        self.gpus = tuple(gpus)
        self.absent = _error_named(nvml, ABSENT_ERRORS)
        self.driver = self._driver_version()
        self.xid_counts = {gpu.index: 0 for gpu in self.gpus}
        self.last_xid = {gpu.index: 0 for gpu in self.gpus}
        self.events = self._register_xid_events()

    @classmethod
    def start(cls, nvml: ModuleType, wanted: tuple[int | str, ...]) -> NvmlReader:
        """``nvmlInit`` and the handles of ``wanted``; NvmlUnavailable saying what failed."""
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            raise NvmlUnavailable(f"NVML did not start: {error}") from error
        gpus = []
        for selector in wanted:
            try:
                if isinstance(selector, int):
                    handle = nvml.nvmlDeviceGetHandleByIndex(selector)
                else:
                    handle = nvml.nvmlDeviceGetHandleByUUID(selector)
                gpus.append(Gpu(nvml.nvmlDeviceGetIndex(handle), nvml.nvmlDeviceGetUUID(handle), handle))
            except nvml.NVMLError as error:
                raise NvmlUnavailable(f"GPU {selector} (CUDA_VISIBLE_DEVICES): {error}") from error
        return cls(nvml, gpus)

    def _driver_version(self) -> str:
        try:
            return str(self.nvml.nvmlSystemGetDriverVersion())
        except self.nvml.NVMLError:
            return ""

    def _register_xid_events(self) -> Any:
        """An event set for the GPUs' critical Xid errors; None where NVML offers none (then no Xid metrics)."""
        nvml = self.nvml
        try:
            events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as error:
            log.info("no Xid events from NVML: %s", error)
            return None
        registered = set()
        for gpu in self.gpus:
            try:
                nvml.nvmlDeviceRegisterEvents(gpu.handle, nvml.nvmlEventTypeXidCriticalError, events)
                registered.add(gpu.index)
            except nvml.NVMLError as error:
                log.info("GPU %d: no Xid events from NVML: %s", gpu.index, error)
        for index in set(self.xid_counts) - registered:
            del self.xid_counts[index], self.last_xid[index]
        return events if registered else None

    def read(self) -> list[Metric]:
        """One reading of every GPU; families without a sample are left out."""
        families = {
            name: GaugeMetricFamily(name, text, labels=[*GPU_LABELS, *extra])
            for name, (text, extra) in FAMILIES.items()
        }
        xid = CounterMetricFamily(XID_FAMILY, XID_HELP, labels=GPU_LABELS)
        self._drain_xid_events()
        for gpu in self.gpus:
            labels = [str(gpu.index), gpu.uuid]

            def add(name: str, value: float | None, *extra: str, labels: list[str] = labels) -> None:
                if value is not None and math.isfinite(value):
                    families[name].add_metric([*labels, *extra], float(value))

            try:
                self._read_gpu(gpu, add)
                add("sd35_gpu_up", 1)
            except self.nvml.NVMLError as error:
                # Lost GPU, driver trouble: what was read stays, and the GPU says it is not answering.
                log.warning("GPU %d (%s): NVML query failed: %s", gpu.index, gpu.uuid, error)
                add("sd35_gpu_up", 0)
            if gpu.index in self.xid_counts:
                xid.add_metric(labels, float(self.xid_counts[gpu.index]))
                add("sd35_gpu_last_xid", self.last_xid[gpu.index])
        up = GaugeMetricFamily(NVML_UP, NVML_UP_HELP, value=1.0)
        return [up, *(family for family in families.values() if family.samples), *([xid] if xid.samples else [])]

    def _query(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, or None when this GPU does not support it (other NVML errors propagate)."""
        try:
            return function(*args)
        except self.absent:
            return None

    def _read_gpu(self, gpu: Gpu, add: Callable[..., None]) -> None:
        nvml, handle, query = self.nvml, gpu.handle, self._query
        name = query(nvml.nvmlDeviceGetName, handle)
        add("sd35_gpu_info", 1, str(name or ""), self.driver)
        utilization = query(nvml.nvmlDeviceGetUtilizationRates, handle)
        if utilization is not None:
            add("sd35_gpu_utilization_percent", utilization.gpu)
            add("sd35_gpu_memory_utilization_percent", utilization.memory)
        memory = query(nvml.nvmlDeviceGetMemoryInfo, handle)
        if memory is not None:
            add("sd35_gpu_device_memory_used_bytes", memory.used)
            add("sd35_gpu_device_memory_total_bytes", memory.total)
        add("sd35_gpu_temperature_celsius", query(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU))
        add("sd35_gpu_power_watts", _scaled(query(nvml.nvmlDeviceGetPowerUsage, handle), 1e-3))  # milliwatts
        add("sd35_gpu_power_limit_watts", _scaled(query(nvml.nvmlDeviceGetEnforcedPowerLimit, handle), 1e-3))
        add("sd35_gpu_sm_clock_hertz", _scaled(query(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM), 1e6))
        reasons = query(nvml.nvmlDeviceGetCurrentClocksEventReasons, handle)
        if reasons is not None:
            for reason, bit in THROTTLE_REASONS.items():
                add("sd35_gpu_throttle_reason", 1 if reasons & getattr(nvml, bit) else 0, reason)
        for error_type, error_constant in ECC_ERROR_TYPES.items():
            for counter, counter_constant in ECC_COUNTERS.items():
                count = query(
                    nvml.nvmlDeviceGetTotalEccErrors,
                    handle,
                    getattr(nvml, error_constant),
                    getattr(nvml, counter_constant),
                )
                add("sd35_gpu_ecc_errors", count, error_type, counter)
        for cause, constant in RETIREMENT_CAUSES.items():
            pages = query(nvml.nvmlDeviceGetRetiredPages, handle, getattr(nvml, constant))
            add("sd35_gpu_retired_pages", None if pages is None else len(pages), cause)
        add("sd35_gpu_retired_pages_pending", query(nvml.nvmlDeviceGetRetiredPagesPendingStatus, handle))
        rows = query(nvml.nvmlDeviceGetRemappedRows, handle)
        if rows is not None:
            corrected, uncorrected, pending, failed = rows
            add("sd35_gpu_remapped_rows", corrected, "corrected")
            add("sd35_gpu_remapped_rows", uncorrected, "uncorrected")
            add("sd35_gpu_row_remap_pending", 1 if pending else 0)
            add("sd35_gpu_row_remap_failed", 1 if failed else 0)

    def _drain_xid_events(self) -> None:
        """Count the critical Xid errors NVML queued since the last read (a wait of 0 ms: never blocks)."""
        if self.events is None:
            return
        nvml = self.nvml
        for _ in range(XID_EVENTS_PER_READ):
            try:
                event = nvml.nvmlEventSetWait(self.events, 0)
            except nvml.NVMLError_Timeout:
                return
            except nvml.NVMLError as error:
                log.warning("reading NVML's Xid events failed: %s", error)
                return
            try:
                index = nvml.nvmlDeviceGetIndex(event.device)
            except nvml.NVMLError:
                continue
            if index in self.xid_counts and event.eventType & nvml.nvmlEventTypeXidCriticalError:
                self.xid_counts[index] += 1
                self.last_xid[index] = int(event.eventData)
                log.warning("GPU %d: Xid %d", index, event.eventData)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _import_pynvml() -> ModuleType:
    import pynvml

    return pynvml


class GpuCollector:
    """A prometheus_client collector of NVML metrics: bounded, cached reads on a thread of their own."""

    def __init__(
        self,
        load_nvml: Callable[[], ModuleType] = _import_pynvml,
        environ: Mapping[str, str] | None = None,
        cache_s: float = CACHE_S,
        timeout_s: float = TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at = -math.inf
        self._pending: Future[list[Metric]] | None = None
        wanted = pinned_gpus(os.environ if environ is None else environ)
        # Started at once, off the caller's thread: nvmlInit can take seconds without persistence mode.
        self.unavailable: str | None = None  # why NVML could not be used, when it could not
        self._reader: Future[NvmlReader | None] = self._in_thread(lambda: self._start(load_nvml, wanted))

    @staticmethod
    def _in_thread(work: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(work())
            except BaseException as error:  # handed to whoever waits on it
                future.set_exception(error)

        # A daemon: a driver call that never returns must not keep the service from stopping.
        threading.Thread(target=run, name="sd35-nvml", daemon=True).start()
        return future

    def _start(self, load_nvml: Callable[[], ModuleType], wanted: tuple[int | str, ...]) -> NvmlReader | None:
        """The reader; None without one: no GPU to report (no NVIDIA library, GPUs hidden), or NVML failed
        (``unavailable`` says why, and the log once)."""
        if not wanted:
            log.info("CUDA_VISIBLE_DEVICES hides every GPU: no GPU metrics")
            return None
        try:
            nvml = load_nvml()
            return NvmlReader.start(nvml, wanted)
        except NvmlUnavailable as error:
            if isinstance(error.__cause__, _error_named(nvml, NO_DRIVER_ERRORS)):
                log.info("no NVIDIA driver library: no GPU metrics")
                return None
            reason = str(error)
        except ImportError as error:
            reason = f"pynvml (nvidia-ml-py) is not installed: {error}"
        except Exception as error:  # whatever NVML or its binding does, the service serves on
            reason = f"NVML failed to start: {error!r}"
        self.unavailable = reason
        log.warning("no GPU metrics: %s", reason)
        return None

    def describe(self) -> list[Metric]:
        # Names are decided per read (absent when unsupported); nothing to check at registration.
        return []

    def collect(self) -> list[Metric]:
        with self._lock:
            try:
                reader = self._reader.result(timeout=self.timeout_s)
            except FutureTimeout:  # NVML still starting
                return [self._nvml_up(0)]
            if reader is None:
                return [self._nvml_up(0)] if self.unavailable else []
            now = self.clock()
            if now - self._cached_at < self.cache_s:
                return self._cached
            if self._pending is None:
                self._pending = self._in_thread(reader.read)
            try:
                families = self._pending.result(timeout=self.timeout_s)
            except FutureTimeout:
                log.warning("NVML did not answer within %.1f s; GPU metrics left out of this scrape", self.timeout_s)
                return [self._nvml_up(0)]
            except Exception as error:  # a scrape never fails because NVML did
                log.warning("reading GPU metrics failed: %s", error)
                families = [self._nvml_up(0)]
            finally:
                if self._pending is not None and self._pending.done():
                    self._pending = None
            self._cached, self._cached_at = families, now
            return families

    @staticmethod
    def _nvml_up(value: float) -> Metric:
        return GaugeMetricFamily(NVML_UP, NVML_UP_HELP, value=value)

    def wait_started(self, timeout_s: float | None = None) -> None:
        """Until NVML has started or failed (for tests and scripts that read at once)."""
        self._reader.result(timeout=timeout_s)
