"""One exception hierarchy for the whole tool.

The CLI turns any ``Sd35Error`` into a one-line message and a documented exit
code; anything else is a bug and gets a traceback (with ``--debug``).
"""

from __future__ import annotations


class Sd35Error(Exception):
    """Base class: a problem the user can act on."""


class SpecError(Sd35Error):
    """The host spec file cannot be used (syntax, schema or semantic errors).

    ``problems`` holds one ``FILE:LINE: path.to.field: message`` line each.
    """

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class HostError(Sd35Error):
    """A step failed on one host; names the host and the step."""

    def __init__(self, host: str, step: str, message: str):
        self.host = host
        self.step = step
        self.message = message
        super().__init__(f"{host}: {step}: {message}")


class PreflightError(HostError):
    """A host does not meet the spec's requirements; nothing was changed on it."""
