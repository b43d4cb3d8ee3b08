"""Reboots as an operation, without a host: when a host needs one, the order of the steps, the bounds, the messages.

``reboot_host`` talks to a fake ``RebootableHost`` that records every call into one log shared with the
fake gateway drain and a fake clock, so the order of drain, reboot, wait, checks and undrain is asserted
as it happened. The same steps over real SSH, on a container host that really reboots, are in
tests/integration/test_fleet_ops.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from sd35_provision.errors import HostError
from sd35_provision.facts.driver import NvidiaDriverState
from sd35_provision.facts.reboot import RebootSignals, RebootState, reboot_needed
from sd35_provision.hostlock import HostLocked
from sd35_provision.hostspec.settings import HostSettings
from sd35_provision.reboots import (
    Clock,
    RebootFailed,
    RebootOptions,
    SshHost,
    reboot_host,
    reboot_reason,
    required_note,
    wait_active_command,
)
from sd35_provision.report import HostOutcome
from sd35_provision.workflow import _reboot_if_needed

OLD, NEW = "11111111-old", "22222222-new"


@dataclass
class FakeClock:
    t: float = 0.0

    def clock(self) -> Clock:
        return Clock(now=lambda: self.t, sleep=self.sleep)

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class FakeHost:
    """A host whose boot ids after the reboot are scripted: None is "no SSH answer"."""

    log: list[str]
    clock: FakeClock
    after_reboot: list[str | None] = field(default_factory=lambda: [None, None, NEW])
    driver: str | None = None
    service: str | None = None
    smoke: str | None = None
    name: str = "gpu-a1"
    rebooted: bool = False
    lock: str | None = None  # why the run's lock could not be taken back (another run has it)

    def boot_id(self) -> str | None:
        self.clock.t += 1  # every attempt takes a while
        if not self.rebooted:
            return OLD
        answer = self.after_reboot.pop(0) if len(self.after_reboot) > 1 else self.after_reboot[0]
        self.log.append(f"boot id {answer}")
        return answer

    def request_reboot(self) -> None:
        self.log.append("reboot")
        self.rebooted = True

    def disconnect(self) -> None:
        self.log.append("disconnect")

    def lock_again(self) -> str | None:
        self.log.append("lock")
        return self.lock

    def driver_problem(self) -> str | None:
        self.log.append("driver check")
        return self.driver

    def service_problem(self, timeout_s: float) -> str | None:
        self.log.append(f"service within {timeout_s:.0f}s")
        return self.service

    def smoke_problem(self) -> str | None:
        self.log.append("smoke test")
        return self.smoke


def recording_drain(log: list[str]):
    @contextmanager
    def drain(hosts: Sequence[str]) -> Iterator[None]:
        log.append(f"drain {','.join(hosts)}")
        try:
            yield
        except BaseException as error:
            log.append(f"still drained: {error}")
            raise
        log.append(f"undrain {','.join(hosts)}")

    return drain


def reboot(host: FakeHost, timeout_s: float = 600, gpu: bool = True, drain=None) -> str:
    return reboot_host(
        host,
        "/var/run/reboot-required exists",
        timeout_s=timeout_s,
        gpu=gpu,
        drain=drain or recording_drain(host.log),
        clock=host.clock.clock(),
    )


def test_a_gpu_host_is_drained_rebooted_checked_and_undrained_in_that_order() -> None:
    log: list[str] = []
    host = FakeHost(log, FakeClock())
    note = reboot(host)
    assert log == [
        "drain gpu-a1",
        "reboot",
        "disconnect",
        "boot id None",  # going down
        "boot id None",
        f"boot id {NEW}",
        "lock",  # the run's lock went with the boot: taken back before anything is checked
        "driver check",
        f"service within {600 - 7:.0f}s",  # what is left of the bound (7 s gone), not a new one
        "smoke test",
        "undrain gpu-a1",
    ]
    assert note == "rebooted (/var/run/reboot-required exists); back and smoke-tested after 7s"


def test_a_cpu_host_skips_the_driver_check() -> None:
    log: list[str] = []
    reboot(FakeHost(log, FakeClock(), after_reboot=[NEW]), gpu=False)
    assert "driver check" not in log and log[-2:] == ["smoke test", "undrain gpu-a1"]


def test_a_host_that_keeps_its_boot_id_was_not_rebooted_and_times_out() -> None:
    log: list[str] = []
    host = FakeHost(log, FakeClock(), after_reboot=[OLD])
    with pytest.raises(RebootFailed) as failed:
        reboot(host, timeout_s=30)
    assert str(failed.value) == (
        "gpu-a1: reboot: wait for SSH: not back within 30s: it still runs the boot it had (the reboot did not happen)"
    )
    assert failed.value.step == "reboot: wait for SSH" and isinstance(failed.value, HostError)
    assert host.clock.t <= 30 + 3  # bounded: one poll past the deadline at most
    # Nothing after the wait ran, and the gateway was told it failed: the host stays out of rotation.
    assert not {"driver check", "smoke test", "undrain gpu-a1"} & set(log)
    assert log[-1].startswith("still drained: gpu-a1: reboot: wait for SSH")


def test_a_host_that_never_answers_again_times_out_naming_it() -> None:
    host = FakeHost([], FakeClock(), after_reboot=[None])
    with pytest.raises(RebootFailed, match=r"^gpu-a1: reboot: wait for SSH: not back within 120s: no SSH answer$"):
        reboot(host, timeout_s=120)


@pytest.mark.parametrize(
    "broken, step, message",
    [
        (
            {"driver": "nvidia-smi failed: Failed to initialize NVML: Driver/library version mismatch"},
            "driver check",
            "the NVIDIA driver does not work after the reboot: nvidia-smi failed: Failed to initialize NVML: "
            "Driver/library version mismatch",
        ),
        (
            {"service": "sd35-inference.service is failed 590s after the reboot"},
            "service",
            "sd35-inference.service is failed 590s after the reboot",
        ),
        ({"smoke": "image is blank"}, "smoke test", "smoke test failed after the reboot: image is blank"),
    ],
)
def test_a_failed_check_after_the_reboot_names_host_and_step(broken: dict, step: str, message: str) -> None:
    log: list[str] = []
    host = replace(FakeHost(log, FakeClock()), **broken)
    with pytest.raises(RebootFailed) as failed:
        reboot(host)
    assert str(failed.value) == f"gpu-a1: reboot: {step}: {message}"
    assert "\n" not in str(failed.value)
    assert "undrain gpu-a1" not in log


def test_a_run_that_took_the_lock_during_the_reboot_stops_this_one_before_its_checks() -> None:
    log: list[str] = []
    holder = "bob@ctl2 pid 77 since 12:03:00 UTC (apply)"
    host = FakeHost(log, FakeClock(), lock=f"another run took the run lock while the host rebooted: {holder}")
    with pytest.raises(RebootFailed) as failed:
        reboot(host)
    assert str(failed.value) == (
        f"gpu-a1: reboot: lock: another run took the run lock while the host rebooted: {holder}; "
        "the driver check and smoke test did not run"
    )
    assert log[-2:] == ["lock", f"still drained: {failed.value}"]  # nothing checked, the host stays drained


def test_the_ssh_host_takes_the_lock_back_and_names_who_has_it_instead() -> None:
    settings = HostSettings(name="gpu-a1", address="127.0.0.1")
    taken: list[str] = []
    assert SshHost(CommandHost([]), settings).lock_again() is None  # type: ignore[arg-type]  # a run without a lock
    assert SshHost(CommandHost([]), settings, take_lock=lambda: taken.append("again")).lock_again() is None  # type: ignore[arg-type]
    assert taken == ["again"]

    def refused() -> None:
        holder = "bob@ctl2 pid 77 since 12:03:00 UTC (apply)"
        raise HostLocked("gpu-a1", "lock", f"locked by {holder}; --wait-lock S to wait", holder=holder)

    def broken() -> None:
        raise HostLocked("gpu-a1", "lock", "could not take the run lock /run/lock/sd35-provision.lock: sudo: denied")

    assert SshHost(CommandHost([]), settings, take_lock=refused).lock_again() == (  # type: ignore[arg-type]
        "another run took the run lock while the host rebooted: bob@ctl2 pid 77 since 12:03:00 UTC (apply)"
    )
    assert SshHost(CommandHost([]), settings, take_lock=broken).lock_again() == (  # type: ignore[arg-type]
        "could not take the run lock /run/lock/sd35-provision.lock: sudo: denied"
    )


def test_a_gateway_that_cannot_drain_stops_before_the_reboot() -> None:
    log: list[str] = []

    @contextmanager
    def refusing(hosts: Sequence[str]) -> Iterator[None]:
        raise ConnectionRefusedError("gateway 10.0.0.5:9999 refused the drain")
        yield

    with pytest.raises(RebootFailed, match=r"^gpu-a1: reboot: drain: gateway 10.0.0.5:9999 refused the drain$"):
        reboot(FakeHost(log, FakeClock()), drain=refusing)
    assert "reboot" not in log


def test_an_unreadable_boot_id_stops_before_anything() -> None:
    log: list[str] = []
    host = FakeHost(log, FakeClock())
    host.boot_id = lambda: None  # type: ignore[method-assign]
    with pytest.raises(RebootFailed, match="could not read the boot id before rebooting"):
        reboot(host)
    assert log == []


def test_without_a_gateway_the_drain_is_a_no_op() -> None:
    log: list[str] = []
    note = reboot_host(FakeHost(log, FakeClock()), "why", timeout_s=60, gpu=False, clock=FakeClock().clock())
    assert log[0] == "reboot" and note.startswith("rebooted (why)")


def test_who_may_reboot_and_how_long_they_get() -> None:
    settings = HostSettings(name="a", address="127.0.0.1")
    allowed = replace(settings, gpu=replace(settings.gpu, driver=replace(settings.gpu.driver, allow_reboot=True)))
    assert not RebootOptions().allowed_for(settings)
    assert RebootOptions(allowed=True).allowed_for(settings)
    assert RebootOptions().allowed_for(allowed)  # gpu.driver.allow_reboot, per host
    assert RebootOptions().timeout_for(settings) == 600
    assert RebootOptions(timeout_s=90).timeout_for(settings) == 90
    assert required_note("/var/run/reboot-required exists") == (
        "reboot required: run apply --reboot (/var/run/reboot-required exists)"
    )


# -- the decision: reboot_needed over the facts ---------------------------------------------------


def signals(**values) -> RebootSignals:
    return RebootSignals(boot_id=NEW, required_file=False, **values)


def test_nothing_to_reboot_for() -> None:
    assert reboot_needed(signals()) is None
    assert (
        reboot_needed(signals(module_loaded="570.133.20", module_installed="570.133.20", library="570.133.20")) is None
    )


def test_debians_reboot_required_file_with_its_packages() -> None:
    assert reboot_needed(replace(signals(), required_file=True)) == "/var/run/reboot-required exists"
    assert reboot_needed(replace(signals(), required_file=True, required_by=("linux-image-6.1.0-28-amd64",))) == (
        "/var/run/reboot-required exists (for linux-image-6.1.0-28-amd64)"
    )


def test_a_driver_upgraded_under_its_loaded_module() -> None:
    assert reboot_needed(signals(module_loaded="550.127.05", module_installed="570.133.20", library="570.133.20")) == (
        "NVIDIA kernel module 550.127.05 is loaded, its library is 570.133.20"
    )
    # A new driver whose module nothing loaded yet (just installed).
    assert reboot_needed(signals(module_installed="570.133.20")) == (
        "NVIDIA kernel module 570.133.20 is installed, none is loaded"
    )


def test_every_reason_at_once_and_the_driver_layers_fact() -> None:
    mismatch = "nvidia-smi: Driver/library version mismatch"
    both = replace(signals(module_loaded="550.127.05", library="570.133.20"), required_file=True)
    # The driver facts compare the same versions: said once, by the module/library comparison.
    assert reboot_needed(both, driver_mismatch=mismatch) == (
        "/var/run/reboot-required exists; NVIDIA kernel module 550.127.05 is loaded, its library is 570.133.20"
    )
    assert reboot_needed(signals(), driver_mismatch=mismatch) == mismatch
    flagged = replace(signals(), required_file=True)
    assert reboot_needed(flagged, driver_mismatch=mismatch) == f"/var/run/reboot-required exists; {mismatch}"


# -- the host-side commands, run here ---------------------------------------------------------------


def test_the_fact_reads_this_machines_boot_id() -> None:
    fact = RebootState()
    result = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True, check=True)
    value = fact.process(result.stdout.splitlines())
    with open("/proc/sys/kernel/random/boot_id") as boot_id:
        assert value.boot_id == boot_id.read().strip()


def test_waiting_for_a_unit_gives_up_at_its_bound_with_its_state() -> None:
    # A systemctl that says what a failed unit says (this machine has no systemd).
    systemctl = 'systemctl() { [ "$2" = --quiet ] && return 3; echo failed; return 3; }; '
    result = subprocess.run(
        ["sh", "-c", systemctl + wait_active_command("sd35-inference.service", 1)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "sd35-inference.service is failed 1s after the reboot"


# -- the one question plan, apply and status ask: reboot_reason on recorded facts ----------------

FACT_CASES = Path(__file__).parent.parent / "facts"
H200_MODULE = (  # tests/fixtures/h200/driver-facts.txt: the open module, no modinfo, no libnvidia-ml under ldconfig
    "module=NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)  "
)


def recorded(fact: str, case: str) -> list[str]:
    return json.loads((FACT_CASES / fact / f"{case}.json").read_text())["output"]


def h200_nvml_mismatch() -> dict[str, list[str]]:
    """The lent H200 VM with its library upgraded under the loaded module: only nvidia-smi's NVML error shows it
    (no library the reboot fact finds, no modinfo), as the driver fact records it."""
    driver = [line for line in recorded("NvidiaDriverState", "two_h200_vm") if not line.startswith("fabric=")]
    return {
        "RebootState": ["boot_id=" + NEW, "required=", H200_MODULE, "installed=", "library="],
        "NvidiaDriverState": [*driver, "nvml=Failed to initialize NVML: Driver/library version mismatch"],
    }


@dataclass
class RecordedHost:
    """A pyinfra host answering facts from recorded output (parsed by the fact), in a run with one outcome."""

    outputs: dict[str, list[str]]
    name: str = "gpu-a1"
    asked: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        run = SimpleNamespace(outcomes={self.name: HostOutcome(name=self.name)}, take_lock_again=self.take_lock_again)
        self.state = SimpleNamespace(sd35_run=run)

    def take_lock_again(self, host, settings) -> None:
        self.asked.append("lock again")

    def get_fact(self, fact, **kwargs):
        self.asked.append(fact.__name__)
        return fact().process(self.outputs[fact.__name__])


MISMATCH_REASON = (
    "NVIDIA driver/library version mismatch: nvidia module 580.159.04 loaded, library another version installed"
)


def test_a_mismatch_only_nvml_shows_is_a_reboot_for_plan_status_and_after_apply_alike() -> None:
    settings = HostSettings(name="gpu-a1", address="127.0.0.1")
    host = RecordedHost(h200_nvml_mismatch())
    # The reboot fact alone sees nothing: the module's library is not where ldconfig looks.
    assert reboot_needed(RebootState().process(host.outputs["RebootState"])) is None
    # plan and status pass the driver facts they read; apply's after-apply check reads them itself.
    driver = NvidiaDriverState().process(host.outputs["NvidiaDriverState"])
    assert reboot_reason(host, settings, driver) == MISMATCH_REASON  # type: ignore[arg-type]
    assert reboot_reason(host, settings) == MISMATCH_REASON  # type: ignore[arg-type]

    after_apply = RecordedHost(h200_nvml_mismatch())
    _reboot_if_needed(RebootOptions(), None)(after_apply, settings)  # type: ignore[arg-type]
    assert after_apply.asked == ["NvidiaDriverState", "RebootState"]
    assert after_apply.state.sd35_run.outcomes["gpu-a1"].notes == [required_note(MISMATCH_REASON)]


def test_a_cpu_host_or_a_gateway_asks_no_driver_facts() -> None:
    settings = HostSettings(name="gpu-a1", address="127.0.0.1")
    cpu = replace(settings, gpu=replace(settings.gpu, accelerator="cpu"))
    host = RecordedHost({"RebootState": recorded("RebootState", "kernel_update_pending")})
    reason = "/var/run/reboot-required exists (for linux-image-6.1.0-28-amd64, libc6)"
    assert reboot_reason(host, cpu) == reason  # type: ignore[arg-type]
    assert host.asked == ["RebootState"]
    healthy = RecordedHost({"RebootState": recorded("RebootState", "cpu_host")})
    _reboot_if_needed(RebootOptions(), None)(healthy, cpu)  # type: ignore[arg-type]
    assert healthy.state.sd35_run.outcomes["gpu-a1"].notes == []


# -- gpu.driver.allow_reboot: the driver layer only says so; the after-apply path reboots -----------


def allow_reboot(settings: HostSettings) -> HostSettings:
    return replace(settings, gpu=replace(settings.gpu, driver=replace(settings.gpu.driver, allow_reboot=True)))


def just_installed() -> dict[str, list[str]]:
    """What the facts read after the driver layer installed 570 under a loaded 550 (recorded cases)."""
    return {
        "RebootState": recorded("RebootState", "driver_upgraded_under_loaded_module"),
        "NvidiaDriverState": recorded("NvidiaDriverState", "upgraded_not_rebooted"),
    }


def test_allow_reboot_reboots_after_the_apply_drained_and_with_its_timeout(monkeypatch) -> None:
    import sd35_provision.workflow as workflow

    calls: list[dict] = []

    def reboot_host(target, reason, **kwargs) -> str:
        calls.append({"host": target.name, "reason": reason, **kwargs})
        assert target.lock_again() is None  # the run's lock, taken back through the run
        return f"rebooted ({reason})"

    monkeypatch.setattr(workflow, "reboot_host", reboot_host)
    drain = recording_drain([])
    settings = allow_reboot(HostSettings(name="gpu-a1", address="127.0.0.1"))
    host = RecordedHost(just_installed())
    _reboot_if_needed(RebootOptions(drain=drain), None)(host, settings)  # type: ignore[arg-type]
    reason = "NVIDIA kernel module 550.127.05 is loaded, its library is 570.133.20"
    assert calls == [{"host": "gpu-a1", "reason": reason, "timeout_s": 600, "gpu": True, "drain": drain, "say": None}]
    assert host.state.sd35_run.outcomes["gpu-a1"].notes == [f"rebooted ({reason})"]
    assert host.asked[-1] == "lock again"

    # Neither allow_reboot nor --reboot: said, not done; --reboot alone does it too.
    plain = HostSettings(name="gpu-a1", address="127.0.0.1")
    calls.clear()
    said = RecordedHost(just_installed())
    _reboot_if_needed(RebootOptions(), None)(said, plain)  # type: ignore[arg-type]
    assert calls == [] and said.state.sd35_run.outcomes["gpu-a1"].notes == [required_note(reason)]
    _reboot_if_needed(RebootOptions(allowed=True, timeout_s=90), None)(RecordedHost(just_installed()), plain)  # type: ignore[arg-type]
    assert [(call["reason"], call["timeout_s"]) for call in calls] == [(reason, 90)]


@dataclass
class CommandHost:
    """A pyinfra host whose one shell command answers with a recorded nvidia-smi output."""

    output: list[str]
    name: str = "gpu-a1"
    data: dict = field(default_factory=dict)

    def run_shell_command(self, command, print_output=False, _timeout=None, **kwargs):
        return True, SimpleNamespace(stdout="\n".join(self.output) + "\n", stderr="")


def test_the_driver_check_after_a_reboot_wants_it_working_and_new_enough_for_torch() -> None:
    settings = HostSettings(name="gpu-a1", address="127.0.0.1")
    cu128 = replace(settings, python=replace(settings.python, torch_flavour="cu128"))
    cu130 = replace(settings, python=replace(settings.python, torch_flavour="cu130"))
    h200 = recorded("NvidiaGpus", "two_h200_recorded")  # driver 580.x: enough for both
    a100 = recorded("NvidiaGpus", "two_a100_driver_535")
    assert SshHost(CommandHost(h200), cu130).driver_problem() is None  # type: ignore[arg-type]
    assert SshHost(CommandHost(a100), cu128).driver_problem() == (  # type: ignore[arg-type]
        "NVIDIA driver 535.183.01 is too old for torch (cu128 needs 570.26+)"
    )
    mismatch = SshHost(CommandHost(recorded("NvidiaGpus", "driver_library_mismatch")), cu128).driver_problem()  # type: ignore[arg-type]
    assert mismatch and "mismatch" in mismatch


def test_a_driver_that_waits_for_the_reboot_is_smoke_tested_after_it_not_before() -> None:
    from sd35_provision.workflow import _smoke_or_roll_back, driver_waits_for_reboot

    settings = HostSettings(name="gpu-a1", address="127.0.0.1")
    installed = RecordedHost(just_installed())
    why = "NVIDIA driver/library version mismatch: nvidia module 550.127.05 loaded, library 570.133.20 installed"
    assert driver_waits_for_reboot(installed, allow_reboot(settings), RebootOptions()) == why  # type: ignore[arg-type]
    assert driver_waits_for_reboot(installed, settings, RebootOptions(allowed=True)) == why  # type: ignore[arg-type]
    # Not rebooted by this run: its smoke test is the one it gets (and fails, as before).
    assert driver_waits_for_reboot(installed, settings, RebootOptions()) is None  # type: ignore[arg-type]
    working = RecordedHost({"NvidiaDriverState": recorded("NvidiaDriverState", "two_h200_vm")})
    assert driver_waits_for_reboot(working, allow_reboot(settings), RebootOptions()) is None  # type: ignore[arg-type]

    # The apply's smoke step leaves it to the reboot (a RecordedHost runs no smoke test: it would fail here).
    _smoke_or_roll_back(installed, allow_reboot(settings), reboots=RebootOptions())  # type: ignore[arg-type]
    assert installed.state.sd35_run.outcomes["gpu-a1"].notes == [f"smoke test after the reboot: {why}"]
