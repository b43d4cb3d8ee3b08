#!/usr/bin/env python3
"""Service-level benchmark: start the real service on GPUs, drive it with the stock `openai` client.

  service_bench.py prepare --model large DIR
      write a random-weight SD3.5 pipeline (bf16 safetensors, the published
      configs; sd35_provision.bench.models) to DIR, as the service loads it
  service_bench.py run --model-dir DIR --json OUT.json [--deadline-s S]
                   --run NAME:GPU:VAR=VALUE,VAR=VALUE ... [--levels 1,4,8,16]
      start one service per run (runs on one GPU one after another, GPUs side
      by side), each pinned to its GPU by UUID (CUDA_VISIBLE_DEVICES) on its own
      port, as the systemd unit starts it; measure start-to-ready, single-image
      latency, first request of each n, img/min and p50/p95 latency per number
      of concurrent clients, the process's peak GPU memory (nvidia-smi, sampled
      every 0.25 s: at the 10th request and overall), and SIGTERM's exit code
  service_bench.py table RESULTS.json ...
      the markdown table for docs/benchmarks.md

Only numbers this run measured are written; a phase that did not run is "–".
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a photo of an astronaut riding a red horse on the moon, number {i}"


def prepare(model: str, out_dir: Path) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from sd35_provision.bench.models import SPECS, build_pipeline

    begin = time.monotonic()
    pipe = build_pipeline(SPECS[model], torch.device("cuda"), torch.bfloat16, seed=0)
    built = time.monotonic()
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    print(
        f"prepared {model} in {out_dir}: built {built - begin:.1f} s, saved {time.monotonic() - built:.1f} s",
        flush=True,
    )


def gpu_uuids() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True, text=True, check=True
        ).stdout
    except FileNotFoundError:  # no NVIDIA driver: CPU runs (a dry run of the script itself)
        return ["", ""]
    return [line.strip() for line in out.splitlines() if line.strip()]


class MemorySampler:
    """nvidia-smi's used memory of one process (MiB), sampled in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        self.pid = pid
        self.interval_s = interval_s
        self.peak_mib = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        begin = time.monotonic()
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                for line in out.splitlines():
                    parts = [p.strip() for p in line.split(",")]
                    if len(parts) == 2 and parts[0] == str(self.pid) and parts[1].isdigit():
                        used = int(parts[1])
                        self.peak_mib = max(self.peak_mib, used)
                        self.samples.append((round(time.monotonic() - begin, 2), used))
            except (subprocess.SubprocessError, OSError):
                pass
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@dataclass
class RunResult:
    name: str
    gpu: str
    env: dict[str, str]
    status: str = "not run"
    note: str = ""
    ready_s: float | None = None  # spawn to /readyz 200, seen by the client
    readyz: dict[str, Any] = field(default_factory=dict)
    single_s: list[float] = field(default_factory=list)  # n=1, one at a time
    first_of_n: dict[str, list[float]] = field(default_factory=dict)  # n -> seconds of its 1st, 2nd request
    levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    peak_mib_10: int | None = None  # nvidia-smi, process, start to the 10th request
    peak_mib: int | None = None
    requests_done: int = 0
    sigterm_exit: int | None = None
    sigterm_s: float | None = None
    log_tail: str = ""
    metrics_excerpt: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_one(
    name: str,
    gpu_uuid: str,
    env_extra: dict[str, str],
    model_dir: Path,
    port: int,
    log_dir: Path,
    levels: list[int],
    deadline: float,
    steps: int,
    guidance: float,
    size: str,
) -> RunResult:
    import httpx
    import openai

    result = RunResult(name, gpu_uuid, env_extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SD35_")}
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": gpu_uuid,
            "SD35_MODEL_DIR": str(model_dir),
            "SD35_BIND": "127.0.0.1",
            "SD35_PORT": str(port),
            "SD35_QUEUE_SIZE": "64",
            "SD35_DEFAULT_STEPS": str(steps),
            "SD35_DEFAULT_GUIDANCE": str(guidance),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(env_extra)
    log_path = log_dir / f"{name}.log"
    spawn = time.monotonic()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sd35_provision.service"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
    sampler = MemorySampler(process.pid).start()
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode} before ready")
            if time.monotonic() > deadline:
                raise RuntimeError("not ready before the deadline")
            try:
                response = httpx.get(f"{url}/readyz", timeout=5)
                if response.status_code == 200:
                    result.readyz = response.json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        result.ready_s = round(time.monotonic() - spawn, 1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=900, max_retries=0)
        counter = iter(range(1_000_000))
        done_lock = threading.Lock()

        def request(n: int = 1) -> float:
            i = next(counter)
            begin = time.monotonic()
            answer = client.images.generate(
                model="sd3.5",
                prompt=PROMPT.format(i=i),
                n=n,
                size=size,
                response_format="b64_json",
                extra_body={"seed": i},
            )
            elapsed = time.monotonic() - begin
            if len(answer.data) != n or not base64.b64decode(answer.data[0].b64_json).startswith(b"\x89PNG"):
                raise RuntimeError("the answer is not n PNG images")
            with done_lock:
                result.requests_done += 1
                if result.requests_done == 10:
                    result.peak_mib_10 = sampler.peak_mib
            return elapsed

        for _ in range(3):
            result.single_s.append(round(request(), 3))
        for n in (2, 4):
            result.first_of_n[str(n)] = [round(request(n), 3) for _ in range(2)]
        for level in levels:
            if time.monotonic() > deadline - 30:
                result.note += f" levels from {level} skipped (deadline);"
                break
            total = max(level, 4) if level < 8 else level
            latencies: list[float] = []
            errors: list[str] = []

            def client_loop(count: int, latencies: list[float] = latencies, errors: list[str] = errors) -> None:
                for _ in range(count):
                    try:
                        latencies.append(request())
                    except Exception as exc:  # recorded, the run goes on
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])

            per_client = [total // level + (1 if k < total % level else 0) for k in range(level)]
            threads = [threading.Thread(target=client_loop, args=(c,)) for c in per_client]
            begin = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - begin
            result.levels[str(level)] = {
                "clients": level,
                "requests": total,
                "ok": len(latencies),
                "wall_s": round(wall, 2),
                "img_per_min": round(60 * len(latencies) / wall, 2),
                "p50_s": round(_pct(latencies, 0.5), 2),
                "p95_s": round(_pct(latencies, 0.95), 2),
                "errors": errors[:3],
            }
            print(f"[{name}] {level} clients: {result.levels[str(level)]}", flush=True)
        try:
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            result.metrics_excerpt = [
                line
                for line in metrics.splitlines()
                if line.startswith(
                    ("sd35_batch_images", "sd35_ready_seconds", "sd35_model_load_seconds", "sd35_gpu_memory")
                )
            ]
        except httpx.HTTPError as exc:
            result.errors.append(f"metrics: {exc}")
        result.status = "ok"
    except Exception as exc:
        result.status = "failed"
        result.errors.append(f"{type(exc).__name__}: {exc}"[:500])
    finally:
        if process.poll() is None:
            stop = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                result.sigterm_exit = process.wait(timeout=60)
                result.sigterm_s = round(time.monotonic() - stop, 1)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                result.errors.append("did not exit within 60 s of SIGTERM")
        sampler.stop()
        result.peak_mib = sampler.peak_mib or None
        result.log_tail = log_path.read_text(errors="replace")[-6000:]
    return result


def run(args: argparse.Namespace) -> int:
    uuids = gpu_uuids()
    deadline = time.monotonic() + args.deadline_s
    levels = [int(x) for x in args.levels.split(",")]
    plans: dict[int, list[tuple[str, dict[str, str]]]] = {}
    for spec in args.run:
        name, gpu, *rest = spec.split(":", 2)
        env = dict(item.split("=", 1) for item in (rest[0].split(",") if rest and rest[0] else []))
        plans.setdefault(int(gpu), []).append((name, env))
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    lock = threading.Lock()

    def save() -> None:
        with lock:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "levels": levels,
                        "model_dir": str(args.model_dir),
                        "steps": args.steps,
                        "guidance": args.guidance,
                        "size": args.size,
                        "command": " ".join(sys.argv),
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "runs": [asdict(r) for r in results],
                    },
                    indent=1,
                )
            )

    def gpu_loop(gpu: int, runs: list[tuple[str, dict[str, str]]]) -> None:
        for k, (name, env) in enumerate(runs):
            if time.monotonic() > deadline - args.min_run_s:
                with lock:
                    results.append(RunResult(name, uuids[gpu], env, status="skipped", note="deadline"))
                save()
                continue
            print(f"[{name}] start on GPU {gpu} ({uuids[gpu]})", flush=True)
            env = dict(env)
            run_levels = [int(x) for x in env.pop("BENCH_LEVELS").split("/")] if "BENCH_LEVELS" in env else levels
            r = run_one(
                name,
                uuids[gpu],
                env,
                Path(args.model_dir),
                8000 + gpu * 10 + k,
                log_dir,
                run_levels,
                deadline,
                args.steps,
                args.guidance,
                args.size,
            )
            with lock:
                results.append(r)
            save()
            print(
                f"[{name}] {r.status}: ready {r.ready_s} s, single {r.single_s}, first-of-n {r.first_of_n}, "
                f"peak {r.peak_mib_10}/{r.peak_mib} MiB, sigterm rc {r.sigterm_exit} {r.errors}",
                flush=True,
            )

    threads = [threading.Thread(target=gpu_loop, args=(gpu, runs)) for gpu, runs in sorted(plans.items())]
    if args.snapshot:

        def snapshot() -> None:
            # Once every GPU's first service is up: one process per GPU, as nvidia-smi shows it.
            time.sleep(args.snapshot_after_s)
            Path(args.snapshot).write_text(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)

        threading.Thread(target=snapshot, daemon=True).start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    save()
    print(table(json.loads(Path(args.json).read_text())))
    return 0


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(data: dict[str, Any]) -> str:
    levels = data["levels"]
    head = [
        "run",
        "precision (readyz)",
        "max batch",
        "start to ready s",
        "1 image s (median of 3)",
        "n=2 1st/2nd s",
        "n=4 1st/2nd s",
    ]
    head += [f"{c} clients img/min, p50/p95 s" for c in levels]
    head += ["peak GiB (10 req / all)", "SIGTERM rc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data["runs"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['status']}: {'; '.join(r['errors'])[:150]} {r['note']} |")
            continue
        z = r["readyz"]
        row = [
            r["name"],
            f"{z.get('precision')}, compile {z.get('compile')}",
            z.get("max_batch", "–"),
            _f(r["ready_s"], 1),
            _f(statistics.median(r["single_s"]) if r["single_s"] else None),
        ]
        for n in ("2", "4"):
            v = r["first_of_n"].get(n)
            row.append(f"{v[0]:.2f} / {v[1]:.2f}" if v else "–")
        for c in levels:
            lv = r["levels"].get(str(c))
            row.append(f"{lv['img_per_min']:.1f}, {lv['p50_s']:.1f}/{lv['p95_s']:.1f}" if lv and lv["ok"] else "–")
        peak10 = r["peak_mib_10"] / 1024 if r["peak_mib_10"] else None
        peak = r["peak_mib"] / 1024 if r["peak_mib"] else None
        row.append(f"{_f(peak10, 1)} / {_f(peak, 1)}")
        row.append(_f(r["sigterm_exit"]))
        lines.append("| " + " | ".join(str(x) for x in row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--model", default="large", choices=("large", "medium"))
    p.add_argument("out_dir", type=Path)
    r = sub.add_parser("run")
    r.add_argument("--model-dir", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--log-dir", default="service-logs")
    r.add_argument(
        "--run",
        action="append",
        required=True,
        help="NAME:GPU_INDEX:SD35_VAR=VALUE,... (BENCH_LEVELS=1/4: this run's client counts)",
    )
    r.add_argument("--levels", default="1,4,8,16")
    r.add_argument("--steps", type=int, default=28)
    r.add_argument("--guidance", type=float, default=3.5)
    r.add_argument("--size", default="1024x1024")
    r.add_argument("--deadline-s", type=float, default=480)
    r.add_argument("--min-run-s", type=float, default=150, help="start no run with less than this left")
    r.add_argument("--snapshot", help="write nvidia-smi's output here once the services run")
    r.add_argument("--snapshot-after-s", type=float, default=150)
    t = sub.add_parser("table")
    t.add_argument("results", nargs="+")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.model, args.out_dir)
        return 0
    if args.command == "run":
        return run(args)
    for path in args.results:
        print(table(json.loads(Path(path).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
