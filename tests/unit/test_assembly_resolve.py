"""Which keys hold the spectrum: md['spt'] vs beamline profile vs heuristics, and profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from event_model import compose_run
from ophyd.sim import SynAxis, SynSignal

from spt_stream.assembly import BeamlineProfile, load_profile
from spt_stream.assembly.ingest import DocumentIngest
from spt_stream.config import PROFILE_DIR, AssemblySettings
from spt_stream.core.frames import RunInfo
from spt_stream.errors import ConfigError
from spt_stream.sinks.deadletter import MemoryDeadLetter
from tests.plugins.sim_xas import Docs, QuickXasDetector, make_run_engine, scaler_channels


def ingest_all(
    docs: Docs, **kwargs: Any
) -> tuple[list[Any], list[RunInfo], DocumentIngest, MemoryDeadLetter]:
    frames: list[Any] = []
    infos: list[RunInfo] = []
    dead = MemoryDeadLetter()
    ingest = DocumentIngest(frames.append, on_run_start=infos.append, dead_letter=dead, **kwargs)
    for name, doc in docs:
        ingest(name, doc)
    return frames, infos, ingest, dead


@pytest.fixture(scope="module")
def two_detector_docs() -> Docs:
    """Two array detectors in one run: heuristics cannot choose between qexafs_mu and sdd_mu."""
    RE, docs = make_run_engine()
    dets = [QuickXasDetector(name="qexafs"), QuickXasDetector(name="sdd", shift_ev=0.2)]
    RE(bp.count(dets, 3))
    return docs


def with_md(docs: Docs, **md: Any) -> Docs:
    return [(n, {**d, **md}) if n == "start" else (n, d) for n, d in docs]


def test_heuristics_quick_xas() -> None:
    """One array key + a config energy grid resolve by heuristics; element/edge from md."""
    RE, docs = make_run_engine()
    RE(bp.count([QuickXasDetector(name="det")], 2, md={"element": "Fe", "edge": "K"}))
    frames, (info,), _, dead = ingest_all(docs)
    assert info.resolved_by == "heuristic"
    assert info.layout == "array"
    assert info.mode == "mu"
    assert dict(info.keys) == {"spectrum": "det_mu", "energy": "det_energy"}
    assert (info.element, info.edge) == ("Fe", "K")
    assert info.metadata["plan_name"] == "count"
    assert len(frames) == 2
    assert dead.records == []


def test_ambiguous_heuristics_skip_run_once(two_detector_docs: Docs) -> None:
    """Two candidate spectra: one AssemblyError dead-lettered for the run, not one per event."""
    frames, infos, ingest, dead = ingest_all(two_detector_docs)
    assert frames == []
    assert infos == []
    assert len(dead.records) == 1
    record = dead.records[0]
    assert record["reason"] == "ambiguous"
    assert record["error"] == "AssemblyError"
    assert "qexafs_mu" in record["message"]
    assert "sdd_mu" in record["message"]
    assert record["run_uid"] == two_detector_docs[0][1]["uid"]
    counts = ingest.counts
    assert counts.runs_skipped == 1
    assert counts.ignored_events == 3
    assert counts.documents_seen == counts.accepted + counts.rejected
    assert counts.rejected == 1


def test_profile_resolves_what_heuristics_cannot(two_detector_docs: Docs) -> None:
    """The quick-xas profile lists qexafs_mu/qexafs_energy first: it picks that detector."""
    frames, (info,), _, dead = ingest_all(
        two_detector_docs, settings=AssemblySettings(profile="quick-xas")
    )
    assert info.resolved_by == "profile:quick-xas"
    assert dict(info.keys) == {"spectrum": "qexafs_mu", "energy": "qexafs_energy"}
    assert info.edge == "K"  # the profile's default edge
    events = [d for n, d in two_detector_docs if n == "event"]
    assert [f.mu.tobytes() for f in frames] == [e["data"]["qexafs_mu"].tobytes() for e in events]
    assert "sdd_potential" in frames[0].scalars
    assert "qexafs_potential" in frames[0].scalars
    assert dead.records == []


def test_md_wins_over_profile(two_detector_docs: Docs) -> None:
    """md['spt'] naming the other detector overrides the profile; element/edge from md['spt']."""
    docs = with_md(
        two_detector_docs,
        spt={"spectrum": "sdd_mu", "energy": "sdd_energy", "element": "Fe", "edge": "K"},
    )
    frames, (info,), _, _ = ingest_all(docs, settings=AssemblySettings(profile="quick-xas"))
    assert info.resolved_by == "md"
    assert dict(info.keys) == {"spectrum": "sdd_mu", "energy": "sdd_energy"}
    events = [d for n, d in docs if n == "event"]
    assert [f.mu.tobytes() for f in frames] == [e["data"]["sdd_mu"].tobytes() for e in events]
    assert frames[0].element == "Fe"


def test_md_naming_a_missing_key_is_an_error(two_detector_docs: Docs) -> None:
    """A key named in md['spt'] that the descriptor lacks is never silently replaced."""
    docs = with_md(two_detector_docs, spt={"spectrum": "nope_mu"})
    frames, _, ingest, dead = ingest_all(docs, settings=AssemblySettings(profile="quick-xas"))
    assert frames == []
    assert [r["reason"] for r in dead.records] == ["unknown_key"]
    assert "nope_mu" in dead.records[0]["message"]
    assert ingest.counts.rejected_by_reason == {"unknown_key": 1}


def test_invalid_md_spt_rejected_at_start(two_detector_docs: Docs) -> None:
    """A misspelt md['spt'] field is a bad_hints AssemblyError on the start document."""
    docs = with_md(two_detector_docs, spt={"spectra": "sdd_mu"})
    frames, _, ingest, dead = ingest_all(docs)
    assert frames == []
    assert [(r["reason"], r["name"]) for r in dead.records] == [("bad_hints", "start")]
    assert ingest.counts.ignored_events == 3


@pytest.fixture(scope="module")
def beamline_step_docs() -> Docs:
    """A step scan with beamline-style names: sclr_i0/sclr_it/sclr_ir and a dcm_energy motor."""
    RE, docs = make_run_engine()
    motor = SynAxis(name="dcm_energy")
    chans = scaler_channels(motor)
    for sig, name in zip(chans, ["sclr_i0", "sclr_it", "sclr_ir"], strict=True):
        sig.name = name
    RE(bp.scan(chans, motor, 7090.0, 7170.0, 20))
    return docs


def test_step_scan_profile(beamline_step_docs: Docs) -> None:
    """The step-scan profile maps the scaler channels and the DCM energy."""
    frames, (info,), _, dead = ingest_all(
        beamline_step_docs, settings=AssemblySettings(profile="step-scan")
    )
    assert info.resolved_by == "profile:step-scan"
    assert info.layout == "step"
    assert dict(info.keys) == {
        "energy": "dcm_energy",
        "i0": "sclr_i0",
        "it": "sclr_it",
        "iref": "sclr_ir",
    }
    assert len(frames) == 1
    assert frames[0].npts == 20
    assert dead.records == []


def test_step_scan_heuristics(beamline_step_docs: Docs) -> None:
    """Without a profile, token matching finds sclr_i0/sclr_it and the plan's motor."""
    frames, (info,), _, _ = ingest_all(beamline_step_docs)
    assert info.resolved_by == "heuristic"
    assert info.keys["i0"] == "sclr_i0"
    assert info.keys["it"] == "sclr_it"
    assert info.keys["energy"] == "dcm_energy"
    assert len(frames) == 1


