"""The ``sd35-provision`` command line: parse, call the library, render.

Exit codes: 0 success; 1 a host failed or the input is invalid; 2 drift found
(``drift`` only); 64 the command line itself is wrong.
"""

from gevent import monkey

monkey.patch_all()  # pyinfra runs hosts in greenlets; must precede socket/ssl imports

import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from sd35_provision.errors import Sd35Error, SpecError  # noqa: E402

EXIT_FAILED = 1
EXIT_DRIFT = 2
EXIT_USAGE = 64

spec_argument = click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
limit_option = click.option(
    "--limit", "limit", multiple=True, metavar="HOST_OR_GROUP",
    help="Only these hosts or groups (repeatable).",
)
accept_new_option = click.option(
    "--accept-new-host-keys", is_flag=True,
    help="Trust and record host keys of hosts not yet in known_hosts (first contact). "
    "A changed key is still refused.",
)


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _load(spec_path: Path, check_local_files: bool = True):
    from sd35_provision.spec import load_spec

    return load_spec(spec_path, check_local_files=check_local_files)


def _options(accept_new_host_keys: bool, quiet: bool = False):
    from sd35_provision.runner import RunOptions

    return RunOptions(accept_new_host_keys=accept_new_host_keys, progress=None if quiet else _progress)


@click.group()
@click.option("-v", "--verbose", count=True, help="More output (-vv: pyinfra's debug log).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """Provision Stable Diffusion 3.5 inference hosts from a YAML spec."""
    ctx.obj = {"debug": debug}
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    logging.getLogger("pyinfra").setLevel(level if verbose else logging.CRITICAL)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL if verbose < 2 else logging.DEBUG)


@cli.command()
@spec_argument
@click.option("--skip-local-files", is_flag=True, help="Don't check that referenced local files exist.")
def validate(spec: Path, skip_local_files: bool) -> None:
    """Check SPEC against the schema and rules; print `ok` or every error."""
    fleet = _load(spec, check_local_files=not skip_local_files)
    click.echo(f"ok: {len(fleet.hosts)} host(s), {len(fleet.groups)} group(s)")


@cli.command()
@spec_argument
@limit_option
@accept_new_option
def plan(spec: Path, limit: tuple[str, ...], accept_new_host_keys: bool) -> None:
    """Dry run: per host, what would change, with diffs. Changes nothing."""
    from sd35_provision import workflow
    from sd35_provision.report import render_plan, render_table

    report = workflow.plan(_load(spec), limit, _options(accept_new_host_keys))
    click.echo(render_plan(report))
    click.echo("")
    click.echo(render_table(report))
    if not report.ok:
        sys.exit(EXIT_FAILED)


@cli.command()
@spec_argument
@limit_option
@accept_new_option
def apply(spec: Path, limit: tuple[str, ...], accept_new_host_keys: bool) -> None:
    """Bring every host to the spec; exit 0 only if every host succeeded."""
    from sd35_provision import workflow
    from sd35_provision.report import render_failures, render_table

    report = workflow.apply(_load(spec), limit, _options(accept_new_host_keys))
    click.echo(render_table(report))
    if not report.ok:
        click.echo("\n" + render_failures(report), err=True)
        sys.exit(EXIT_FAILED)


@cli.command()
@spec_argument
@limit_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def drift(spec: Path, limit: tuple[str, ...], as_json: bool) -> None:
    """Like plan, for automation: exit 0 no drift, 2 drift, 1 error."""
    from sd35_provision import workflow
    from sd35_provision.report import render_plan

    report = workflow.plan(_load(spec), limit, _options(False, quiet=as_json))
    report.mode = "drift"
    click.echo(report.to_json() if as_json else render_plan(report))
    if not report.ok:
        sys.exit(EXIT_FAILED)
    if report.drifted:
        sys.exit(EXIT_DRIFT)


@cli.command()
@spec_argument
@limit_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def facts(spec: Path, limit: tuple[str, ...], as_json: bool) -> None:
    """Gather and print per-host facts: OS, GPU, driver, FP8, disk, SSD."""
    import json

    from sd35_provision import workflow
    from sd35_provision.facts.report import facts_row, render_facts_table
    from sd35_provision.report import render_failures

    gathered, report = workflow.gather_facts(_load(spec), limit, _options(False, quiet=True))
    if as_json:
        payload = {name: host_facts.to_dict() for name, host_facts in gathered.items()}
        payload.update({h.name: {"error": f"{h.step}: {h.error}"} for h in report.hosts if h.failed})
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(render_facts_table([facts_row(name, f) for name, f in gathered.items()]))
    if not report.ok:
        click.echo(render_failures(report), err=True)
        sys.exit(EXIT_FAILED)


@cli.command()
@spec_argument
@limit_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def smoke(spec: Path, limit: tuple[str, ...], as_json: bool) -> None:
    """Smoke-test each host's running service: one small image, checked (exit 1 if any host fails)."""
    from sd35_provision import workflow
    from sd35_provision.report import render_failures, render_table

    report = workflow.smoke(_load(spec), limit, _options(False))
    click.echo(report.to_json() if as_json else render_table(report))
    if not report.ok:
        if not as_json:
            click.echo(render_failures(report), err=True)
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--flavour", type=click.Choice(["cpu", "cu128", "cu130"]), default="cpu", show_default=True,
              help="Which shipped lock to download the wheels of.")
@click.option("--lock-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Your own lock instead (python.lock_file).")
@click.option("--python", "python_version", default="3.11", show_default=True,
              help="The hosts' Python version (X.Y).")
def wheelhouse(directory: Path, flavour: str, lock_file: Path | None, python_version: str) -> None:
    """Download every wheel a lock needs into DIRECTORY, for python.wheelhouse (offline fleets)."""
    from sd35_provision.locks import load_lock, load_lock_file
    from sd35_provision.wheelhouse import fill_wheelhouse

    lock = load_lock_file(lock_file) if lock_file else load_lock(flavour)
    fill_wheelhouse(directory, lock, python_version)
    click.echo(f"{directory}: wheels of lock {lock.id} for Python {python_version}")


@cli.command()
@click.option("--hosts", default=2, show_default=True, type=click.IntRange(1, 20))
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Test fleet state directory (default: the testfleet default).")
def demo(hosts: int, state_dir: Path | None) -> None:
    """End to end on a local test fleet with the tiny model: validate, plan, apply, re-apply."""
    from sd35_provision.demo import run_demo
    from sd35_provision.testfleet import default_state_dir

    run_demo(hosts, state_dir or default_state_dir(), click.echo)


def _mount_optional_commands() -> None:
    # Subcommand groups owned by their own subpackages.
    from sd35_provision.bench.cli import bench
    from sd35_provision.testfleet.cli import testfleet

    cli.add_command(testfleet)
    cli.add_command(bench)


def main(argv: list[str] | None = None) -> None:
    _mount_optional_commands()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="sd35-provision", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILED)
    except click.UsageError as error:
        error.show()
        sys.exit(EXIT_USAGE)
    except SpecError as error:
        for problem in error.problems:
            click.echo(problem, err=True)
        click.echo(f"{len(error.problems)} problem(s); nothing was changed.", err=True)
        sys.exit(EXIT_FAILED)
    except Sd35Error as error:
        if debug:
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
