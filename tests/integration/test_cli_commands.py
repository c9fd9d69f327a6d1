"""The ``spt-stream`` command line as a user runs it.

``replay`` from a bluesky JSONL file written by a real RunEngine, from measured spectrum files and
from a Kafka topic; ``plot``; ``predict``; ``--help``/``--version``; errors on bad input files
(CliRunner on the real ``spt_stream.cli`` app). ``demo`` runs as a subprocess under a child
subreaper, so a broker it failed to stop would be caught.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from bluesky import RunEngine
from bluesky.callbacks.json_writer import JSONLinesWriter
from event_model import sanitize_doc
from typer.testing import CliRunner, Result

from spt_stream.cli import COMMAND_MODULES, app
from spt_stream.devtools.demo.experiment import (
    DelithiationCell,
    QuickXASDetector,
    delithiation_plan,
)
from spt_stream.model.checkpoint import default_checkpoint_path, read_metadata
from spt_stream.readers import read_spectrum
from spt_stream.sinks.zarr_trace import open_trace
from spt_stream.transports.publish import KafkaDocumentPublisher
from tests._spectra_docs import compose_docs

SPT_BIN = Path(sys.executable).with_name("spt-stream")
#: The Mn oxide XDI series (one SSRL session), given out of order on purpose.
MN_FILES = ["Mn3O4_rt_01.xdi", "MnO2_rt_01.xdi", "MnO_rt_01.xdi", "Mn2O3_rt_01.xdi"]
#: Their order by the header's Scan.start_time.
MN_TIME_ORDER = ["MnO_rt_01.xdi", "MnO2_rt_01.xdi", "Mn2O3_rt_01.xdi", "Mn3O4_rt_01.xdi"]


def _descriptors() -> list[dict[str, Any]]:
    """The packaged model's SERVED descriptor specs (name, kind, classes), from its metadata: a
    regression head ``<name>_cont`` beside a classifier ``<name>`` is served as ``<name>``."""
    specs: list[dict[str, Any]] = read_metadata(default_checkpoint_path())["descriptors"][
        "descriptors"
    ]
    names = {d["name"] for d in specs}
    return [d for d in specs if not (d["name"].endswith("_cont") and d["name"][:-5] in names)]


def _descriptor_columns() -> set[str]:
    """Trace columns every analysed frame has: ``<name>``, ``<name>_std``, ``<name>_probs``."""
    out = {"e0", "edge_step", "flags", "ood", "ood_score", "norm", "seq_num", "time"}
    for d in _descriptors():
        out |= {d["name"], f"{d['name']}_std"}
        if d["kind"] == "discrete":
            out.add(f"{d['name']}_probs")
    return out


pytestmark = pytest.mark.usefixtures("own_dir_and_logging")


def invoke(*args: str) -> Result:
    """Run ``spt-stream ARGS`` in process (the real app, as installed)."""
    return CliRunner().invoke(app, list(args))


def single_trace(root: Path) -> xr.Dataset:
    """The one run's trace written under ``root``."""
    (path,) = root.glob("*.zarr")
    return open_trace(path).load()


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A 12-frame operando run from a real RunEngine, saved with bluesky's JSONLinesWriter."""
    out = tmp_path_factory.mktemp("jsonl")
    cell = DelithiationCell(name="cell", duration_s=0.1)
    det = QuickXASDetector(name="qxas", cell=cell, seed=3)
    RE = RunEngine({}, call_returns_result=True)
    writer = JSONLinesWriter(str(out))
    RE.subscribe(lambda name, doc: writer(name, sanitize_doc(doc)))  # type: ignore[no-untyped-call]
    result = RE(delithiation_plan(det, cell, frames=12, rate_hz=200.0))
    assert not isinstance(result, tuple)
    uid = str(result.run_start_uids[0])
    (path,) = out.glob("*.jsonl")
    return uid, path


