"""The table's DETAIL names why a step failed, from the step's recorded output, not its last line."""

from __future__ import annotations

from sd35_provision.report import HostOutcome, RunReport, failure_cause, render_table

# `systemctl restart` of a service whose model load failed (Type=notify), then `systemctl status --lines=15`.
FAILED_START = """\
Job for sd35-inference.service failed because the control process exited with error code.
See "systemctl status sd35-inference.service" and "journalctl -xeu sd35-inference.service" for details.
× sd35-inference.service - Stable Diffusion 3.5 inference service
     Loaded: loaded (/etc/systemd/system/sd35-inference.service; enabled; preset: enabled)
     Active: failed (Result: exit-code) since Mon 2026-11-30 14:02:11 UTC; 5ms ago
     Status: "model load failed: fp8-dynamic needs a CUDA GPU; this device (cpu) is a CPU"
    Process: 812 ExecStart=/opt/sd35/current/venv/bin/python -m sd35_provision.service (code=exited, status=3)
   Main PID: 812 (code=exited, status=3)
Nov 30 14:02:10 node1 python[812]: Traceback (most recent call last):
Nov 30 14:02:10 node1 python[812]:   File "/opt/sd35/current/app/sd35_provision/service/pipeline.py", line 88, in load
Nov 30 14:02:10 node1 python[812]: ValueError: fp8-dynamic needs a CUDA GPU; this device (cpu) is a CPU
Nov 30 14:02:11 node1 systemd[1]: sd35-inference.service: Main process exited, code=exited, status=3/NOTIMPLEMENTED
Nov 30 14:02:11 node1 systemd[1]: sd35-inference.service: Failed with result 'exit-code'.
Nov 30 14:02:11 node1 systemd[1]: Failed to start sd35-inference.service - Stable Diffusion 3.5 inference service.
rollback: rolled back to 3f2a9c0d1e2b-5a6b"""

# The same, from a service that did not set its status: the exception line says why.
NO_STATUS = "\n".join(line for line in FAILED_START.splitlines() if "Status:" not in line)

# apt-get update + install on a host whose mirror does not resolve (recorded on Debian 12).
APT_NO_MIRROR = """\
Err:1 http://deb.debian.invalid/debian bookworm InRelease
  Could not resolve 'deb.debian.invalid'
Reading package lists...
W: Failed to fetch http://deb.debian.invalid/debian/dists/bookworm/InRelease  Could not resolve 'deb.debian.invalid'
W: Some index files failed to download. They have been ignored, or old ones used instead.
Reading package lists...
Building dependency tree...
E: Unable to locate package git-lfs"""


def test_a_failed_start_shows_the_services_own_reason_then_the_rollback():
    assert failure_cause(FAILED_START) == (
        "model load failed: fp8-dynamic needs a CUDA GPU; this device (cpu) is a CPU; "
        "rollback: rolled back to 3f2a9c0d1e2b-5a6b"
    )
    assert failure_cause(NO_STATUS).startswith("ValueError: fp8-dynamic needs a CUDA GPU")


def test_apt_shows_the_mirror_line_and_the_error_it_led_to():
    assert failure_cause(APT_NO_MIRROR) == (
        "W: Failed to fetch http://deb.debian.invalid/debian/dists/bookworm/InRelease  "
        "Could not resolve 'deb.debian.invalid'; E: Unable to locate package git-lfs"
    )
    assert failure_cause("E: Unable to locate package git-lfs") == "E: Unable to locate package git-lfs"


def test_without_a_telling_line_the_last_line_or_nothing():
    assert failure_cause("only Debian and Ubuntu\nare supported") == "are supported"
    assert failure_cause("INFO ready\nINFO generated 1 image", fallback=False) == ""
    assert failure_cause(None) == ""


def test_the_table_of_a_failed_canary_names_the_cause():
    canary = HostOutcome("node1", failed=True, executed=True, step="Service | Restart sd35-inference.service")
    canary.error = FAILED_START
    table = render_table(RunReport(mode="apply", hosts=[canary])).splitlines()
    assert table[1].endswith(
        "Service | Restart sd35-inference.service: model load failed: fp8-dynamic needs a CUDA GPU; "
        "this device (cpu) is a CPU; rollback: rolled back to 3f2a9c0d1e2b-5a6b"
    ), table


# hostside/venv-build.sh on a lock whose pillow hash is wrong: pip's lines, then the script's verdict
# (the shape tests/integration/test_python_env_fleet.py gets from a real host).
VENV_HASH_MISMATCH = """\
ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated the package versions, \
please update the hashes. Otherwise, examine the package contents carefully; someone may have tampered with them.
    pillow==13.0.0 from http://127.0.2.254:40401/pillow-13.0.0-cp311-cp311-manylinux_2_28_x86_64.whl:
        Expected sha256 0000000000000000000000000000000000000000000000000000000000000000
             Got        5c1d9c5f3d1e2b0a9f8e7d6c5b4a39281706f5e4d3c2b1a0918273645546372
venv custom-b290bfb9d4fe not built, wheels do not match the lock's hashes: pillow==13.0.0; \
the running environment is unchanged"""


def test_a_failed_venv_build_shows_the_scripts_verdict_not_pips_banner():
    assert failure_cause(VENV_HASH_MISMATCH) == (
        "venv custom-b290bfb9d4fe not built, wheels do not match the lock's hashes: pillow==13.0.0; "
        "the running environment is unchanged"
    )
