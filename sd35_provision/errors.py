"""One exception hierarchy for the whole tool.

The CLI turns any ``Sd35Error`` into a one-line message and a documented exit
code; anything else is a bug and gets a traceback (with ``--debug``).
"""

from __future__ import annotations


class Sd35Error(Exception):
    """Base class: a problem the user can act on."""


class SpecError(Sd35Error):
    """The host spec file cannot be used (syntax, schema or semantic errors).

    ``problems`` holds one ``FILE:LINE: path.to.field: message`` line each;
    ``notes`` says what was done about them (not counted as problems).
    """

    def __init__(self, problems: list[str], notes: list[str] | None = None):
        self.problems = problems
        self.notes = list(notes or [])
        super().__init__("\n".join([*problems, *self.notes]))


class UsageError(Sd35Error):
    """The command line names something the spec does not have (exit 64, like any usage error)."""


class HostError(Sd35Error):
    """A step failed on one host; names the host and the step."""

    def __init__(self, host: str, step: str, message: str):
        self.host = host
        self.step = step
        self.message = message
        super().__init__(f"{host}: {step}: {message}")


class PreflightError(HostError):
    """A host does not meet the spec's requirements; nothing was changed on it."""
