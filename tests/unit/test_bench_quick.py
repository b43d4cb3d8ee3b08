"""The benchmark harness end to end on the tiny CPU pipeline (--quick), and its report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("diffusers")

from sd35_provision.bench import harness, tables  # noqa: E402
from sd35_provision.bench.commands import bench  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(
        bench, ["--quick", "--reps", "1", "--json", str(out / "r.json"), "--markdown", str(out / "b.md")]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_quick_prints_the_table(quick_run):
    _, output = quick_run
    for column in ("s/image", "ms/step", "floor ms/step", "× BF16 eager", "peak alloc GB", "image rel err"):
        assert column in output
    assert "BF16 eager" in output and "FP8 storage (layerwise cast)" in output
    assert "compile is not run in --quick" in output


def test_quick_writes_json_and_markdown(quick_run):
    out, _ = quick_run
    runs = harness.load_runs(out / "r.json")
    assert len(runs) == 1
    run = runs[0]
    bf16 = run.mode("bf16")
    assert bf16 is not None and bf16.image_s > 0 and bf16.step_ms > 0 and bf16.finite
    storage = run.mode("fp8-storage")
    assert storage is not None and storage.image_rel_err is not None and storage.image_rel_err < 0.5
    assert [m.status for m in run.modes if m.key in ("bf16-compile", "fp8-dynamic")] == ["skipped"] * 2
    md = (out / "b.md").read_text()
    assert md.startswith("# Benchmarks")
    assert "| mode | s/image | ms/step |" in md
    assert "python -m sd35_provision.bench" in md
    assert tables.NOTES_MARKER in md


def test_rerender_keeps_notes(quick_run, tmp_path):
    out, _ = quick_run
    md = tmp_path / "b.md"
    md.write_text((out / "b.md").read_text() + "## Notes\nhand-written\n")
    result = CliRunner().invoke(bench, ["--from-json", str(out / "r.json"), "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    text = md.read_text()
    assert text.count(tables.NOTES_MARKER) == 1 and text.endswith("## Notes\nhand-written\n")


def test_unknown_mode_is_a_usage_error():
    result = CliRunner().invoke(bench, ["--quick", "--modes", "bf16,int4"])
    assert result.exit_code == 2 and "unknown mode(s) int4" in result.output


def _mode(key, image_s, step_ms, floor, peak):
    return harness.ModeResult(
        key, key, "ok", image_s=image_s, step_ms=step_ms, floor_step_ms=floor, peak_allocated=peak
    )


def test_target_checks():
    run = harness.BenchRun(
        model="SD3.5 Large",
        height=1024,
        width=1024,
        steps=28,
        guidance=3.5,
        cfg=True,
        reps=3,
        env={},
        rates=harness.Rates(800e12, 1600e12, 1200e12, 500e12, 3e12),
        flops_linear=2.39e13,
        flops_attention=7.25e12,
        image_tokens=4096,
        text_tokens=333,
        transformer_params=8_000_000_000,
        pipeline_bytes={},
        modes=[
            _mode("bf16", 10.0, 300, 78, 30e9),
            _mode("fp8-dynamic", 4.0, 60, 48, 20e9),
            _mode("fp8-dynamic-lean", 4.4, 62, 48, 15e9),
        ],
    )
    checks = {c.what: c.met for c in tables.target_checks(run)}
    assert checks["FP8 dynamic + compile: time ≤ 0.45× BF16 eager".replace("FP8 dynamic + compile", "fp8-dynamic")]
    assert checks["fp8-dynamic-lean: peak ≤ 0.55× BF16's"] is True
    assert checks["fp8-dynamic-lean: whole-pipeline peak ≤ 16 GB"] is True
    assert checks["fp8-dynamic: step ≤ 1.5× FP8 floor"] is True
    assert checks["fp8-dynamic-lean: time ≤ 0.45× BF16 eager"] is True
    # JSON round trip keeps everything the report needs.
    again = harness.BenchRun.from_dict(json.loads(run.to_json()))
    assert tables.render_text(again) == tables.render_text(run)


def _run(scope: str | None, modes: list, reps: int = 3) -> harness.BenchRun:
    env = {"device": "H100", "command": f"bench {scope}", "date": "today"}
    if scope:
        env["compile scope"] = scope
    return harness.BenchRun(
        model="SD3.5 Large",
        height=1024,
        width=1024,
        steps=28,
        guidance=3.5,
        cfg=True,
        reps=reps,
        env=env,
        rates=harness.Rates(800e12, 1600e12, 1200e12, 500e12, 3e12),
        flops_linear=2.39e13,
        flops_attention=7.25e12,
        image_tokens=4096,
        text_tokens=333,
        transformer_params=8_000_000_000,
        pipeline_bytes={},
        modes=modes,
    )


def test_merge_keeps_compile_scopes_apart_and_joins_rows():
    bf16 = _mode("bf16", 5.5, 190, 80, 30e9)
    bf16.reps = [{}] * 3
    fast = _mode("fp8-dynamic", 3.3, 108, 55, 22e9)
    fast.reps = [{}] * 2
    runs = harness.merge_runs(
        [
            _run("blocks", [bf16]),
            _run("model", [bf16, harness.ModeResult("fp8-dynamic", "fp8-dynamic", "skipped")]),
            _run("model", [bf16, fast], reps=2),
            _run(None, [bf16]),  # before the scope was recorded: the whole model was compiled
        ]
    )
    assert [(r.env.get("compile scope"), [m.key for m in r.modes]) for r in runs] == [
        ("blocks", ["bf16"]),
        ("model", ["bf16", "fp8-dynamic"]),
    ]
    assert "rows fp8-dynamic: bench model" in runs[1].env["command"]
    assert "Median of 2-3 images" in tables.render_run_markdown(runs[1])
    assert "Median of 3 images" in tables.render_run_markdown(runs[0])
    assert "regional compilation" in tables.render_run_markdown(runs[0])
