"""The test fleet's one exception class."""

from __future__ import annotations

from sd35_provision.errors import Sd35Error


class TestFleetError(Sd35Error):
    """The local test fleet could not be built, booted, reached or stopped.

    The message says what failed and what to do (which log to read, which
    command to run).
    """

    __test__ = False  # a "Test*" class that pytest must not collect