def test_stream_from_md() -> None:
    """md['spt']['stream'] selects the stream; events of other streams are ignored."""
    RE, docs = make_run_engine()
    det = QuickXasDetector(name="qxas")
    temp = SynSignal(func=lambda: 300.0, name="temperature")

    @bpp.run_decorator(md={"spt": {"stream": "xas"}})
    def plan() -> Any:
        for _ in range(2):
            yield from bps.trigger_and_read([temp])
            yield from bps.trigger_and_read([det], name="xas")

    RE(plan())
    frames, (_info,), ingest, dead = ingest_all(docs)
    assert len(frames) == 2
    assert all(f.provenance["stream"] == "xas" for f in frames)
    assert ingest.counts.ignored_events == 2
    assert dead.records == []


def test_run_without_the_stream_is_reported_at_stop() -> None:
    """A run whose spectrum stream never appears is dead-lettered once, at its stop."""
    RE, docs = make_run_engine()
    RE(bp.count([QuickXasDetector(name="qxas")], 2, md={"spt": {"stream": "missing"}}))
    frames, infos, _, dead = ingest_all(docs)
    assert frames == []
    assert infos == []
    assert [(r["reason"], r["name"]) for r in dead.records] == [("no_stream", "stop")]
    assert "'missing'" in dead.records[0]["message"]


def test_kev_units_are_converted() -> None:
    """An energy grid whose descriptor units are keV is scaled to eV."""
    grid_kev = np.linspace(7.6, 7.8, 64)
    run = compose_run(metadata={"spt": {"spectrum": "mu", "energy": "grid"}})
    desc = run.compose_descriptor(
        name="primary",
        data_keys={"mu": {"source": "s", "dtype": "array", "shape": [64]}},
        configuration={
            "mono": {
                "data": {"grid": grid_kev},
                "timestamps": {"grid": 0.0},
                "data_keys": {
                    "grid": {"source": "s", "dtype": "array", "shape": [64], "units": "keV"}
                },
            }
        },
    )
    ev = desc.compose_event(data={"mu": np.ones(64)}, timestamps={"mu": 0.0}, seq_num=1)
    docs = [
        ("start", run.start_doc),
        ("descriptor", desc.descriptor_doc),
        ("event", ev),
        ("stop", run.compose_stop()),
    ]
    frames, _, _, dead = ingest_all(docs)
    assert dead.records == []
    assert np.allclose(frames[0].energy, grid_kev * 1000.0)


def test_example_profiles_load() -> None:
    """Every packaged profile validates and is found by name."""
    names = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    assert {"quick-xas", "step-scan"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert isinstance(profile, BeamlineProfile)
        assert profile.name == name


def test_profile_errors_name_the_file(tmp_path: Path) -> None:
    """A missing or invalid profile is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="not found"):
        load_profile("no-such-beamline")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nspectra: [x]\n")
    with pytest.raises(ConfigError, match="spectra") as info:
        load_profile(bad)
    assert info.value.source == str(bad)
    with pytest.raises(ConfigError):
        DocumentIngest(lambda f: None, settings=AssemblySettings(profile=str(bad)))


def test_profile_accepts_a_single_string(tmp_path: Path) -> None:
    """A role given as one string is a one-candidate list; 'if' is the fluorescence role."""
    path = tmp_path / "mine.yaml"
    path.write_text("spectrum: my_mu\nif: [pips]\n")
    profile = load_profile(path)
    assert profile.name == "mine"
    assert profile.candidates("spectrum") == ("my_mu",)
    assert profile.candidates("if") == ("pips",)
