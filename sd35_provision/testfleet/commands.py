"""``sd35-provision testfleet up|down|status``: parse, call ``sd35_provision.testfleet``, print."""

from __future__ import annotations

import time
from pathlib import Path

import click

from sd35_provision.testfleet import fleet as testfleet_api

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SD35_TESTFLEET_DIR",
    default="/var/lib/sd35-provision/testfleet",
    show_default=True,
    show_envvar=True,
    help="Where the fleet's keys, known_hosts, spec, state, host disks and logs live.",
)


@click.group()
def testfleet() -> None:
    """A local fleet of Debian 12 hosts (systemd-nspawn, real sshd) for demos and tests."""


@testfleet.command()
@click.argument("count", type=click.IntRange(1, 250))
@state_dir_option
@click.option(
    "--bind-ro",
    "binds",
    multiple=True,
    metavar="SRC:DST",
    help="Bind a directory of this machine read-only into every host (repeatable).",
)
@click.option(
    "--first-address",
    default=testfleet_api.DEFAULT_FIRST_ADDRESS,
    show_default=True,
    help="node1's address; node2 gets the next one, and so on (inside 127.0.0.0/8).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Take down the fleet already booted from STATE_DIR first (without it, that is refused).",
)
def up(count: int, state_dir: Path, binds: tuple[str, ...], first_address: str, replace: bool) -> None:
    """Boot COUNT fresh hosts and write STATE_DIR/fleet.yaml.

    A fleet already in STATE_DIR (the default one is shared by everyone on this
    machine) is replaced only with --replace.
    """
    existing = testfleet_api.Fleet.load(state_dir)
    if existing.hosts and not replace:
        names = ", ".join(f"{host.name} ({host.address})" for host in existing.hosts)
        raise click.UsageError(
            f"{existing.state_dir} already has a test fleet: {names}. Pass --replace to take it down and boot a new "
            "one, use another --state-dir, or `sd35-provision testfleet down` it first"
        )
    started = time.monotonic()
    fleet = testfleet_api.up(count, state_dir, binds, first_address, progress=lambda line: click.echo(line, err=True))
    for host in fleet.hosts:
        click.echo(f"{host.name}  {host.address}  pid {host.pid}")
    click.echo(f"spec: {fleet.spec_path}")
    click.echo(
        f"ssh:  ssh -i {fleet.key_path} -o UserKnownHostsFile={fleet.known_hosts_path} root@{fleet.hosts[0].address}"
    )
    click.echo(f"up in {time.monotonic() - started:.1f}s")


@testfleet.command()
@state_dir_option
def down(state_dir: Path) -> None:
    """Stop every host and delete their disks (the client key and logs stay)."""
    started = time.monotonic()
    testfleet_api.down(state_dir, progress=lambda line: click.echo(line, err=True))
    click.echo(f"down: no test host left in {state_dir} ({time.monotonic() - started:.1f}s)")


@testfleet.command()
@state_dir_option
def status(state_dir: Path) -> None:
    """One line per host: name, address, pid, running/stopped, ssh ok/unreachable."""
    rows = testfleet_api.status(state_dir)
    if not rows:
        click.echo(f"no test fleet in {state_dir}")
    for row in rows:
        click.echo(row.line())
