"""Frame assembly from documents emitted by a real RunEngine driving ophyd simulated devices."""

from __future__ import annotations

import itertools
from typing import Any

import bluesky.plans as bp
import numpy as np
import pytest
from ophyd.sim import SynAxis, SynSignalWithRegistry

from spt_stream.core.frames import Frame
from tests.plugins.sim_xas import (
    Docs,
    QuickXasDetector,
    as_pages,
    fe_foil,
    feed,
    make_run_engine,
    registry_fe_detector,
    run_uids,
    scaler_channels,
)

GRID = list(np.linspace(7090.0, 7170.0, 25))


@pytest.fixture(scope="module")
def quick_xas_docs() -> Docs:
    """Five events of the array detector, energy grid as a config signal."""
    RE, docs = make_run_engine()
    RE(bp.count([QuickXasDetector(name="qxas")], 5, md={"element": "Fe", "edge": "K"}))
    return docs


@pytest.fixture(scope="module")
def sweep_docs() -> Docs:
    """One run of three energy sweeps (list_scan over the grid three times), I0/It/Iref."""
    RE, docs = make_run_engine()
    motor = SynAxis(name="energy")
    RE(bp.list_scan(scaler_channels(motor), motor, GRID * 3, md={"element": "Fe"}))
    return docs


def events(docs: Docs) -> list[dict[str, Any]]:
    return [doc for name, doc in docs if name == "event"]


def test_array_detector_frames_equal_emitted(quick_xas_docs: Docs) -> None:
    """One frame per event; mu, energy grid and scalars equal what the RunEngine emitted."""
    frames, ingest, dead = feed(quick_xas_docs)
    evs = events(quick_xas_docs)
    (descriptor,) = [d for n, d in quick_xas_docs if n == "descriptor"]
    grid = descriptor["configuration"]["qxas"]["data"]["qxas_energy"]
    assert len(frames) == len(evs) == 5
    for frame, ev in zip(frames, evs, strict=True):
        assert frame.run_uid == run_uids(quick_xas_docs)[0]
        assert frame.seq_num == ev["seq_num"]
        assert frame.time == ev["time"]
        assert np.array_equal(frame.mu, ev["data"]["qxas_mu"])
        assert frame.mu.tobytes() == np.asarray(ev["data"]["qxas_mu"], dtype=float).tobytes()
        assert frame.energy.tobytes() == np.asarray(grid, dtype=float).tobytes()
        assert frame.scalars == {
            "qxas_potential": ev["data"]["qxas_potential"],
            "qxas_current": ev["data"]["qxas_current"],
        }
        assert frame.provenance["event_uid"] == ev["uid"]
        assert frame.provenance["stream"] == "primary"
        assert frame.provenance["descriptor"] == descriptor["uid"]
        assert (frame.element, frame.edge, frame.mode) == ("Fe", "K", "mu")
        assert not frame.mu.flags.writeable
    assert dead.records == []
    assert ingest.counts.rejected == 0


def test_array_frames_do_not_alias_writable_input(quick_xas_docs: Docs) -> None:
    """In-process arrays are writable: the frame holds its own copy, unchanged by later edits."""
    docs = [
        (
            n,
            {
                **d,
                "data": {
                    k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in d["data"].items()
                },
            },
        )
        if n == "event"
        else (n, d)
        for n, d in quick_xas_docs
    ]
    frames, _, _ = feed(docs)
    first_event = events(docs)[0]
    before = frames[0].mu.copy()
    first_event["data"]["qxas_mu"][:] = -1.0
    assert np.array_equal(frames[0].mu, before)


def test_step_scan_one_frame_per_sweep(sweep_docs: Docs) -> None:
    """Three sweeps in one run give three frames: mu = ln(I0/It), reference = ln(It/Iref)."""
    frames, ingest, dead = feed(sweep_docs)
    evs = events(sweep_docs)
    assert [f.seq_num for f in frames] == [1, 2, 3]
    n = len(GRID)
    for k, frame in enumerate(frames):
        chunk = evs[k * n : (k + 1) * n]
        i0 = np.array([e["data"]["i0"] for e in chunk])
        it = np.array([e["data"]["it"] for e in chunk])
        iref = np.array([e["data"]["iref"] for e in chunk])
        energy = np.array([e["data"]["energy"] for e in chunk])
        assert frame.mode == "transmission"
        assert np.array_equal(frame.energy, energy)
        assert np.array_equal(frame.mu, np.log(i0 / it))
        assert frame.reference is not None
        assert np.array_equal(frame.reference, np.log(it / iref))
        assert frame.provenance["event_seq_nums"] == [e["seq_num"] for e in chunk]
        assert frame.time == chunk[-1]["time"]
    # The values follow the Fe-foil edge model: ln(I0/It) = 0.5 mu_foil(E).
    e_ref, mu_ref = fe_foil()
    assert np.allclose(frames[0].mu, 0.5 * np.interp(frames[0].energy, e_ref, mu_ref))
    assert dead.records == []
    assert ingest.counts.frames == 3