class TestReplay:
    def test_bluesky_jsonl_file(self, jsonl_run: tuple[str, Path], tmp_path: Path) -> None:
        """A RunEngine's JSONL file -> one trace row per event, descriptors and scalars, done;
        ``plot`` then draws that trace into a PNG."""
        uid, path = jsonl_run
        res = invoke("replay", str(path), "--zarr", str(tmp_path / "traces"))
        assert res.exit_code == 0, res.output
        trace = tmp_path / "traces" / f"{uid}.zarr"
        assert str(trace) in res.stderr
        ds = open_trace(trace).load()
        assert ds.sizes["time"] == 12
        assert ds["seq_num"].values.tolist() == list(range(1, 13))
        expected = _descriptor_columns() | {"cell_potential", "cell_nominal_os"}
        assert expected <= set(ds.variables), expected - set(ds.variables)
        assert ds.attrs["status"] == "success"
        assert ds.attrs["element"] == "Co"
        assert ds["norm"].shape == (12, ds.sizes["energy_rel"])

        png = tmp_path / "figure.png"
        res = invoke("plot", str(trace), "--out", str(png))
        assert res.exit_code == 0, res.output
        assert res.stdout.strip() == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000

    def test_time_ordered_spectrum_files(self, reference_dir: Path, tmp_path: Path) -> None:
        """Four measured Mn oxide XDI files -> one run, one row per file in header-time order,
        with the files' scalar header values as columns."""
        files = [str(reference_dir / f) for f in MN_FILES]
        res = invoke("replay", *files, "--zarr", str(tmp_path / "traces"))
        assert res.exit_code == 0, res.output
        ds = single_trace(tmp_path / "traces")
        assert ds.sizes["time"] == len(MN_FILES)
        assert ds["seq_num"].values.tolist() == [1, 2, 3, 4]
        assert not _descriptor_columns() - set(ds.variables)
        assert "mono_d_spacing" in ds.variables  # an XDI header scalar
        assert ds.attrs["element"] == "Mn"
        assert ds.attrs["status"] == "success"
        # one row per file, ordered by the header's Scan.start_time, carrying that time
        stamps: dict[str, float] = {}
        for f in MN_FILES:
            stamp = read_spectrum(reference_dir / f).timestamp
            assert stamp is not None, f
            stamps[f] = stamp
        assert sorted(MN_FILES, key=stamps.__getitem__) == MN_TIME_ORDER
        seconds = ds["time"].values.astype("datetime64[ns]").astype(np.int64) * 1e-9
        assert seconds.tolist() == pytest.approx([stamps[f] for f in MN_TIME_ORDER], abs=1e-3)

    def test_os_delta_against_a_named_reference_run(
        self, reference_dir: Path, tmp_path: Path
    ) -> None:
        """``--reference-run UID``: a later run's os_delta is its edge shift from the STORED run's
        reference frames over the calibrated slope (here MnO, then MnO2 against it: about +2);
        a reference run that is not stored is refused with exit 2, naming it."""
        from spt_stream.classical.edge_os import load_edge_calibration

        root = tmp_path / "traces"
        res = invoke("replay", str(reference_dir / "MnO_rt_01.xdi"), "--zarr", str(root))
        assert res.exit_code == 0, res.output
        (first,) = root.glob("*.zarr")
        ref_uid = first.name.removesuffix(".zarr")
        ref = open_trace(first).load()
        res = invoke(
            "replay", str(reference_dir / "MnO2_rt_01.xdi"), "--zarr", str(root),
            "--reference-run", ref_uid,
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        (second,) = set(root.glob("*.zarr")) - {first}
        ds = open_trace(second).load()
        assert ds.attrs["os_delta_reference"] == ref_uid
        slope = load_edge_calibration().slope
        expected = (ds["e_half"].values - ref["e_half"].values[0]) / slope
        np.testing.assert_allclose(ds["os_delta"].values, expected, rtol=1e-9)
        assert 1.0 < float(ds["os_delta"].values[0]) < 3.0  # MnO -> MnO2: +2 nominal
        # without it, the run is its own reference: 0 at its first frame
        assert ref.attrs["os_delta_reference"] == "first 5 frames"
        assert float(ref["os_delta"].values[0]) == 0.0

        res = invoke(
            "replay", str(reference_dir / "MnO2_rt_01.xdi"), "--zarr", str(root),
            "--reference-run", "no-such-run",
        )  # fmt: skip
        assert res.exit_code == 2
        assert "tracking.reference_run 'no-such-run'" in res.output
        assert "Traceback" not in res.output

    def test_kafka_topic_from_offset(
        self, kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
    ) -> None:
        """``--kafka-topic T --from-offset 0`` replays a run stored on the broker, then stops."""
        uid, docs = compose_docs(10, seed=5)
        pub = KafkaDocumentPublisher(kafka_bootstrap, kafka_topic)
        for name, doc in docs:
            pub(name, doc)
        pub.close()
        res = invoke(
            "replay",
            "--kafka-topic", kafka_topic,
            "--from-offset", "0",
            "--bootstrap-servers", kafka_bootstrap,
            "--zarr", str(tmp_path / "traces"),
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        ds = open_trace(tmp_path / "traces" / f"{uid}.zarr").load()
        assert ds["seq_num"].values.tolist() == list(range(1, 11))
        assert {"cell_potential", "cell_current"} | _descriptor_columns() <= set(ds.variables)
        assert ds.attrs["status"] == "success"

    def test_nothing_to_replay_is_an_error(self) -> None:
        """No source and no topic: a message and exit code 2."""
        res = invoke("replay")
        assert res.exit_code == 2
        assert "give SOURCE" in res.stderr


class TestOneShotCommands:
    def test_help_lists_every_command_and_version_prints(self) -> None:
        """``--help`` names every registered command; ``--version`` prints the version."""
        res = invoke("--help")
        assert res.exit_code == 0
        for name in COMMAND_MODULES:
            assert name.replace("_", "-") in res.stdout  # module compile_model: compile-model
        res = invoke("--version")
        assert res.exit_code == 0
        assert re.fullmatch(r"spt-stream \d+\.\d+\.\d+\S*\n", res.stdout)

    def test_predict_json_has_the_design_keys(self, reference_dir: Path) -> None:
        """``predict --format json`` on a reference spectrum: source, element, edge, e0, and per
        descriptor its value and _std (discrete ones: _probs summing to 1)."""
        f = str(reference_dir / "Fe2O3_rt_01.xdi")
        res = invoke("predict", "--format", "json", f)
        assert res.exit_code == 0, res.output
        (record,) = json.loads(res.stdout)
        assert (record["source"], record["element"], record["edge"]) == (f, "Fe", "K")
        assert record["e0"] == pytest.approx(7122, abs=5)
        for d in _descriptors():
            name = d["name"]
            assert isinstance(record[name], float), name
            assert record[f"{name}_std"] >= 0, name
            if d["kind"] == "discrete":
                probs = record[f"{name}_probs"]
                assert len(probs) == len(d["classes"])
                assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
            else:
                assert f"{name}_probs" not in record

    @pytest.mark.parametrize("command", ["normalize", "predict"])
    def test_bad_input_files_are_named_and_fail(self, command: str, tmp_path: Path) -> None:
        """A missing file and a file of garbage: each is named on stderr, exit code != 0."""
        garbage = tmp_path / "garbage.xdi"
        garbage.write_bytes(b"\x00\x01 not a spectrum \xff\n1 2 3\nabc\n")
        missing = tmp_path / "no-such-file.dat"
        res = invoke(command, "--format", "json", str(garbage), str(missing))
        assert res.exit_code != 0
        assert "garbage.xdi" in res.stderr
        assert "no-such-file.dat" in res.stderr
        assert "Traceback" not in res.output


#: Runs ARGV as a child subreaper: any process the command leaves behind is reparented here,
#: reported and killed. Prints one JSON object: rc, stdout, stderr, leftover command lines.
_SUBREAPER = r"""
import ctypes, json, os, signal, subprocess, sys, tempfile, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
# files, not pipes: a leftover holding a pipe open must not hang the wait
with tempfile.TemporaryFile("w+") as o, tempfile.TemporaryFile("w+") as e:
    proc = subprocess.run(sys.argv[1:], stdout=o, stderr=e, text=True)
    o.seek(0), e.seek(0)
    proc.stdout, proc.stderr = o.read(), e.read()
time.sleep(0.5)
while True:
    try:
        if os.waitpid(-1, os.WNOHANG)[0] == 0:
            break
    except ChildProcessError:
        break
left = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            left[int(pid)] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
    except (OSError, ValueError):
        continue
for pid in left:
    os.kill(pid, signal.SIGKILL)
out = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
       "left": [c.decode(errors="replace") for c in left.values()]}
print(json.dumps(out))
"""


def test_demo_runs_end_to_end_and_leaves_nothing_running(tmp_path: Path) -> None:
    """``spt-stream demo --frames 30 --rate 20``: exit 0, prints the trace path (whole, on an
    80-column console), the trace holds 30 analysed frames with the cell potential, the PNG
    exists, and no process (the broker) outlives the command. The README's snippet and the
    printed "open it with" line work on that trace; ``--out`` holds the log and the Bluesky
    documents, which ``replay`` analyses again."""
    out = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "80", "SPT_DEVICE": "cpu"}
    argv = [str(SPT_BIN), "demo", "--frames", "30", "--rate", "20", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", _SUBREAPER, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, result["stderr"][-4000:]
    assert result["left"] == [], result["left"]
    stdout = result["stdout"]
    match = re.search(r"trace \(Zarr\): (\S+\.zarr)\n", stdout)
    assert match, stdout
    trace = Path(match.group(1))
    assert trace.parent == out / "traces"
    ds = open_trace(trace).load()
    assert ds.sizes["time"] == 30
    assert {"os", "os_std", "cell_potential"} <= set(ds.variables)
    assert ds.attrs["status"] == "success"
    assert "30 analysed of 30 published" in stdout
    png = out / "operando_co_oxidation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {png}" in stdout

    # The README's snippet asks for variables the demo's trace has.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (wanted,) = re.findall(r"^ds\[\[(.+?)\]\]", readme, flags=re.M)
    assert set(re.findall(r'"(\w+)"', wanted)) <= set(ds.variables)
    # The "open it with" line runs as printed, outside the venv too (the venv's interpreter).
    (line,) = [ln.strip() for ln in stdout.splitlines() if "xr.open_zarr(" in ln]
    bare = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}  # no venv on PATH
    opened = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=120, env=bare)
    assert opened.returncode == 0, opened.stderr
    assert "cell_potential" in opened.stdout
    # --out holds the log and the Bluesky documents, and nothing was written elsewhere.
    log = out / "demo.log"
    assert f"log (WARNING and above): {log}" in stdout
    assert " INFO spt_stream." in log.read_text()
    documents = out / "documents.jsonl"
    assert f"Bluesky documents (JSONL): {documents}" in stdout
    assert not (out / "dead-letter.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    # ... and a new user can replay those documents at once.
    res = invoke("replay", str(documents), "--zarr", str(tmp_path / "replayed"))
    assert res.exit_code == 0, res.output
    assert open_trace(tmp_path / "replayed" / trace.name).sizes["time"] == 30
