"""The local test fleet: Debian 12 hosts under systemd-nspawn, reached over real, verified SSH."""

from sd35_provision.testfleet.errors import TestFleetError
from sd35_provision.testfleet.fleet import (
    DEFAULT_FIRST_ADDRESS,
    CommandResult,
    Fleet,
    HostStatus,
    default_state_dir,
    down,
    start_host,
    status,
    stop_host,
    up,
)
from sd35_provision.testfleet.spec import render_spec
from sd35_provision.testfleet.state import FleetHost

__all__ = [
    "DEFAULT_FIRST_ADDRESS",
    "CommandResult",
    "Fleet",
    "FleetHost",
    "HostStatus",
    "TestFleetError",
    "default_state_dir",
    "down",
    "render_spec",
    "start_host",
    "status",
    "stop_host",
    "up",
]
