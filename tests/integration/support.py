"""What the fleet tests share: the command line as a user runs it, and what a module knows about its hosts.

Every fleet test passes on its own and in any order: it asks ``HostStates`` for the state it starts from
(a never-provisioned host, or hosts applied with a given spec), and that costs nothing when the hosts are
known to be in it already. What a test leaves behind is unknown unless it says so (``states.are(...)``),
so forgetting to say it costs one apply or disk reset, never a wrong start.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from sd35_provision.testfleet import Fleet

REPO = Path(__file__).resolve().parents[2]
FRESH = "fresh"  # as `up` booted it: never provisioned
PROVISIONED = "provisioned"  # applied once with some spec (a release is current), drifted since or not


def cli(*args: str, check_exit: int | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``sd35-provision ARGS`` in a new process, as a user runs it (``env`` over this one's environment)."""
    result = subprocess.run(
        [sys.executable, "-m", "sd35_provision.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    if check_exit is not None:
        assert result.returncode == check_exit, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def applied(spec: Path) -> str:
    """The state a spec converges hosts to (same text, same state: two files of one content are one)."""
    return "applied " + hashlib.sha256(spec.read_bytes()).hexdigest()


class HostStates:
    """What the tests of one module know about the hosts of its fleet, between two tests."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.known: dict[str, str] = {host.name: FRESH for host in fleet.hosts}
        self._declared: dict[str, str] = {}

    def fresh(self, *names: str) -> None:
        """``names`` (default: every host) as booted; a host that may have been changed gets its disk reset."""
        for name in names or self._all():
            if self.known.get(name) != FRESH:
                self.fleet.reset_host(name)
                self.known[name] = FRESH

    def converged(self, spec: Path, *names: str) -> subprocess.CompletedProcess | None:
        """``names`` (default: every host) applied with ``spec``: one apply of those not known to be."""
        state = applied(spec)
        return self._apply(spec, [name for name in names or self._all() if self.known.get(name) != state])

    def provisioned(self, spec: Path, *names: str) -> subprocess.CompletedProcess | None:
        """``names`` (default: every host) with a current release: ``spec`` applied to those known to have none."""
        return self._apply(
            spec,
            [
                name
                for name in names or self._all()
                if not self.known.get(name, "").startswith(("applied ", PROVISIONED))
            ],
        )

    def _apply(self, spec: Path, todo: list[str]) -> subprocess.CompletedProcess | None:
        for name in todo:
            if not self.fleet.is_running(name):
                self.fleet.start_host(name)
        state = applied(spec)
        if not todo:
            return None
        for name in todo:
            self.known.pop(name, None)  # until the apply has passed
        limits = [arg for name in todo for arg in ("--limit", name)]
        result = cli("apply", str(spec), *limits, check_exit=0)
        self.known.update(dict.fromkeys(todo, state))
        return result

    def are(self, state: Path | str, *names: str) -> None:
        """Declare how this test leaves ``names`` (default: every host): applied with a spec, FRESH or PROVISIONED."""
        value = applied(state) if isinstance(state, Path) else state
        self._declared.update(dict.fromkeys(names or self._all(), value))

    def kept(self, *names: str) -> None:
        """Declare that this test changed nothing on ``names`` (default: every host) after asking for its start."""
        self._declared.update({name: self.known[name] for name in names or self._all() if name in self.known})

    def test_finished(self) -> None:
        """Called after each test (a module's autouse fixture): only what the test declared stays known."""
        self.known = dict(self._declared)
        self._declared = {}

    def _all(self) -> tuple[str, ...]:
        return tuple(host.name for host in self.fleet.hosts)


PROMETHEUS_CACHE = Path("/var/cache/sd35-provision/prometheus-deb")


def prometheus_binary() -> Path:
    """Debian's ``prometheus`` binary, unpacked from its package into a cache (kept between runs).

    Unpacked rather than installed: the package's scripts would start a Prometheus on :9090 for good.
    """
    binary = PROMETHEUS_CACHE / "root" / "usr" / "bin" / "prometheus"
    if binary.exists():
        return binary
    PROMETHEUS_CACHE.mkdir(parents=True, exist_ok=True)
    download = ["apt-get", "download", "-qq", "prometheus"]
    if subprocess.run(download, cwd=PROMETHEUS_CACHE, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)  # a fresh machine's lists
        subprocess.run(download, cwd=PROMETHEUS_CACHE, check=True, capture_output=True)
    (package,) = PROMETHEUS_CACHE.glob("prometheus_*.deb")
    staging = PROMETHEUS_CACHE / "root.partial"
    subprocess.run(["rm", "-rf", str(staging)], check=True)
    subprocess.run(["dpkg-deb", "-x", str(package), str(staging)], check=True)
    staging.rename(PROMETHEUS_CACHE / "root")
    package.unlink()
    return binary
