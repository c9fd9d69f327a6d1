"""The benchmark suite as one command: every benchmark, one after another, one report.

    bash scripts/bench.sh [--quick] [--only PART ...] [--out DIR] [--naive-seconds S10 S100]

Runs, in order, each as a subprocess of this process with the repository's interpreter (so one
process tree, one at a time, never two benchmarks competing for the CPU):

1. ``normalize``: bench_normalize.py, spt-stream's batch kernels vs xraylarch ``pre_edge``;
2. ``model``: bench_model.py, latency and throughput vs batch size on the CPU at the engine's
   thread cap (cores - 1, at least 1; eager, torch.compile and the AOT package) and on every
   core; on a GPU too when ``torch.cuda`` has one (fp32, bf16 autocast, fp32 compiled); and
   gil_convoy.py, the forward pass beside a Python-busy thread;
3. ``ingest``: bench_ingest.py, reading a backlog of documents from Kafka;
4. ``latency``: bench_live.py --only latency, 10 / 100 / 500 frames/s through the whole engine
   (as packaged = the AOT package on the model thread, ``batch.overlap: auto``; the eager model;
   the torch.compile'd model);
   ``runs``: bench_runs.py, the first frame after start and many short runs: a RunEngine
   publishing 50 runs x 20 frames then one 1,000-frame run at 100 frames/s into a freshly
   started engine (no warm-up run), beside the two bare Kafka hops (kafka_relay.py) on the same
   broker; engine CPU per frame;
5. ``backlog``: bench_live.py --only backlog, backlog throughput (Zarr only; Zarr + feedback;
   the same profiles, plus the AOT package without the model thread and the eager model on it);
6. ``memory``: bench_live.py --only memory, RSS of ``spt-stream run`` over 100,000 frames;
7. ``naive``: naive_pipeline.py, the ecosystem pipeline (RemoteDispatcher -> per-frame Larch ->
   per-frame model -> per-row Zarr appends / TiledWriter) on the same documents.

Each part's markdown output is captured (and echoed) and written, with the command, the wall
time and the load average before and after, to ``out/bench/<timestamp>.md``; the report starts
with the machine (CPU model, cores, memory, GPU, torch, git commit) and an "engine vs naive"
table of ratios taken from the latency, backlog and naive parts. A failing part is reported
(exit status, output tail) and the suite goes on; the exit status is 1 if any part failed.

``--quick``: small sizes everywhere, a smoke test of the whole suite (4.5 min on the loaded 2-core
development machine, against roughly half an hour for the full run); its numbers are not results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PARTS = ("normalize", "model", "ingest", "latency", "runs", "backlog", "memory", "naive")
#: Engine environments of the comparison profiles (see bench_live.py): the model backends other
#: than the packaged default (``auto`` = the AOTInductor package on the CPU).
EAGER = {"BENCH_ENGINE_ENV": "SPT_MODEL_BACKEND=eager"}
COMPILED = {"BENCH_ENGINE_ENV": "SPT_MODEL_BACKEND=compile"}


@dataclass
class Part:
    """One benchmark invocation and, once run, what it printed."""

    name: str
    title: str
    argv: list[str]
    output: str = ""
    rc: int | None = None
    wall_s: float = 0.0
    load_before: str = ""
    load_after: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: Extra environment of the benchmark process.
    env: dict[str, str] = field(default_factory=dict)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cuda() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, torch.cuda.get_device_name(0)
    return False, ""


def plan(
    which: Sequence[str], quick: bool, naive_seconds: Sequence[float], naive_json: Path
) -> list[Part]:
    """The parts to run, with their command lines (sizes per ``quick``)."""
    py = sys.executable
    cap = max(1, _cores() - 1)
    cuda, _ = _cuda()
    parts: list[Part] = []

    def script(name: str) -> str:
        return str(BENCH / name)

    if "normalize" in which:
        args = ["--frames", "500", "--larch-subset", "50", "--chunk", "256"] if quick else []
        parts.append(
            Part("normalize", "Normalization vs Larch", [py, script("bench_normalize.py"), *args])
        )
    if "model" in which:
        batches = "1,8,64" if quick else "1,8,64,256,512"
        threads = [cap] if quick else sorted({cap, _cores()})
        for t in threads:
            compiled = ["--compile", "--aot"] if t == cap else []  # all backends, same run
            parts.append(
                Part(
                    "model",
                    f"Model vs batch size, CPU, {t} thread{'s' if t > 1 else ''}"
                    + (" (the engine's cap; eager, compiled, AOT)" if t == cap else ""),
                    [
                        py,
                        script("bench_model.py"),
                        "--device",
                        "cpu",
                        "--threads",
                        str(t),
                        "--batches",
                        batches,
                        *compiled,
                    ],
                )
            )
        if cuda:
            parts.append(
                Part(
                    "model",
                    "Model vs batch size, GPU (fp32, bf16, fp32 compiled)",
                    [
                        py,
                        script("bench_model.py"),
                        "--device",
                        "cuda",
                        "--batches",
                        batches if quick else "1,8,64,256,512,2048",
                        "--bf16",
                        "--compile",
                    ],
                )
            )
        gil = ["--repeats", "4", "--aot"] if quick else ["--compile", "--aot"]
        parts.append(
            Part(
                "model",
                "Model beside a Python-busy thread (the interpreter lock)",
                [py, script("gil_convoy.py"), *gil],
            )
        )
    if "ingest" in which:
        args = ["--events", "2000", "--repeat", "1"] if quick else []
        parts.append(Part("ingest", "Kafka ingest", [py, script("bench_ingest.py"), *args]))
    live = script("bench_live.py")
    # The engine as packaged (AOT package) and with the eager and torch.compile'd models.
    profiles = (
        [("", {})]
        if quick
        else [("", {}), (", eager model", EAGER), (", torch.compile'd model", COMPILED)]
    )
    if "latency" in which:
        args = ["--seconds", "2"] if quick else []
        for label, env in profiles:
            parts.append(
                Part(
                    "latency",
                    f"Live engine: latency at 10 / 100 / 500 frames/s{label}",
                    [py, live, "--only", "latency", "--rates", "10", "100", "500", *args],
                    env=dict(env),
                )
            )
    if "runs" in which:
        args = ["--runs", "5", "--long-frames", "100", "--relay-seconds", "2"] if quick else []
        parts.append(
            Part(
                "runs",
                "Live engine: first frame after start, 50 short runs vs one long run, bare hops",
                [py, script("bench_runs.py"), *args],
            )
        )
    if "backlog" in which:
        args = ["--backlog", "1000"] if quick else []
        extra = [
            (
                ", AOT model without the model thread",
                {"BENCH_ENGINE_ENV": "SPT_BATCH__OVERLAP=false"},
            ),
            (
                ", eager model on the model thread",
                {"BENCH_ENGINE_ENV": "SPT_BATCH__OVERLAP=true,SPT_MODEL_BACKEND=eager"},
            ),
        ]
        for label, env in [*profiles, *([] if quick else extra)]:
            parts.append(
                Part(
                    "backlog",
                    f"Live engine: backlog throughput{label}",
                    [py, live, "--only", "backlog", *args],
                    env=dict(env),
                )
            )
    if "memory" in which:
        args = ["--memory-frames", "2000", "--memory-run-frames", "1000"] if quick else []
        parts.append(
            Part(
                "memory",
                "Live engine: memory over a long run",
                [py, live, "--only", "memory", *args],
            )
        )
    if "naive" in which:
        sizes = ["--backlog", "60", "--seconds", "2", "1"] if quick else ["--backlog", "2000"]
        if not quick:
            sizes += ["--seconds", *(f"{s:g}" for s in naive_seconds)]
        parts.append(
            Part(
                "naive",
                "Naive ecosystem pipeline (RemoteDispatcher -> Larch -> model -> Zarr / Tiled)",
                [
                    py,
                    script("naive_pipeline.py"),
                    "--rates",
                    "10",
                    "100",
                    *sizes,
                    "--json",
                    str(naive_json),
                ],
            )
        )
    return parts


def run_part(part: Part, log: Any) -> None:
    """Run one part, echo its output line by line, keep it."""
    part.load_before = loadavg()
    env = " ".join(f"{k}={v}" for k, v in part.env.items())
    header = f"\n===== {part.title}: {env + ' ' if env else ''}"
    header += " ".join(_short(a) for a in part.argv)
    print(header, flush=True)
    log.write(header + "\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        part.argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **part.env},
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)
        log.flush()
        lines.append(line)
    part.rc = proc.wait()
    part.wall_s = time.perf_counter() - t0
    part.load_after = loadavg()
    part.output = "".join(lines)


def _short(arg: str) -> str:
    """A command-line argument as the report shows it (paths relative to the repository)."""
    if arg == sys.executable:
        return ".venv/bin/python" if ".venv" in arg else Path(arg).name
    try:
        return str(Path(arg).relative_to(REPO))
    except ValueError:
        return arg


# ----------------------------------------------------------------------------------- parsing


def _tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Markdown tables in ``text``: (header cells, data rows' cells)."""
    out: list[tuple[list[str], list[list[str]]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            head = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            rows = []
            j = i + 2
            # A benchmark's child echoes its log lines ("engine: ...") as they come, which can
            # fall between a table's rows: skip them.
            while j < len(lines) and lines[j].startswith(("|", "engine: ")):
                if lines[j].startswith("|"):
                    rows.append([c.strip() for c in lines[j].strip().strip("|").split("|")])
                j += 1
            out.append((head, rows))
            i = j
        else:
            i += 1
    return out


def _num(cell: str) -> float:
    return float(cell.replace("*", "").replace(",", "").strip())


def _triple(cell: str) -> tuple[float, float, float]:
    a, b, c = (_num(x) for x in cell.split("/"))
    return a, b, c


def engine_latency(text: str) -> dict[str, dict[str, float]]:
    """bench_live latency table -> {rate: p50/p99 of event -> batch written, and end-to-end}."""
    out: dict[str, dict[str, float]] = {}
    for head, rows in _tables(text):
        if "engine event -> batch written" not in head:
            continue
        k_rate = head.index("offered frames/s")
        k_in = head.index("engine event -> batch written")
        k_e2e = head.index("end-to-end")
        for r in rows:
            p50, _, p99 = _triple(r[k_in])
            e50, _, e99 = _triple(r[k_e2e])
            out[f"{_num(r[k_rate]):g}"] = {
                "p50_ms": p50,
                "p99_ms": p99,
                "e2e_p50_ms": e50,
                "e2e_p99_ms": e99,
            }
    return out


def engine_backlog(text: str) -> dict[str, float]:
    """bench_live backlog table -> {sinks: frames/s}."""
    out: dict[str, float] = {}
    for head, rows in _tables(text):
        if "sinks" in head and "frames/s" in head:
            for r in rows:
                out[r[head.index("sinks")]] = _num(r[head.index("frames/s")])
    return out


def ratio_table(parts: Sequence[Part], naive_json: Path) -> list[str]:
    """The "engine vs naive" table (markdown lines)."""
    lat = next((engine_latency(p.output) for p in parts if p.name == "latency"), {})
    back = next((engine_backlog(p.output) for p in parts if p.name == "backlog"), {})
    naive: dict[str, Any] = {}
    if naive_json.is_file():
        naive = json.loads(naive_json.read_text()).get("variants", {})
    if not (lat or back) or not naive:
        return ["(needs the latency or backlog part and the naive part in the same run)"]
    variants = list(naive)

    def cell(v: float | None, fmt: str = "{:,.1f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    def ratio(a: float | None, b: float | None) -> str:
        if a is None or b is None or b == 0:
            return "n/a"
        return f"**{a / b:,.1f}x**"

    head = (
        "| measure | engine | "
        + " | ".join(f"naive, {v}" for v in variants)
        + " | "
        + " | ".join(f"engine advantage vs {v}" for v in variants)
        + " |"
    )
    lines = [head, "|---|---:|" + "---:|" * (2 * len(variants))]
    eng_fps = back.get("Zarr only")
    naive_fps = [naive[v].get("backlog", {}).get("frames_per_s") for v in variants]
    lines.append(
        "| backlog frames/s (engine: Zarr only) | "
        + cell(eng_fps)
        + " | "
        + " | ".join(cell(x) for x in naive_fps)
        + " | "
        + " | ".join(ratio(eng_fps, x) for x in naive_fps)
        + " |"
    )
    for rate in ("10", "100"):
        for stat in ("p50", "p99"):
            e = lat.get(rate, {}).get(f"{stat}_ms")
            ns = [naive[v].get("latency", {}).get(rate, {}).get(f"{stat}_ms") for v in variants]
            lines.append(
                f"| latency {stat} ms at {rate} frames/s (engine: event -> batch written; "
                "naive: event -> row written) | "
                + cell(e)
                + " | "
                + " | ".join(cell(x) for x in ns)
                + " | "
                + " | ".join(ratio(x, e) for x in ns)
                + " |"
            )
    lines.append("")
    lines.append(
        "Engine advantage = engine frames/s / naive frames/s for the backlog, naive latency / "
        "engine latency for the latency rows (higher = the engine is better). The naive "
        "pipeline has no feedback topic, so its row-written time is compared with the engine's "
        "event -> batch handed to every sink (its Zarr writer then writes within ~0.2 s); the "
        "engine's latency to a separate consumer of its feedback topic (one more Kafka hop) was "
        + ", ".join(
            f"{r}/s p50 {d['e2e_p50_ms']:.1f} / p99 {d['e2e_p99_ms']:.1f} ms"
            for r, d in lat.items()
            if r in ("10", "100")
        )
        + ". Where the naive pipeline cannot keep up with the offered rate its latency grows "
        "through the run, so that ratio depends on the run's length (see the naive part)."
    )
    return lines


# ----------------------------------------------------------------------------------- report


def _git() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + (" + uncommitted changes" if dirty else "")


def machine() -> list[tuple[str, str]]:
    import numpy
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(re.findall(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[0])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, IndexError):
        pass
    cuda, gpu = _cuda()
    return [
        ("CPU", f"{cpu}; {_cores()} usable cores ({os.cpu_count()} online)"),
        ("memory", mem),
        ("GPU", gpu if cuda else "none (torch.cuda.is_available() is False)"),
        ("OS", platform.platform()),
        (
            "software",
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"numpy {numpy.__version__}",
        ),
        ("git commit", _git()),
    ]


def write_report(
    path: Path,
    parts: Sequence[Part],
    argv: Sequence[str],
    started: str,
    wall_s: float,
    naive_json: Path,
    quick: bool,
) -> None:
    lines = [
        f"# spt-stream benchmarks, {started}"
        + (" (QUICK smoke run: not results)" if quick else ""),
        "",
        f"Command: `{' '.join(['bash', 'scripts/bench.sh', *argv])}`",
        f"Total wall time {wall_s / 60:.1f} min.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine()),
        "",
        "## Engine vs naive ecosystem pipeline",
        "",
        *ratio_table(parts, naive_json),
        "",
        "## Parts",
        "",
        "| part | command | exit | wall s | load before | load after |",
        "|---|---|---:|---:|---|---|",
    ]
    for p in parts:
        cmd = " ".join([*(f"{k}={v}" for k, v in p.env.items()), *(_short(a) for a in p.argv)])
        lines.append(
            f"| {p.title} | `{cmd}` | {p.rc} | {p.wall_s:.0f} | {p.load_before} | {p.load_after} |"
        )
    for p in parts:
        cmd = " ".join([*(f"{k}={v}" for k, v in p.env.items()), *(_short(a) for a in p.argv)])
        lines += [
            "",
            f"## {p.title}",
            "",
            f"`{cmd}` (exit {p.rc}, {p.wall_s:.0f} s, load {p.load_before} -> {p.load_after})",
            "",
        ]
        text = p.output.strip()
        if p.rc != 0:
            lines += ["**FAILED**; last lines of its output:", "", "```", text[-4000:], "```"]
        else:
            lines.append(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    ap.add_argument(
        "--naive-seconds",
        type=float,
        nargs=2,
        default=[30.0, 10.0],
        metavar=("S10", "S100"),
        help="length of the naive pipeline's 10 and 100 frames/s runs (default 30 10)",
    )
    args = ap.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    which = args.only or list(PARTS)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    report = args.out / f"{stamp}{'-quick' if args.quick else ''}.md"
    naive_json = args.out / f"{stamp}-naive.json"
    parts = plan(which, args.quick, args.naive_seconds, naive_json)
    print(f"# spt-stream benchmark suite: {len(parts)} parts; report {report}", flush=True)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / f"{stamp}.log").open("w") as log:
        for part in parts:
            run_part(part, log)
            write_report(  # after every part, so an interrupted suite still leaves a report
                report,
                [p for p in parts if p.rc is not None],
                raw_argv,
                started,
                time.perf_counter() - t0,
                naive_json,
                args.quick,
            )
    wall = time.perf_counter() - t0
    done = [p for p in parts if p.rc is not None]
    write_report(report, done, raw_argv, started, wall, naive_json, args.quick)
    failed = [p.title for p in parts if p.rc != 0]
    print(f"\n# done in {wall / 60:.1f} min; report {report}", flush=True)
    if failed:
        print(f"# FAILED: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
