"""Onboarding from first contact to an applied host, in order; each step is its own module."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from sd35_provision.hostspec.edit import SpecEdit
from sd35_provision.hostspec.settings import FleetSpec
from sd35_provision.onboarding.accounts import check_deploy_login, prepare_account
from sd35_provision.onboarding.hostkeys import trust_host_key
from sd35_provision.onboarding.request import ConfirmHostKey, Echo, OnboardRequest
from sd35_provision.onboarding.specentry import check_spec_with, plan_entry, write_spec


@dataclass
class OnboardResult:
    name: str
    host_key: str  # "ssh-ed25519 SHA256:..."
    host_key_recorded: bool
    account_changes: list[str]
    spec_edit: SpecEdit


@dataclass
class Onboarded:
    """Everything ``onboard`` did: the host's setup, its facts, and the apply (None when skipped)."""

    result: OnboardResult
    facts: Any  # HostFacts, or None when gathering failed
    facts_report: Any  # RunReport of the facts run
    apply_report: Any = None  # RunReport of the apply to this host only


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def onboard_host(
    request: OnboardRequest, confirm_host_key: ConfirmHostKey, echo: Echo, warn: Echo = _to_stderr
) -> tuple[OnboardResult, FleetSpec]:
    """Steps 1-4 up to a validated spec holding the host: (result, the loaded FleetSpec).

    ``warn`` gets the spec's deprecation lines (renamed keys), like every command that loads a spec.
    """
    entry, access = plan_entry(request)
    check_spec_with(request.spec_path, request.name, entry)
    shown, recorded = trust_host_key(
        request.address, access.port, access.known_hosts, access.connect_timeout, confirm_host_key, echo
    )
    changes = prepare_account(request, access, echo)
    check_deploy_login(request, access)
    spec, edit = write_spec(request.spec_path, request.name, entry, echo)
    for warning in spec.warnings:
        warn(warning)
    return OnboardResult(request.name, shown, recorded, changes, edit), spec


def onboard(
    request: OnboardRequest,
    confirm_host_key: ConfirmHostKey,
    echo: Echo,
    apply: bool = True,
    options: Any = None,
    warn: Echo = _to_stderr,
) -> Onboarded:
    """First contact to applied host: steps 1-4, then facts, then ``apply`` limited to this host."""
    from sd35_provision import workflow
    from sd35_provision.runner import RunOptions

    result, spec = onboard_host(request, confirm_host_key, echo, warn)
    gathered, facts_report = workflow.gather_facts(spec, (request.name,), RunOptions())
    done = Onboarded(result, gathered.get(request.name), facts_report)
    if apply and facts_report.ok:
        done.apply_report = workflow.apply(spec, (request.name,), options or RunOptions())
    return done
