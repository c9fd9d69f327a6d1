"""The one-command benchmark suite (bench/run_all.py): its plan and its engine-vs-naive ratios.

The benchmarks themselves are too long for the test suite (``bash scripts/bench.sh --quick`` is
the smoke test); these tests pin the parts of run_all.py that turn their output into the report,
on tables in exactly the format bench_live.py prints.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run_all", REPO / "bench" / "run_all.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


LATENCY = """
## Latency

| offered frames/s | achieved | frames | received once | end-to-end | event -> analysis_time | analysis_time -> received | engine event -> batch written | mean batch | engine CPU ms/frame | engine cores busy | load avg (1/5/15 min) |
|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---|
| 10 | 10.0 | 600 | yes | **29.2 / 67.0 / 131.2** | 21.5 / 52.3 / 101.9 | 7.0 / 15.2 / 25.7 | 20.0 / 51.1 / 100.0 | 1.0 | 38.69 | 0.38 | 2.15 2.21 3.31 |
| 100 | 100.0 | 3000 | yes | **96.4 / 231.5 / 480.4** | 76.4 / 197.5 / 412.5 | 17.9 / 40.9 / 67.9 | 75.0 / 196.0 / 400.0 | 5.3 | 6.26 | 0.60 | 2.60 2.31 3.28 |

| offered frames/s | frames > 25 ms | of which overlapping a commit | commit (flush + commit) ms p50 / max | commits |
|---:|---:|---:|---:|---:|
| 10 | 439 (73.2%) | 44 | 0.0 / 2.5 | 59 |
"""  # noqa: E501

BACKLOG = """
| sinks | frames produced | rows in trace | produce s | engine start -> done s | first doc -> all in Zarr s | frames/s | engine CPU s | mean batch | max RSS MB | load avg |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
engine: kafka.net.selector: Task <kafka.net.selector.Task object> ran for 0.167s (>0.100s threshold).
| Zarr only | 20000 | 20000 | 7.8 | 35.8 | 30.60 | **1,000** | 26.9 | 61.5 | 468 | 3.08 3.35 3.33 |
engine: kafka.net.selector: Task <kafka.net.selector.Task object> ran for 0.195s (>0.100s threshold).
| Zarr + feedback topic | 20000 | 20000 | 6.9 | 49.4 | 43.92 | **455** | 37.9 | 61.0 | 475 | 3.20 3.35 3.33 |
"""  # noqa: E501


def test_engine_tables_are_read_by_column_name(run_all: ModuleType) -> None:
    """The latency p50/p99 come from the "engine event -> batch written" column (not the first
    triple of the row), the other table in the same output is ignored, and the backlog rate of
    each sink setting is read with its thousands separator and bold markers removed."""
    lat = run_all.engine_latency(LATENCY)
    assert set(lat) == {"10", "100"}
    assert lat["10"] == {"p50_ms": 20.0, "p99_ms": 100.0, "e2e_p50_ms": 29.2, "e2e_p99_ms": 131.2}
    assert lat["100"]["p99_ms"] == 400.0
    assert run_all.engine_backlog(BACKLOG) == {"Zarr only": 1000.0, "Zarr + feedback topic": 455.0}


def test_ratio_table_divides_the_right_way(run_all: ModuleType, tmp_path: Path) -> None:
    """Backlog: engine frames/s over naive frames/s; latency: naive over engine; a variant
    without a number shows n/a instead of a made-up ratio."""
    naive = tmp_path / "naive.json"
    naive.write_text(
        json.dumps(
            {
                "variants": {
                    "zarr": {
                        "backlog": {"frames_per_s": 10.0},
                        "latency": {
                            "10": {"p50_ms": 200.0, "p99_ms": 1000.0},
                            "100": {"p50_ms": 7500.0, "p99_ms": 12000.0},
                        },
                    },
                    "tiled": {"backlog": {"frames_per_s": 20.0}},
                }
            }
        )
    )
    parts = [
        run_all.Part("latency", "latency", [], output=LATENCY, rc=0),
        run_all.Part("backlog", "backlog", [], output=BACKLOG, rc=0),
    ]
    lines = run_all.ratio_table(parts, naive)
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    backlog = rows["backlog frames/s (engine: Zarr only)"]
    assert "**100.0x**" in backlog  # 1000 / 10
    assert "**50.0x**" in backlog  # 1000 / 20
    p50_10 = next(v for k, v in rows.items() if k.startswith("latency p50 ms at 10 "))
    assert "**10.0x**" in p50_10  # 200 / 20
    assert "n/a" in p50_10  # tiled has no latency numbers
    p99_100 = next(v for k, v in rows.items() if k.startswith("latency p99 ms at 100 "))
    assert "**30.0x**" in p99_100  # 12000 / 400


def test_ratio_table_says_what_is_missing(run_all: ModuleType, tmp_path: Path) -> None:
    """Without the naive part's numbers there is no ratio table, and the report says why."""
    parts = [run_all.Part("latency", "latency", [], output=LATENCY, rc=0)]
    lines = run_all.ratio_table(parts, tmp_path / "absent.json")
    assert len(lines) == 1
    assert "naive part" in lines[0]


def test_plan_runs_every_part_in_order_with_existing_scripts(
    run_all: ModuleType, tmp_path: Path
) -> None:
    """Full and quick plans cover the seven parts in the documented order; every command is the
    running interpreter on a script that exists; quick sizes are smaller than the full ones."""
    for quick in (False, True):
        parts = run_all.plan(run_all.PARTS, quick, [30.0, 10.0], tmp_path / "n.json")
        names = list(dict.fromkeys(p.name for p in parts))
        assert names == list(run_all.PARTS)
        for p in parts:
            assert p.argv[0] == sys.executable
            assert Path(p.argv[1]).is_file()
    full = {
        p.name: p.argv for p in run_all.plan(["naive", "memory"], False, [30.0, 10.0], tmp_path)
    }
    quick_plan = run_all.plan(["naive", "memory"], True, [30.0, 10.0], tmp_path)
    quick_ = {p.name: p.argv for p in quick_plan}
    assert "--memory-frames" not in full["memory"]  # bench_live's default: 100,000 frames
    assert quick_["memory"][quick_["memory"].index("--memory-frames") + 1] == "2000"
    assert full["naive"][full["naive"].index("--backlog") + 1] == "2000"
    assert full["naive"][full["naive"].index("--seconds") + 1 :][:2] == ["30", "10"]
