"""The ``bench`` command: parse options, run the harness, print and write the report."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

DEFAULT_MARKDOWN = Path("docs/benchmarks.md")


@click.command("bench")
@click.option(
    "--model",
    "models",
    type=click.Choice(["large", "medium", "all"]),
    default="all",
    show_default=True,
    help="Which SD3.5 model to measure.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="The tests' tiny pipeline on the CPU (64x64, 2 steps): checks the harness, measures nothing real.",
)
@click.option(
    "--modes",
    default="default",
    show_default=True,
    help="Comma-separated subset of: bf16, bf16-compile, fp8-storage, fp8-dynamic-eager, fp8-dynamic, "
    "fp8-dynamic-lean; 'default' is the issue's four and the lean memory plan, 'all' adds FP8 "
    "without compile.",
)
@click.option("--reps", type=click.IntRange(1, 20), default=3, show_default=True, help="Timed images per mode.")
@click.option(
    "--steps",
    type=click.IntRange(1, 200),
    default=None,
    help="Denoising steps (default: the model's recommended 28 / 40).",
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(1, 50),
    default=2,
    show_default=True,
    help="Steps of each of the two warm-up images.",
)
@click.option(
    "--profile/--no-profile",
    default=True,
    show_default=True,
    help="Profile one transformer forward per mode (CUDA only).",
)
@click.option(
    "--compile-scope",
    type=click.Choice(["blocks", "model"]),
    default="blocks",
    show_default=True,
    help="Compile each transformer block (the service's default: short warm-up) or the whole model.",
)
@click.option(
    "--inductor-tuning",
    is_flag=True,
    help="Turn on inductor's coordinate-descent tuning (what torchao recommends): longer compile.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also save the raw results here (rewritten after every mode).",
)
@click.option(
    "--markdown",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Write the report here (default {DEFAULT_MARKDOWN}; none with --quick). "
    "Notes below the marker line of an existing file are kept.",
)
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    help="Measure nothing: render saved results (repeatable) to the table and --markdown.",
)
def bench(
    models,
    quick,
    modes,
    reps,
    steps,
    warmup_steps,
    profile,
    compile_scope,
    inductor_tuning,
    json_path,
    markdown,
    from_json,
):
    """Measure SD3.5 Large/Medium in each precision mode side by side (time, memory, error, floor)."""
    from sd35_provision.bench import harness, tables

    if from_json:
        runs = harness.merge_runs([run for path in from_json for run in harness.load_runs(path)])
    else:
        runs = _measure(
            models, quick, modes, reps, steps, warmup_steps, profile, compile_scope, inductor_tuning, json_path
        )
    for run in runs:
        click.echo("\n" + tables.render_text(run))
    if markdown is None and not quick:
        markdown = DEFAULT_MARKDOWN
    if markdown is not None:
        tables.write_markdown(markdown, runs)
        click.echo(f"\nwrote {markdown}")


def _measure(models, quick, modes, reps, steps, warmup_steps, profile, compile_scope, inductor_tuning, json_path):
    import torch

    if inductor_tuning:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
        inductor_config.coordinate_descent_check_all_directions = True

    from sd35_provision.bench import harness
    from sd35_provision.bench import models as model_specs

    named = {"all": harness.MODE_KEYS, "default": harness.DEFAULT_MODES}
    wanted = named.get(modes) or tuple(m.strip() for m in modes.split(","))
    unknown = [m for m in wanted if m not in harness.MODE_KEYS]
    if unknown:
        raise click.BadParameter(
            f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(harness.MODE_KEYS)}", param_hint="--modes"
        )
    if quick:
        specs = [model_specs.tiny_spec()]
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise click.ClickException("no CUDA GPU: the full benchmark needs one (use --quick to check the harness)")
        specs = [model_specs.SPECS[m] for m in (("large", "medium") if models == "all" else (models,))]
        device = torch.device("cuda")

    done: list = []

    def save(current) -> None:
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps([asdict(r) for r in (*done, current)], indent=1))

    for spec in specs:
        run = harness.run_benchmark(
            spec,
            device,
            modes=wanted,
            reps=reps,
            warmup_steps=warmup_steps,
            steps=steps,
            profile=profile,
            quick=quick,
            log=lambda s: click.echo(s, err=True),
            checkpoint=save,
            compile_scope=compile_scope,
        )
        save(run)
        done.append(run)
    return done


def main() -> None:  # pragma: no cover
    bench(prog_name="python -m sd35_provision.bench")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
