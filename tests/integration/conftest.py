"""Fleet modules (those with a ``fleet`` fixture) get ``states``: what is known about their hosts between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.support import HostStates


@pytest.fixture(scope="module")
def states(fleet) -> HostStates:
    return HostStates(fleet)


@pytest.fixture(autouse=True)
def _forget_what_a_test_did_not_declare(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on a module's fleet, only the host states it declared stay known."""
    if "fleet" not in request.fixturenames:
        yield
        return
    states: HostStates = request.getfixturevalue("states")
    yield
    states.test_finished()
