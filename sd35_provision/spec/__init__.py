"""The host spec: YAML file -> validated, typed settings per host."""

from sd35_provision.spec.loader import load_spec
from sd35_provision.spec.model import FleetSpec, HostSettings

__all__ = ["FleetSpec", "HostSettings", "load_spec"]
