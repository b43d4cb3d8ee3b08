"""What onboarding was asked to do, how the host will be logged in to afterwards, and its error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd35_provision.errors import Sd35Error

Echo = Callable[[str], None]
ConfirmHostKey = Callable[[str], bool]


class OnboardError(Sd35Error):
    """Onboarding stopped; the message says where and why."""


@dataclass
class OnboardRequest:
    """What ``sd35-provision onboard`` was asked to do."""

    spec_path: Path
    name: str
    address: str
    user: str = "root"  # first-contact account
    password: str | None = None  # first contact by password (asked with getpass, never argv)
    key: Path | None = None  # first contact by key
    port: int | None = None  # default: the spec's ssh.port for this host
    groups: tuple[str, ...] = ()
    deploy_user: str | None = None  # default: the spec's ssh.user for this host
    deploy_key: Path | None = None  # default: the spec's ssh.key, else ``key``
    sudo: bool = False  # passwordless sudo for the deploy user (and ssh.sudo in the spec)
    settings: dict[str, Any] = field(default_factory=dict)  # from --set section.field=value


@dataclass
class DeployAccess:
    """How sd35-provision will log in to the host: the merged ssh settings plus what onboarding adds."""

    user: str
    port: int
    key: Path
    public_key: str
    known_hosts: Path
    sudo: bool
    connect_timeout: int
