"""``sd35-provision testfleet up|down|status``."""

from __future__ import annotations

from pathlib import Path

import click

from sd35_provision.testfleet import fleet as testfleet_api

state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path),
    default=testfleet_api.DEFAULT_STATE_DIR, show_default=True,
    help="Where keys, known_hosts, the spec and host disks live (env SD35_TESTFLEET_DIR).",
)


@click.group()
def testfleet() -> None:
    """A local fleet of Debian 12 hosts (systemd-nspawn) for demos and tests."""


@testfleet.command()
@click.argument("count", type=click.IntRange(1, 50))
@state_dir_option
@click.option("--bind-ro", "binds", multiple=True, metavar="SRC:DST",
              help="Bind a directory of this machine read-only into every host (repeatable).")
@click.option("--first-address", default="127.0.2.1", show_default=True)
def up(count: int, state_dir: Path, binds: tuple[str, ...], first_address: str) -> None:
    """Boot COUNT fresh hosts; writes STATE_DIR/fleet.yaml."""
    fleet = testfleet_api.up(count, state_dir, list(binds), first_address)
    for host in fleet.hosts:
        click.echo(f"{host.name}  {host.address}  pid {host.pid}")
    click.echo(f"spec: {fleet.spec_path}")


@testfleet.command()
@state_dir_option
def down(state_dir: Path) -> None:
    """Stop every host and remove their disks."""
    testfleet_api.down(state_dir)
    click.echo("down")


@testfleet.command()
@state_dir_option
def status(state_dir: Path) -> None:
    """One line per host: name, address, pid, running/stopped, ssh."""
    rows = testfleet_api.status(state_dir)
    if not rows:
        click.echo("no test fleet")
    for row in rows:
        click.echo(f"{row['name']}  {row['address']}  pid {row['pid'] or '-'}  {row['state']}  "
                   f"ssh {'ok' if row['ssh'] else 'unreachable'}")
