"""NvidiaDriverState's command run here under sh, with the tools it asks (nvidia-smi, mokutil, systemctl) as
stand-ins that print the recorded formats: the shell and awk parts read them right."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sd35_provision.facts import NvidiaDriverState

HGX = Path(__file__).parents[1] / "fixtures" / "hgx-h100-8gpu"
H200 = Path(__file__).parents[1] / "fixtures" / "h200"


def stand_in(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def run_fact(tmp_path: Path) -> object:
    fact = NvidiaDriverState()
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", "-c", fact.command()], capture_output=True, text=True, check=True, env=env)
    return fact.process(result.stdout.splitlines())


def test_fabric_states_secure_boot_and_units_from_the_tools(tmp_path):
    quoted = HGX / "nvidia-smi-q-fabric-without-fm.txt"
    stand_in(
        tmp_path,
        "nvidia-smi",
        f'case "$1" in -L) echo "GPU 0: NVIDIA H100 80GB HBM3";; -q) cat {quoted}; cat {quoted};; esac\n',
    )
    stand_in(tmp_path, "mokutil", 'case "$1" in --sb-state) echo "SecureBoot enabled";; esac\n')
    stand_in(
        tmp_path,
        "systemctl",
        'case "$1 $2" in "is-enabled nvidia-persistenced") echo enabled;; '
        '"is-active nvidia-persistenced") echo active;; "is-active "*) echo inactive; exit 3;; *) exit 1;; esac\n',
    )
    state = run_fact(tmp_path)
    assert state.fabric_states == ("In Progress", "In Progress") and state.fabric_waiting
    assert state.secure_boot == "enabled" and state.nvml_error is None
    assert (state.persistenced.enabled, state.persistenced.running) == ("enabled", True)
    assert not state.fabric_manager.present and not state.fabric_manager.running


def test_recorded_h200_fabric_section_reads_completed(tmp_path):
    stand_in(tmp_path, "nvidia-smi", f'case "$1" in -L) echo ok;; -q) cat {H200 / "nvidia-smi-q.txt"};; esac\n')
    assert run_fact(tmp_path).fabric_states == ("Completed", "Completed")


def test_nvidia_smi_failing_is_the_nvml_error(tmp_path):
    stand_in(
        tmp_path,
        "nvidia-smi",
        'echo "Failed to initialize NVML: Driver/library version mismatch"; '
        'echo "NVML library version: 570.133"; exit 18\n',
    )
    state = run_fact(tmp_path)
    assert state.nvml_error == "Failed to initialize NVML: Driver/library version mismatch"
    assert state.library_mismatch and state.reboot_required
    assert state.reboot_reason == (
        f"NVIDIA driver/library version mismatch: nvidia module {state.loaded_module or 'none'} loaded, library "
        f"{state.library_version or 'another version'} installed"
    )


def test_loaded_module_version_from_both_kinds_of_proc_driver_nvidia_version(tmp_path):
    from sd35_provision.facts.driver import LOADED_MODULE_SED

    recorded = (H200 / "driver-facts.txt").read_text().splitlines()
    open_module = next(line for line in recorded if line.startswith("NVRM version:"))  # the H200's, recorded
    proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.127.05  Tue Oct  8 03:22:07 UTC 2024"
    for line, version in ((open_module, "580.159.04"), (proprietary, "550.127.05")):
        proc = tmp_path / "version"
        proc.write_text(line + "\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
        result = subprocess.run(["sed", "-n", LOADED_MODULE_SED, str(proc)], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == version