def test_step_scan_down_sweep_is_reversed() -> None:
    """An up sweep then a down sweep give two frames, both with increasing energy."""
    RE, docs = make_run_engine()
    motor = SynAxis(name="energy")
    RE(bp.list_scan(scaler_channels(motor), motor, GRID + GRID[::-1][1:]))
    frames, _, dead = feed(docs)
    assert len(frames) == 2
    assert all(np.all(np.diff(f.energy) > 0) for f in frames)
    assert frames[1].energy[-1] == GRID[-1] or frames[1].energy[-1] == GRID[-2]
    assert dead.records == []


def test_fluorescence_mode() -> None:
    """With I0 and If scalers (no It), mu = If/I0 and mode is fluorescence."""
    RE, docs = make_run_engine()
    motor = SynAxis(name="energy")
    dets = scaler_channels(motor, fluorescence=True, reference=False)
    dets = [d for d in dets if d.name != "it"]
    RE(bp.scan(dets, motor, GRID[0], GRID[-1], len(GRID)))
    frames, _, dead = feed(docs)
    (frame,) = frames
    evs = events(docs)
    i0 = np.array([e["data"]["i0"] for e in evs])
    fl = np.array([e["data"]["If"] for e in evs])
    assert frame.mode == "fluorescence"
    assert np.array_equal(frame.mu, fl / i0)
    assert frame.reference is None
    assert dead.records == []


def test_fluorescence_mode_from_md_with_transmission_channels_present() -> None:
    """md['spt']['mode'] = 'fluorescence' wins over the It channel being present."""
    RE, docs = make_run_engine()
    motor = SynAxis(name="energy")
    dets = scaler_channels(motor, fluorescence=True)
    RE(bp.scan(dets, motor, GRID[0], GRID[-1], len(GRID), md={"spt": {"mode": "fluorescence"}}))
    frames, ingest, _ = feed(docs)
    assert [f.mode for f in frames] == ["fluorescence"]
    evs = events(docs)
    assert np.array_equal(frames[0].mu, np.array([e["data"]["If"] / e["data"]["i0"] for e in evs]))
    assert ingest.counts.rejected == 0


def _interleave(a: Docs, b: Docs) -> Docs:
    out: Docs = []
    for x, y in itertools.zip_longest(a, b):
        out.extend(d for d in (x, y) if d is not None)
    return out


def test_two_runs_interleaved(quick_xas_docs: Docs, sweep_docs: Docs) -> None:
    """Documents of two runs merged alternately: each frame goes to its own run, same data."""
    alone = feed(quick_xas_docs)[0] + feed(sweep_docs)[0]
    frames, ingest, dead = feed(_interleave(quick_xas_docs, sweep_docs))
    key = {(f.run_uid, f.seq_num): f for f in alone}
    assert len(frames) == len(alone) == 8
    for f in frames:
        assert f.same_data(key[(f.run_uid, f.seq_num)])
    assert {f.run_uid for f in frames} == set(run_uids(quick_xas_docs) + run_uids(sweep_docs))
    assert ingest.counts.runs_stopped == 2
    assert dead.records == []


@pytest.mark.parametrize("fixture", ["quick_xas_docs", "sweep_docs"])
def test_event_pages_equal_events(fixture: str, request: pytest.FixtureRequest) -> None:
    """The same events packed into event_pages of 4 give identical frames."""
    docs: Docs = request.getfixturevalue(fixture)
    plain = feed(docs)[0]
    paged_docs = as_pages(docs, 4)
    assert any(n == "event_page" for n, _ in paged_docs)
    paged, ingest, dead = feed(paged_docs)
    assert len(paged) == len(plain) > 0
    assert all(a.same_data(b) for a, b in zip(plain, paged, strict=True))
    assert dead.records == []
    assert ingest.counts.rejected == 0


def test_registry_backed_detector_filled(tmp_path: Any) -> None:
    """ophyd.sim's registry-backed detector (resource/datum, NPY_SEQ files) is filled."""
    RE, docs = make_run_engine()
    det, grid = registry_fe_detector(str(tmp_path), "qxas_mu", 300)
    energy = QuickXasDetector(name="mono", npts=300).energy  # a grid signal read per event
    energy.put(grid)
    RE(bp.count([det, energy], 3, md={"spt": {"spectrum": "qxas_mu", "energy": "mono_energy"}}))
    assert any(n == "resource" for n, _ in docs)
    assert all(e["filled"] == {"qxas_mu": False} for e in events(docs))
    (resource,) = [d for n, d in docs if n == "resource"]
    frames, ingest, dead = feed(docs)
    assert len(frames) == 3, dead.records
    for k, frame in enumerate(frames):
        stored = np.load(tmp_path / f"{resource['resource_path']}_{k}.npy")
        assert frame.mu.tobytes() == stored.tobytes()
        assert np.array_equal(frame.energy, grid)
        assert frame.provenance["position"] is None
    assert ingest.counts.documents["datum"] == 3


