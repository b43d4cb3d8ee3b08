"""Quiet start, in-process: the filters the service installs before it loads anything."""

from __future__ import annotations

import logging
import warnings

import pytest

from sd35_provision.service import __main__ as service_main


@pytest.fixture
def quiet():
    """quiet_start() with the global warning and logger filters put back afterwards."""
    loggers = [logging.getLogger(name) for name, _ in service_main.QUIET_MESSAGES] + [
        logging.getLogger("uvicorn.access")
    ]
    before = {lg.name: list(lg.filters) for lg in loggers}
    with warnings.catch_warnings():
        service_main.quiet_start()
        yield
    for lg in loggers:
        lg.filters[:] = before[lg.name]


def access_record(path: str, status: int = 200) -> logging.LogRecord:
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", status),
        None,
    )


@pytest.mark.parametrize(
    "path,kept",
    [
        ("/healthz", False),
        ("/readyz", False),
        ("/readyz?x=1", False),
        ("/metrics", False),
        ("/v1/images/generations", True),
        ("/", True),
    ],
)
def test_health_polls_leave_the_access_log(path: str, kept: bool) -> None:
    assert service_main._HealthPollFilter().filter(access_record(path)) is kept


def test_known_start_up_messages_are_filtered(quiet, caplog) -> None:
    name, text = service_main.QUIET_MESSAGES[0]
    logger = logging.getLogger(name)
    with caplog.at_level(logging.WARNING, logger=name):
        logger.warning(text + ". This may affect loading checkpoints serialized with `torchao`")
        logger.warning("something else from the quantizer")
    assert [r.getMessage() for r in caplog.records] == ["something else from the quantizer"]


def test_invalid_escape_syntax_warnings_are_filtered(quiet) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        service_main.quiet_start()
        compile('x = "\\."', "third_party.py", "exec")
    assert not [w for w in seen if "invalid escape sequence" in str(w.message)]


def test_without_the_filter_python_does_warn() -> None:
    # The filter above is what silences it: Python itself warns (DeprecationWarning before 3.12).
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compile('x = "\\."', "third_party.py", "exec")
    assert seen and "invalid escape sequence" in str(seen[0].message)
