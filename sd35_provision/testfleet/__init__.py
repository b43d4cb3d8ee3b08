"""The local test fleet: Debian 12 hosts under systemd-nspawn, reached over real SSH."""

from sd35_provision.testfleet.fleet import (
    DEFAULT_STATE_DIR,
    Fleet,
    FleetHost,
    TestFleetError,
    down,
    start_host,
    status,
    stop_host,
    up,
)

__all__ = ["DEFAULT_STATE_DIR", "Fleet", "FleetHost", "TestFleetError", "down", "start_host", "status", "stop_host", "up"]
