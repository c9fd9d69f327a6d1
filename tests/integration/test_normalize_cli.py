"""``spt-stream normalize`` as a user runs it (CliRunner on an app with the command)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from spt_stream.commands import normalize
from spt_stream.data import REFERENCE_DIR


def _app() -> typer.Typer:
    app = typer.Typer()
    normalize.register(app)

    @app.callback()
    def _root() -> None:
        """Test root (keeps ``normalize`` a sub-command)."""

    return app


def test_json_output_has_one_object_per_file() -> None:
    """--format json prints an array with the documented keys (docs/CONTRACTS.md) on each
    file's own grid."""
    files = [str(REFERENCE_DIR / "co_metal_rt.xdi"), str(REFERENCE_DIR / "Mn__MnO.txt")]
    res = CliRunner().invoke(_app(), ["normalize", "--format", "json", *files])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [d["source"] for d in data] == files
    for d in data:
        assert {"source", "element", "edge", "e0", "edge_step", "energy", "norm", "flat"} <= set(d)
        assert len(d["energy"]) == len(d["norm"]) == len(d["flat"])
    assert data[0]["element"] == "Co"
    assert abs(data[0]["e0"] - 7709.0) < 0.5


def test_larch_options_are_passed_through() -> None:
    """--e0 and the range options reach the normalization (e0 is reported as given)."""
    f = str(REFERENCE_DIR / "co_metal_rt.xdi")
    args = [
        "normalize",
        "--format",
        "json",
        "--e0",
        "7710",
        "--pre1",
        "-150",
        "--pre2",
        "-40",
        "--norm1",
        "50",
        "--norm2",
        "400",
        "--nnorm",
        "1",
        "--e0-mode",
        "larch",
        f,
    ]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["e0"] == 7710.0


def test_bad_file_is_reported_and_others_still_processed(tmp_path: Path) -> None:
    """A broken file is named on stderr, the good one is printed, and the exit code is 1."""
    bad = tmp_path / "broken.dat"
    bad.write_text("# energy mu\n1 2\nnot numbers\n")
    good = str(REFERENCE_DIR / "Fe2O3_rt_01.xdi")
    res = CliRunner().invoke(_app(), ["normalize", "--format", "csv", str(bad), good])
    assert res.exit_code == 1
    assert "broken.dat" in res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "source,element,edge,e0,edge_step,energy,norm,flat"
    assert len(lines) == 1 + 412
    assert all(line.startswith(good) for line in lines[1:])


def test_table_output_lists_each_file() -> None:
    """The default table names each file with its element and e0."""
    res = CliRunner().invoke(_app(), ["normalize", str(REFERENCE_DIR / "MnO2_rt_01.xdi")])
    assert res.exit_code == 0
    assert "MnO2_rt_01" in res.stdout
    assert "6551" in res.stdout
