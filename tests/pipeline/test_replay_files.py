"""Replay of spectrum files as one synthetic Bluesky run (consumers/files.py), on real spectra."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from spt_stream.errors import AssemblyError, ReaderError
from spt_stream.protocols import Position
from spt_stream.readers import read_spectrum
from spt_stream.transports.files import compose_spectra_run, replay_files
from tests._replay_docs import Recorder, assert_same_documents, frames_of

#: The Mn oxide XDI series (SSRL 4-3, one session), in the order of their Scan.start_time.
MN_SERIES = ["MnO_rt_01.xdi", "MnO2_rt_01.xdi", "Mn2O3_rt_01.xdi", "Mn3O4_rt_01.xdi"]


def validate(pairs: list[tuple[str, dict[str, object]]]) -> None:
    """Every document passes event-model's JSON schema."""
    for name, doc in pairs:
        schema_validators[DocumentNames[name]].validate(doc)


class TestMnSeries:
    def test_replayed_in_header_time_order_with_file_data(self, reference_dir: Path) -> None:
        """Shuffled XDI files come back ordered by Scan.start_time, one event per file."""
        paths = [str(reference_dir / f) for f in reversed(MN_SERIES)]
        handler = Recorder()
        stats = replay_files(paths, handler)
        assert (stats.runs, stats.rejected, stats.documents) == (1, 0, len(MN_SERIES) + 3)
        assert [Path(s).name for s in stats.sources] == MN_SERIES
        pairs = handler.pairs
        validate(pairs)
        assert [n for n, _ in pairs] == ["start", "descriptor"] + ["event"] * 4 + ["stop"]

        start = pairs[0][1]
        assert start["spt"] == {
            "spectrum": "mu",
            "energy": "energy",
            "mode": "mu",
            "element": "Mn",
            "edge": "K",
        }
        assert [Path(p).name for p in start["source_files"]] == MN_SERIES
        descriptor = pairs[1][1]
        assert descriptor["data_keys"]["mu"]["shape"] == [217]
        assert descriptor["data_keys"]["mono_d_spacing"]["dtype"] == "number"

        events = [(d, p) for n, d, p in handler.docs if n == "event"]
        for seq, ((event, position), name) in enumerate(zip(events, MN_SERIES, strict=True), 1):
            spectrum = read_spectrum(reference_dir / name)
            assert event["seq_num"] == seq
            assert event["time"] == spectrum.timestamp
            assert np.array_equal(event["data"]["energy"], spectrum.energy)
            assert np.array_equal(event["data"]["mu"], spectrum.mu, equal_nan=True)
            assert event["data"]["mono_d_spacing"] == pytest.approx(1.92009)
            assert position == Position(file=str(reference_dir / name))
        times = [e["time"] for e, _ in events]
        assert times == sorted(times)
        assert pairs[0][1]["time"] == times[0]

    def test_one_frame_per_file_through_the_engine_ingest(self, reference_dir: Path) -> None:
        """DocumentIngest assembles one frame per file carrying that file's energy and mu."""
        paths = [str(reference_dir / f) for f in MN_SERIES]
        handler = Recorder()
        replay_files(paths, handler)
        frames = frames_of(handler.pairs)
        assert len(frames) == len(MN_SERIES)
        for frame, name in zip(frames, MN_SERIES, strict=True):
            spectrum = read_spectrum(reference_dir / name)
            assert (frame.element, frame.edge) == ("Mn", "K")
            assert np.array_equal(frame.energy, spectrum.energy)
            assert np.allclose(frame.mu, spectrum.mu, equal_nan=True)
            assert frame.scalars["mono_d_spacing"] == pytest.approx(1.92009)

    def test_same_files_give_the_same_documents(self, reference_dir: Path) -> None:
        """Uids derive from the files: a second replay repeats the run exactly."""
        paths = [str(reference_dir / f) for f in MN_SERIES]
        first, second = Recorder(), Recorder()
        replay_files(paths, first)
        replay_files(list(reversed(paths)), second)
        assert [d["uid"] for _, d in first.pairs] == [d["uid"] for _, d in second.pairs]
        assert_same_documents(first.pairs, second.pairs)


