"""The host spec: YAML file -> validated, typed settings per host."""

from sd35_provision.hostspec.loader import load_spec
from sd35_provision.hostspec.settings import FleetSpec, HostSettings

__all__ = ["FleetSpec", "HostSettings", "load_spec"]