def test_registry_backed_detector_missing_file(tmp_path: Any) -> None:
    """A datum whose file is gone is rejected with reason fill_failed; other events still work."""
    RE, docs = make_run_engine()
    det = SynSignalWithRegistry(
        func=lambda: np.linspace(0.0, 1.0, 50), name="xs_mu", save_path=str(tmp_path)
    )
    grid = QuickXasDetector(name="mono", npts=50).energy
    RE(bp.count([det, grid], 3))
    (resource,) = [d for n, d in docs if n == "resource"]
    (tmp_path / f"{resource['resource_path']}_1.npy").unlink()
    frames, ingest, dead = feed(docs)
    assert [f.seq_num for f in frames] == [1, 3]
    assert ingest.counts.rejected_by_reason == {"fill_failed": 1}
    assert dead.records[0]["seq_num"] == 2


def test_frames_are_frames(quick_xas_docs: Docs) -> None:
    """The callback receives spt_stream.core.frames.Frame instances with float64 arrays."""
    frames, _, _ = feed(quick_xas_docs)
    assert all(isinstance(f, Frame) for f in frames)
    assert all(f.mu.dtype == np.float64 and f.energy.dtype == np.float64 for f in frames)


def test_wire_round_trip_is_bit_identical(quick_xas_docs: Docs, sweep_docs: Docs) -> None:
    """Documents through the bluesky-kafka wire encoding give bit-identical frames."""
    import msgpack
    import msgpack_numpy

    for docs in (quick_xas_docs, sweep_docs):
        wire = [
            msgpack.unpackb(
                msgpack.packb([n, d], default=msgpack_numpy.encode),
                object_hook=msgpack_numpy.decode,
                raw=False,
            )
            for n, d in docs
        ]
        direct = feed(docs)[0]
        decoded = feed([(n, d) for n, d in wire])[0]
        assert len(direct) == len(decoded) > 0
        assert all(a.same_data(b) for a, b in zip(direct, decoded, strict=True))


def test_npy_stack_resource(tmp_path: Any) -> None:
    """Spec NPY: one .npy stack of spectra, each datum naming its row (event-model documents)."""
    from event_model import compose_run

    e_ref, mu_ref = fe_foil()
    grid = np.linspace(e_ref[5], e_ref[-5], 128)
    stack = np.stack([np.interp(grid - 0.2 * k, e_ref, mu_ref) for k in range(4)])
    np.save(tmp_path / "stack.npy", stack)
    run = compose_run(metadata={"spt": {"spectrum": "mu", "energy": "grid"}})
    res = run.compose_resource(
        spec="NPY", root=str(tmp_path), resource_path="stack.npy", resource_kwargs={}
    )
    desc = run.compose_descriptor(
        name="primary",
        data_keys={"mu": {"source": "s", "dtype": "array", "shape": [128], "external": "FILE:"}},
        configuration={
            "mono": {
                "data": {"grid": grid},
                "timestamps": {"grid": 0.0},
                "data_keys": {"grid": {"source": "s", "dtype": "array", "shape": [128]}},
            }
        },
    )
    docs: Docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    docs.append(("resource", res.resource_doc))
    for k in range(4):
        datum = res.compose_datum(datum_kwargs={"index": k})
        docs.append(("datum", datum))
        ev = desc.compose_event(
            data={"mu": datum["datum_id"]},
            timestamps={"mu": 0.0},
            filled={"mu": False},
            seq_num=k + 1,
        )
        docs.append(("event", ev))
    docs.append(("stop", run.compose_stop()))
    frames, ingest, dead = feed(docs)
    assert dead.records == []
    assert [f.mu.tobytes() for f in frames] == [row.tobytes() for row in stack]
    assert ingest.open_runs == []


def test_open_run_positions_name_the_start(quick_xas_docs: Docs) -> None:
    """While a run is open, its start document's position is reported (safe commit point)."""
    from spt_stream.assembly.ingest import DocumentIngest
    from spt_stream.protocols import Position

    ingest = DocumentIngest(lambda f: None)
    for offset, (name, doc) in enumerate(quick_xas_docs[:-1]):
        ingest(name, doc, Position(topic="t", partition=0, offset=100 + offset))
    uid = run_uids(quick_xas_docs)[0]
    assert ingest.open_run_positions() == {uid: Position(topic="t", partition=0, offset=100)}
    ingest(*quick_xas_docs[-1])
    assert ingest.open_run_positions() == {}
