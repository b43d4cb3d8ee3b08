"""Tables and the markdown report of benchmark runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sd35_provision.bench.harness import BenchRun

NOTES_MARKER = "<!-- notes: everything below this line is kept when the file is regenerated -->"
GB = 1e9

# The targets for SD3.5 Large at 1024x1024.
TARGET_SPEEDUP = 0.45  # FP8 + compile time / BF16 eager time, at most
TARGET_FLOOR_RATIO = 1.5  # FP8 + compile time / FP8 floor, at most
TARGET_PEAK_BYTES = 16e9  # whole-pipeline peak in FP8, at most (fits a 24 GB card)
TARGET_PEAK_RATIO = 0.55  # FP8 peak / BF16 peak, at most


@dataclass(frozen=True)
class TargetCheck:
    what: str
    value: str
    met: bool | None  # None: not measured


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def mode_table(run: BenchRun) -> tuple[list[str], list[list[str]]]:
    """The main table: one row per mode."""
    base = run.mode("bf16")
    header = [
        "mode",
        "s/image",
        "ms/step",
        "floor ms/step",
        "× floor",
        "SDPA-rate floor",
        "× BF16 eager",
        "text enc s",
        "VAE s",
        "peak alloc GB",
        "peak reserved GB",
        "× BF16 peak",
        "warm-up s",
        "image rel err",
        "1-fwd rel err",
    ]
    rows = []
    for m in run.modes:
        if m.status != "ok":
            rows.append([m.label, f"{m.status}: {m.note}"] + [""] * (len(header) - 2))
            continue
        rows.append(
            [
                m.label,
                _f(m.image_s, "{:.3f}"),
                _f(m.step_ms, "{:.1f}"),
                _f(m.floor_step_ms, "{:.1f}"),
                _f(_ratio(m.step_ms, m.floor_step_ms), "{:.2f}"),
                _f(m.sdpa_floor_step_ms, "{:.1f}"),
                _f(_ratio(m.image_s, base.image_s if base else None), "{:.2f}"),
                _f(m.encode_s, "{:.3f}"),
                _f(m.decode_s, "{:.3f}"),
                _f(m.peak_allocated / GB if m.peak_allocated else None),
                _f(m.peak_reserved / GB if m.peak_reserved else None),
                _f(_ratio(m.peak_allocated, base.peak_allocated if base else None)),
                _f(m.warmup_s, "{:.1f}"),
                ("NaN/inf! " if m.finite is False else "") + _f(m.image_rel_err, "{:.3g}"),
                _f(m.forward_rel_err, "{:.3g}"),
            ]
        )
    return header, rows


def stage_table(run: BenchRun) -> tuple[list[str], list[list[str]]]:
    header = ["mode", "resident GB", "text encoders GB", "denoising GB", "VAE decode GB"]
    rows = []
    for m in run.modes:
        if m.status != "ok" or not m.stage_peaks:
            continue
        rows.append(
            [m.label, _f(m.resident_bytes / GB if m.resident_bytes else None)]
            + [_f(m.stage_peaks.get(k, 0) / GB) for k in ("encode", "denoise", "decode")]
        )
    return header, rows


PROFILE_KINDS = ("matmul", "fp8 matmul", "attention", "triton (fused)", "copy/cast", "other elementwise", "total")


def profile_table(run: BenchRun) -> tuple[list[str], list[list[str]]]:
    header = ["mode (GPU ms, one forward)"] + list(PROFILE_KINDS)
    rows = [
        [m.label] + [_f(m.profile_ms.get(k), "{:.1f}") for k in PROFILE_KINDS]
        for m in run.modes
        if m.status == "ok" and m.profile_ms
    ]
    return header, rows


def target_checks(run: BenchRun) -> list[TargetCheck]:
    """The issue's targets, checked on this run (they are stated for SD3.5 Large)."""
    base = run.mode("bf16")
    fast = run.mode("fp8-dynamic")
    lean = run.mode("fp8-dynamic-lean")
    checks = []
    for m in (fast, lean):
        if m is None:
            continue
        speed = _ratio(m.image_s, base.image_s if base else None)
        checks.append(
            TargetCheck(
                f"{m.label}: time ≤ {TARGET_SPEEDUP}× BF16 eager",
                _f(speed) + "×",
                None if speed is None else speed <= TARGET_SPEEDUP,
            )
        )
        floor = _ratio(m.step_ms, m.floor_step_ms)
        checks.append(
            TargetCheck(
                f"{m.label}: step ≤ {TARGET_FLOOR_RATIO}× FP8 floor",
                _f(floor) + "×",
                None if floor is None else floor <= TARGET_FLOOR_RATIO,
            )
        )
    best = min((m for m in (fast, lean) if m and m.peak_allocated), key=lambda m: m.peak_allocated, default=None)
    if best is not None:
        checks.append(
            TargetCheck(
                f"{best.label}: whole-pipeline peak ≤ {TARGET_PEAK_BYTES / GB:.0f} GB",
                f"{best.peak_allocated / GB:.2f} GB",
                best.peak_allocated <= TARGET_PEAK_BYTES,
            )
        )
        ratio = _ratio(best.peak_allocated, base.peak_allocated if base else None)
        checks.append(
            TargetCheck(
                f"{best.label}: peak ≤ {TARGET_PEAK_RATIO}× BF16's",
                _f(ratio) + "×",
                None if ratio is None else ratio <= TARGET_PEAK_RATIO,
            )
        )
    return checks


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = (
        [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
        if rows
        else [len(h) for h in header]
    )
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _title(run: BenchRun) -> str:
    cfg = "CFG" if run.cfg else "no CFG"
    return (
        f"{run.model}, {run.width}x{run.height}, {run.steps} steps, guidance {run.guidance} ({cfg}) — "
        f"{run.env.get('device', '?')}"
    )


def _rates_line(run: BenchRun) -> str:
    r = run.rates
    t = lambda x: f"{x / 1e12:.0f}" if x else "n/a"  # noqa: E731
    bw = f"{r.copy_bandwidth / 1e12:.2f} TB/s" if r.copy_bandwidth else "n/a"
    return (
        f"bf16 matmul {t(r.bf16_matmul)} TFLOP/s, fp8 matmul {t(r.fp8_matmul)} TFLOP/s (per-tensor scales), "
        f"{t(r.fp8_rowwise_matmul)} TFLOP/s (per-row scales), SDPA at the model's shape "
        f"{t(r.attention)} TFLOP/s" + _backends(r) + f", copy {bw} (matmuls {r.matmul_size}³, random data)"
    )


def _backends(r) -> str:
    if not r.attention_backends:
        return ""
    return " (" + ", ".join(f"{k} {v / 1e12:.0f}" for k, v in r.attention_backends.items()) + " forced)"


COMPILE_SCOPE_WORDS = {
    "blocks": "each transformer block compiled on its own (regional compilation)",
    "model": "the whole transformer compiled as one graph",
}


def _flops_line(run: BenchRun) -> str:
    f = run.flops
    per_step = f.total * (2 if run.cfg else 1)
    return (
        f"{f.image_tokens} image + {f.text_tokens} text tokens; one transformer forward "
        f"{f.total:.3g} FLOPs ({f.linear:.3g} in linears, {f.attention:.3g} in attention), "
        f"{per_step:.3g} per step{' with CFG (batch 2)' if run.cfg else ''}; "
        f"{run.transformer_params / 1e9:.2f} B transformer parameters"
    )


def render_text(run: BenchRun) -> str:
    """The console report of one run."""
    parts = [_title(run), "rates: " + _rates_line(run), "flops: " + _flops_line(run), "", text_table(*mode_table(run))]
    for table in (stage_table(run), profile_table(run)):
        if table[1]:
            parts += ["", text_table(*table)]
    checks = target_checks(run)
    if checks:
        parts += [""] + [
            f"[{'met' if c.met else 'MISSED' if c.met is False else '?'}] {c.what}: {c.value}" for c in checks
        ]
    return "\n".join(parts)


def _reps(run: BenchRun) -> str:
    """Timed images per row: one number, or the range when merged runs differ."""
    counts = sorted({len(m.reps) for m in run.modes if m.status == "ok" and m.reps}) or [run.reps]
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def render_run_markdown(run: BenchRun) -> str:
    env = run.env
    lines = [
        f"## {_title(run)}",
        "",
        f"- Command: `{env.get('command', '?')}`",
        f"- Date: {env.get('date', '?')}; host {env.get('host', '?')}",
        f"- Device: {env.get('device', '?')}; driver {env.get('driver', '?')}",
        "- Versions: "
        + ", ".join(
            f"{k} {env[k]}"
            for k in (
                "python",
                "torch",
                "cuda (torch)",
                "diffusers",
                "transformers",
                "torchao",
                "triton",
                "PYTORCH_CUDA_ALLOC_CONF",
            )
            if k in env
        ),
        f"- Measured rates: {_rates_line(run)}",
        f"- Compile (the + compile rows): "
        f"{COMPILE_SCOPE_WORDS.get(env.get('compile scope', 'model'), env.get('compile scope', '?'))}",
        f"- Work: {_flops_line(run)}",
        "- Weights (bf16): " + ", ".join(f"{k} {v / GB:.2f} GB" for k, v in run.pipeline_bytes.items()),
        f"- Median of {_reps(run)} images after a warm-up of two short images (the warm-up column, "
        "compile included); floor = linear FLOPs at the mode's matmul rate (fp8 per-tensor for FP8 "
        "dynamic, else bf16) + attention FLOPs at the bf16 rate, or weight bytes over bandwidth if larger; "
        "SDPA-rate floor: the same with attention at the SDPA rate measured at the model's shape.",
        "",
        md_table(*mode_table(run)),
    ]
    header, rows = stage_table(run)
    if rows:
        lines += ["", "Peak memory allocated in each stage (whole pipeline resident):", "", md_table(header, rows)]
    header, rows = profile_table(run)
    if rows:
        lines += [
            "",
            "GPU time of one transformer forward (batch of a step) by kernel kind, torch.profiler:",
            "",
            md_table(header, rows),
        ]
    checks = target_checks(run)
    if checks:
        lines += [
            "",
            "Targets (the issue's, for SD3.5 Large):"
            if "Large" in run.model
            else "The same checks (the issue sets its targets for Large; here for reference):",
            "",
        ]
        lines += [
            f"- [{'x' if c.met else ' '}] {c.what}: {c.value}" + ("" if c.met is not False else " — missed")
            for c in checks
        ]
    return "\n".join(lines)


def render_markdown(runs: list[BenchRun], notes: str = "") -> str:
    """The whole docs/benchmarks.md: a header, each run, then the kept notes."""
    head = [
        "# Benchmarks",
        "",
        "Generated by `python -m sd35_provision.bench` (also `sd35-provision bench`); the command under each "
        "heading reproduces its table. The models are built from the published SD3.5 configs with random "
        "weights (no weights can be downloaded where this runs): time and memory do not depend on the "
        "weights' values, and the error columns compare each mode with BF16 eager on the same weights, "
        "seed and prompt (image rel err over a whole sampling run, which compounds; 1-fwd rel err over "
        'one transformer forward). "–" means not measured.',
        "",
        "",
    ]
    body = "\n\n".join(render_run_markdown(r) for r in runs)
    return "\n".join(head) + body + "\n\n" + NOTES_MARKER + "\n" + (notes.lstrip("\n") if notes else "")


def kept_notes(path: Path) -> str:
    """The hand-written notes below the marker of an existing report, if any."""
    if not path.exists():
        return ""
    text = path.read_text()
    return text.split(NOTES_MARKER, 1)[1].lstrip("\n") if NOTES_MARKER in text else ""


def write_markdown(path: Path, runs: list[BenchRun]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(runs, kept_notes(path)))