def test_different_grids_and_natural_name_order(reference_dir: Path, tmp_path: Path) -> None:
    """Files without timestamps order by natural name; each event keeps its own grid."""
    sources = ["Mn__MnO.txt", "Mn__Mn2O3x.txt", "Mn__Pyrolusite.txt"]
    names = ["scan_10.txt", "scan_2.txt", "scan_1.txt"]
    potentials = {"scan_1.txt": 3.7, "scan_2.txt": 3.9}  # scan_10 has none
    for src, name in zip(sources, names, strict=True):
        text = (reference_dir / src).read_text()
        if name in potentials:
            text = f"# potential = {potentials[name]}\n" + text
        (tmp_path / name).write_text(text)
    handler = Recorder()
    replay_files([str(tmp_path / n) for n in names], handler)
    pairs = handler.pairs
    validate(pairs)
    descriptor = pairs[1][1]
    assert descriptor["data_keys"]["energy"]["shape"] == [None]
    events = [d for n, d in pairs if n == "event"]
    assert [Path(e["data"]["source_file"]).name for e in events] == [
        "scan_1.txt",
        "scan_2.txt",
        "scan_10.txt",
    ]
    lengths = [e["data"]["energy"].shape[0] for e in events]
    assert lengths == [
        read_spectrum(reference_dir / s).npts
        for s in ["Mn__Pyrolusite.txt", "Mn__Mn2O3x.txt", "Mn__MnO.txt"]
    ]
    assert [e["data"]["potential"] for e in events[:2]] == [3.7, 3.9]
    assert math.isnan(events[2]["data"]["potential"])
    frames = frames_of(pairs)
    assert [f.npts for f in frames] == lengths


def test_mixed_elements_are_an_error_naming_the_file(reference_dir: Path) -> None:
    """An Fe file among Mn files raises AssemblyError naming it; nothing is handed on."""
    paths = [str(reference_dir / "MnO_rt_01.xdi"), str(reference_dir / "FeO_rt_01.xdi")]
    handler = Recorder()
    with pytest.raises(AssemblyError, match=r"FeO_rt_01\.xdi") as info:
        replay_files(paths, handler)
    assert info.value.source == paths[1]
    assert handler.docs == []


def test_element_override_must_agree_with_the_files(reference_dir: Path) -> None:
    """element= names the run's element; a file that states another one is refused."""
    with pytest.raises(AssemblyError, match=r"MnO_rt_01\.xdi"):
        replay_files([str(reference_dir / "MnO_rt_01.xdi")], Recorder(), element="Fe")


def test_unreadable_file_is_rejected_and_the_rest_replayed(
    reference_dir: Path, tmp_path: Path
) -> None:
    """A broken file goes to reject with a ReaderError naming it; the others make the run."""
    good = tmp_path / "a_1.xdi"
    shutil.copy(reference_dir / "MnO_rt_01.xdi", good)
    bad = tmp_path / "a_2.xdi"
    bad.write_text("# XDI/1.0\n# Element.symbol: Mn\n6500 1\nnot numbers here\n")
    missing = tmp_path / "a_3.xdi"
    handler = Recorder()
    stats = replay_files([str(good), str(bad), str(missing)], handler)
    assert (stats.rejected, stats.runs) == (2, 1)
    assert [n for n, _ in handler.pairs].count("event") == 1
    errors = [e for e, _, _ in handler.rejected]
    assert all(isinstance(e, ReaderError) for e in errors)
    assert [e.source for e in errors] == [str(bad), str(missing)]
    assert [p for _, _, p in handler.rejected] == [
        Position(file=str(bad)),
        Position(file=str(missing)),
    ]


def test_compose_refuses_an_empty_set() -> None:
    """No readable spectra: AssemblyError, not an empty run."""
    with pytest.raises(AssemblyError, match="no spectrum files"):
        compose_spectra_run([])
