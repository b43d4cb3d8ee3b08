"""Shared fixtures: the local test fleet (Debian 12 systemd-nspawn hosts over real, verified SSH).

``test_fleet`` is one 2-host fleet for the whole session; ``boot_fleet(count)``
boots another one for a single test. Each fleet gets its own state dir and its
own block of loopback addresses (127.0.X.1..), claimed with a lock file so
that test runs started at the same time, and a fleet from
``sd35-provision testfleet up`` on 127.0.2.x, never collide.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from sd35_provision.testfleet import Fleet, down, up
from sd35_provision.testfleet.system import port_in_use

ADDRESS_BLOCKS = range(10, 250)  # 127.0.X.0/24; 127.0.2.x stays free for the CLI's default fleet
CLAIMS_DIR = Path("/run/lock/sd35-testfleet")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reverse",
        action="store_true",
        help="run the tests in reverse order (to check that none depends on the ones before it)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reverse"):
        items.reverse()


def _require_fleet_support() -> None:
    if os.geteuid() != 0:
        pytest.skip("the test fleet needs root (systemd-nspawn, mounts, port 22)")


@contextmanager
def claimed_addresses(count: int) -> Iterator[str]:
    """The first address of a free 127.0.X.0/24 block, held until the block is left."""
    CLAIMS_DIR.mkdir(parents=True, exist_ok=True)
    for block in ADDRESS_BLOCKS:
        with open(CLAIMS_DIR / f"127.0.{block}.lock", "w") as claim:
            try:
                fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another test run holds it; the lock dies with that process
            if any(port_in_use(f"127.0.{block}.{n}") for n in range(1, count + 1)):
                continue
            yield f"127.0.{block}.1"
            return
    raise RuntimeError("no free 127.0.X.0/24 block for a test fleet")


@contextmanager
def booted_fleet(count: int, state_dir: Path, binds: tuple[str, ...] = ()) -> Iterator[Fleet]:
    """``count`` hosts booted in ``state_dir``, taken down on leaving, even on failure."""
    _require_fleet_support()
    with claimed_addresses(count) as first_address:
        fleet = up(count, state_dir, binds, first_address)
        try:
            yield fleet
        finally:
            down(state_dir)


@pytest.fixture(scope="session")
def test_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two hosts, node1 and node2, for the whole test session."""
    with booted_fleet(2, tmp_path_factory.mktemp("testfleet")) as fleet:
        yield fleet


@pytest.fixture
def boot_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Fleet]]:
    """``boot_fleet(count, binds=())``: another fleet, taken down at the end of the test."""
    with ExitStack() as stack:

        def boot(count: int, binds: tuple[str, ...] = ()) -> Fleet:
            state_dir = tmp_path_factory.mktemp("testfleet")
            return stack.enter_context(booted_fleet(count, state_dir, binds))

        yield boot


@pytest.fixture
def fleet_addresses() -> Iterator[Callable[[int], str]]:
    """``claim(count)``: a free first address for a fleet the test boots itself (e.g. through the CLI)."""
    _require_fleet_support()
    with ExitStack() as stack:
        yield lambda count: stack.enter_context(claimed_addresses(count))


@pytest.fixture(scope="session")
def cpu_wheelhouse() -> Path:
    """The CPU lock's wheels for the fleet's Python 3.11, kept in /var/cache between runs."""
    from sd35_provision.locks import load_lock
    from sd35_provision.wheelhouse import cached_wheelhouse

    return cached_wheelhouse(load_lock("cpu"), "3.11")


@pytest.fixture(scope="session")
def apt_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sd35-provision debs`` for the fleet's Debian 12: downloaded once per session (about 50 MB)."""
    from sd35_provision.aptbundle import download_bundle

    directory = tmp_path_factory.mktemp("apt-bundle")
    download_bundle(directory, "bookworm", "amd64")
    return directory


@pytest.fixture(scope="session")
def fleet_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random SD3 pipeline, pushed to fleet hosts as `model: {source: push}`."""
    from sd35_provision.tinymodel import generate_tiny_pipeline

    directory = tmp_path_factory.mktemp("fleet-model") / "tiny-sd3"
    generate_tiny_pipeline(directory)
    return directory


def cpu_fleet_defaults(fleet: Fleet, model: str | Path | dict, **sections: dict) -> dict:
    """The spec defaults every fleet test starts from: CPU torch from the cached wheelhouse,
    caches under /srv/sd35, a tiny smoke test; ``model`` is a push directory or a whole model
    section, and ``sections`` are merged over the rest (``python={...}``, ``service={...}``)."""
    from sd35_provision.hostspec.merge import deep_merge

    defaults = {
        "cache": {"root": "/srv/sd35", "min_free_gb": 1},
        "python": {"torch_flavour": "cpu", "wheelhouse": str(fleet.wheelhouse)},
        "model": model if isinstance(model, dict) else {"source": "push", "path": str(model)},
        "smoke": {"size": "64x64", "steps": 2},
    }
    return deep_merge(defaults, sections)
