"""Bad input: every problem gives a log line (run uid, seq_num), a counter and a dead letter,
and the documents after it still produce frames."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import bluesky.plans as bp
import numpy as np
import pytest
from event_model import pack_event_page
from ophyd import Signal
from ophyd.sim import SynAxis

from spt_stream.assembly.ingest import DocumentIngest
from spt_stream.config import AssemblySettings
from spt_stream.core.frames import Frame
from spt_stream.errors import DecodeError
from spt_stream.protocols import DocumentHandler, Position
from spt_stream.sinks.deadletter import DeadLetterFile, MemoryDeadLetter
from spt_stream.transports.inprocess import InProcessConsumer
from tests.plugins.sim_xas import Docs, QuickXasDetector, feed, make_run_engine, scaler_channels

GRID = list(np.linspace(7090.0, 7170.0, 25))


@pytest.fixture(scope="module")
def qxas() -> Docs:
    """Quick-XAS run of 4 events whose energy grid is also read per event (mono_energy)."""
    RE, docs = make_run_engine()
    det = QuickXasDetector(name="qxas", npts=200)
    mono = Signal(name="mono_energy", value=det.energy.get())
    RE(bp.count([det, mono], 4))
    return docs


@pytest.fixture(scope="module")
def qxas_config() -> Docs:
    """Quick-XAS run of 4 events with the grid only as a configuration value."""
    RE, docs = make_run_engine()
    RE(bp.count([QuickXasDetector(name="qxas", npts=200)], 4))
    return docs


@pytest.fixture(scope="module")
def steps() -> Docs:
    """A step scan over 25 energies, once."""
    RE, docs = make_run_engine()
    motor = SynAxis(name="energy")
    RE(bp.list_scan(scaler_channels(motor), motor, GRID))
    return docs


def run_uid(docs: Docs) -> str:
    return str(docs[0][1]["uid"])


def changed(arr: Any, index: int, value: float) -> Any:
    """A copy of ``arr`` with one value changed (RunEngine events may share one array object)."""
    out = np.array(arr, dtype=float)
    out[index] = value
    return out


def edit_event(docs: Docs, seq_num: int, edit: Callable[[dict[str, Any]], None]) -> Docs:
    """A deep copy of ``docs`` with event ``seq_num`` changed by ``edit``."""
    out = copy.deepcopy(docs)
    for name, doc in out:
        if name == "event" and doc["seq_num"] == seq_num:
            edit(doc)
    return out


def assert_one_problem(
    caplog: pytest.LogCaptureFixture,
    ingest: DocumentIngest,
    dead: MemoryDeadLetter,
    reason: str,
    *,
    run: str | None,
    seq_num: int | None,
) -> None:
    """Exactly one log line, one counter and one dead-letter record for ``reason``."""
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert f"reason={reason}" in lines[0]
    assert f"run_uid={run}" in lines[0]
    assert f"seq_num={seq_num}" in lines[0]
    assert dict(ingest.counts.rejected_by_reason) == {reason: 1}
    assert len(dead.records) == 1
    assert dead.records[0]["reason"] == reason
    assert dead.records[0]["run_uid"] == run
    assert dead.records[0]["seq_num"] == seq_num
    counts = ingest.counts
    assert counts.documents_seen == counts.accepted + counts.rejected


def test_nan_in_spectrum(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """A NaN in one spectrum rejects that event only."""
    docs = edit_event(
        qxas,
        2,
        lambda d: d["data"].__setitem__("qxas_mu", changed(d["data"]["qxas_mu"], 7, np.nan)),
    )
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "nonfinite", run=run_uid(qxas), seq_num=2)
    assert [f.seq_num for f in frames] == [1, 3, 4]
    assert "index 7" in dead.records[0]["message"]


def test_inf_in_energy(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """An inf in a per-event energy array rejects that event."""
    docs = edit_event(
        qxas,
        3,
        lambda d: d["data"].__setitem__(
            "mono_energy", changed(d["data"]["mono_energy"], 0, np.inf)
        ),
    )
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "nonfinite", run=run_uid(qxas), seq_num=3)
    assert [f.seq_num for f in frames] == [1, 2, 4]


def test_non_monotonic_energy(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """Two swapped energies make the grid non-monotonic: the event is rejected."""

    def swap(d: dict[str, Any]) -> None:
        e = np.array(d["data"]["mono_energy"])
        e[10], e[11] = e[11], e[10]
        d["data"]["mono_energy"] = e

    frames, ingest, dead = feed(edit_event(qxas, 1, swap))
    assert_one_problem(caplog, ingest, dead, "non_monotonic_energy", run=run_uid(qxas), seq_num=1)
    assert "E[10]" in dead.records[0]["message"]
    assert [f.seq_num for f in frames] == [2, 3, 4]


def test_empty_spectrum(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """An empty spectrum array is rejected as empty."""
    docs = edit_event(qxas, 4, lambda d: d["data"].__setitem__("qxas_mu", np.array([])))
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "empty", run=run_uid(qxas), seq_num=4)
    assert len(frames) == 3


def test_mismatched_lengths(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """A spectrum one point shorter than its energy grid is rejected."""
    docs = edit_event(
        qxas, 2, lambda d: d["data"].__setitem__("qxas_mu", d["data"]["qxas_mu"][:-1])
    )
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "length_mismatch", run=run_uid(qxas), seq_num=2)
    assert "199 points" in dead.records[0]["message"]
    assert len(frames) == 3


def test_too_large_array(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """An array beyond max_points is refused before any conversion."""
    docs = edit_event(qxas, 1, lambda d: d["data"].__setitem__("qxas_mu", [0.0] * 5000))
    frames, ingest, dead = feed(docs, settings=AssemblySettings(max_points=1000))
    assert_one_problem(caplog, ingest, dead, "too_large", run=run_uid(qxas), seq_num=1)
    assert len(frames) == 3


def test_wrong_type_spectrum(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """A string where the spectrum should be is refused."""
    docs = edit_event(qxas, 2, lambda d: d["data"].__setitem__("qxas_mu", "garbage"))
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "not_array", run=run_uid(qxas), seq_num=2)
    assert len(frames) == 3


def test_missing_required_field(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """An event without 'data' is refused before routing, naming its run and seq_num."""
    docs = edit_event(qxas, 3, lambda d: d.pop("data"))
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "missing_field", run=run_uid(qxas), seq_num=3)
    assert "'data'" in dead.records[0]["message"]
    assert len(frames) == 3


def test_event_before_descriptor(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """An event arriving before its descriptor is refused (its run cannot be told yet)."""
    docs = list(qxas)
    i_desc = next(i for i, (n, _) in enumerate(docs) if n == "descriptor")
    i_ev = next(i for i, (n, _) in enumerate(docs) if n == "event")
    docs.insert(i_desc, docs.pop(i_ev))
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "event_before_descriptor", run=None, seq_num=1)
    assert [f.seq_num for f in frames] == [2, 3, 4]


def test_unknown_document_name(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """An unknown document name is counted under '<unknown>' and dead-lettered."""
    docs = list(qxas)
    docs.insert(2, ("bogus", {"uid": "x"}))
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "unknown_name", run=None, seq_num=None)
    assert ingest.counts.documents["<unknown>"] == 1
    assert len(frames) == 4


def test_event_page_unequal_columns(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """An event_page whose columns differ in length is refused whole."""
    docs = [(n, d) for n, d in qxas if n != "event"]
    events = [d for n, d in qxas if n == "event"]
    page = dict(pack_event_page(*events[:2]))
    page["seq_num"] = page["seq_num"][:1]
    good = dict(pack_event_page(*events[2:]))
    docs[2:2] = [("event_page", page), ("event_page", good)]
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "length_mismatch", run=run_uid(qxas), seq_num=None)
    assert [f.seq_num for f in frames] == [3, 4]


def test_bad_event_inside_a_page(qxas: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """One NaN event inside a page: that event is dead-lettered, the others become frames."""
    docs = edit_event(
        qxas,
        2,
        lambda d: d["data"].__setitem__("qxas_mu", changed(d["data"]["qxas_mu"], 0, np.nan)),
    )
    events = [d for n, d in docs if n == "event"]
    paged = [(n, d) for n, d in docs if n != "event"]
    paged.insert(2, ("event_page", dict(pack_event_page(*events))))
    frames, ingest, dead = feed(paged)
    assert_one_problem(caplog, ingest, dead, "nonfinite", run=run_uid(qxas), seq_num=2)
    assert [f.seq_num for f in frames] == [1, 3, 4]
    assert ingest.counts.rejected == 1  # the page document


def test_bad_energy_grid_in_configuration(
    qxas_config: Docs, caplog: pytest.LogCaptureFixture
) -> None:
    """A NaN in the configuration grid skips the run: one record, its events ignored."""
    docs = copy.deepcopy(qxas_config)
    (desc,) = [d for n, d in docs if n == "descriptor"]
    desc["configuration"]["qxas"]["data"]["qxas_energy"][5] = np.nan
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "nonfinite", run=run_uid(qxas_config), seq_num=None)
    assert frames == []
    assert ingest.counts.ignored_events == 4
    assert dead.records[0]["error"] == "AssemblyError"


def test_duplicate_start_and_unknown_stop(
    qxas_config: Docs, caplog: pytest.LogCaptureFixture
) -> None:
    """A repeated start and a stop of an unknown run are refused; the run still completes."""
    docs = list(qxas_config)
    docs.insert(1, docs[0])
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "duplicate", run=run_uid(qxas_config), seq_num=None)
    assert len(frames) == 4
    caplog.clear()
    ingest("stop", {"uid": "s", "run_start": "no-such-run", "time": 0.0})
    assert "run_uid=no-such-run" in caplog.records[-1].getMessage()
    assert ingest.counts.rejected_by_reason["unknown_run"] == 1


def test_late_event_after_stop(qxas_config: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """An event arriving after its run's stop is refused as closed_run, naming the run."""
    docs = list(qxas_config)
    late = next(d for n, d in docs if n == "event")
    docs.append(("event", late))
    frames, ingest, dead = feed(docs)
    assert_one_problem(caplog, ingest, dead, "closed_run", run=run_uid(qxas_config), seq_num=1)
    assert len(frames) == 4


def test_not_a_mapping(caplog: pytest.LogCaptureFixture) -> None:
    """A document that is not a mapping is refused."""
    _frames, ingest, dead = feed([("event", ["not", "a", "dict"])])  # type: ignore[list-item]
    assert_one_problem(caplog, ingest, dead, "bad_field", run=None, seq_num=None)


def test_step_scan_nan_point_and_short_sweep(steps: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """A NaN I0 drops that point; a trailing 3-point sweep is too short (reported, not a fault)."""
    docs = edit_event(steps, 5, lambda d: d["data"].__setitem__("i0", float("nan")))
    motor_events = [d for n, d in docs if n == "event"]
    extra = []
    for k, ev in enumerate(motor_events[:3]):
        new = copy.deepcopy(ev)
        new["seq_num"] = 100 + k
        new["uid"] = f"extra-{k}"
        extra.append(("event", new))
    docs[-1:-1] = extra  # before the stop document
    frames, ingest, dead = feed(docs)
    assert [f.seq_num for f in frames] == [1]
    assert frames[0].npts == 24
    assert 5 not in frames[0].provenance["event_seq_nums"]
    reasons = [r["reason"] for r in dead.records]
    assert reasons == ["nonfinite", "too_short"]
    assert dead.records[1]["seq_num"] == 2  # the sweep number
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2
    assert f"run_uid={run_uid(steps)}" in lines[1]
    counts = ingest.counts
    assert counts.rejected == 1  # only the NaN event was a document fault
    assert counts.documents_seen == counts.accepted + counts.rejected


def test_reject_undecodable_bytes(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """reject() accounts for undecodable input and writes it to the dead-letter file."""
    sink = DeadLetterFile(tmp_path / "dead.jsonl")
    ingest = DocumentIngest(lambda f: None, dead_letter=sink)
    pos = Position(topic="bl.bluesky.runengine.documents", partition=0, offset=42)
    ingest.reject(DecodeError("not msgpack", source=str(pos)), b"\x00\xff", pos)
    sink.close()
    text = (tmp_path / "dead.jsonl").read_text()
    assert '"reason": "undecodable"' in text
    assert "[0]@42" in text
    assert "AP8=" in text
    assert ingest.counts.rejected == ingest.counts.documents_seen == 1
    assert "not msgpack" in caplog.records[-1].getMessage()


def test_failing_dead_letter_sink_is_counted(qxas: Docs) -> None:
    """A dead-letter sink that raises never breaks ingest; failures are counted."""

    class Broken:
        def write(self, record: Any) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            pass

    ingest = DocumentIngest(lambda f: None, dead_letter=Broken())
    ingest("bogus", {})
    assert ingest.counts.dead_letter_failures == 1
    assert ingest.counts.rejected == 1


def test_eviction_bounds_open_runs(qxas_config: Docs, caplog: pytest.LogCaptureFixture) -> None:
    """Beyond max_open_runs the least recently active run is closed with a synthetic stop."""
    stops: list[tuple[str, Any]] = []
    frames: list[Frame] = []
    ingest = DocumentIngest(
        frames.append,
        on_run_stop=lambda uid, doc: stops.append((uid, doc)),
        settings=AssemblySettings(max_open_runs=2),
    )
    starts = []
    for k in range(3):
        docs = copy.deepcopy([(n, d) for n, d in qxas_config if n != "stop"])
        uid = f"run-{k}"
        for name, doc in docs:
            if name == "start":
                doc["uid"] = uid
            elif name == "descriptor":
                doc["run_start"] = uid
                doc["uid"] = f"desc-{k}"
            elif name == "event":
                doc["descriptor"] = f"desc-{k}"
            ingest(name, doc)
        starts.append(uid)
    assert ingest.open_runs == ["run-1", "run-2"]
    assert [(u, d["exit_status"]) for u, d in stops] == [("run-0", "abort")]
    assert any("evicting run run-0" in r.getMessage() for r in caplog.records)
    assert ingest.counts.runs_evicted == 1
    assert len(frames) == 12
    assert ingest.evict_idle(0.0) == ["run-1", "run-2"]
    assert ingest.open_runs == []


def test_callback_errors_propagate(qxas_config: Docs) -> None:
    """An exception in on_frame is the engine's own fault: it propagates, counted apart."""

    def boom(frame: Frame) -> None:
        raise RuntimeError("sink down")

    ingest = DocumentIngest(boom)
    first_event = next(i for i, (n, _) in enumerate(qxas_config) if n == "event")
    for name, doc in qxas_config[:first_event]:
        ingest(name, doc)
    with pytest.raises(RuntimeError, match="sink down"):
        ingest(*qxas_config[first_event])
    counts = ingest.counts
    assert counts.callback_errors == 1
    assert counts.rejected == 0
    assert counts.documents_seen == counts.accepted


def test_inprocess_consumer_live(caplog: pytest.LogCaptureFixture) -> None:
    """Subscribed to a live RunEngine, the consumer feeds the ingest with positions."""
    frames: list[Frame] = []
    ingest = DocumentIngest(frames.append)
    consumer = InProcessConsumer(ingest)
    assert isinstance(ingest, DocumentHandler)
    RE, docs = make_run_engine()
    RE.subscribe(consumer)
    RE(bp.count([QuickXasDetector(name="qxas", npts=100)], 3))
    assert [f.seq_num for f in frames] == [1, 2, 3]
    assert [f.provenance["position"].offset for f in frames] == [2, 3, 4]
    assert consumer.documents == len(docs)
    assert consumer.errors == 0
    # Identical to replaying the collected documents afterwards.
    replay = feed(docs)[0]
    assert all(a.same_data(b) for a, b in zip(frames, replay, strict=True))


def test_inprocess_consumer_shields_the_run_engine(caplog: pytest.LogCaptureFixture) -> None:
    """A failing downstream never aborts the scan: the consumer logs and counts."""

    def boom(frame: Frame) -> None:
        raise RuntimeError("sink down")

    consumer = InProcessConsumer(DocumentIngest(boom))
    RE, docs = make_run_engine()
    RE.subscribe(consumer)
    RE(bp.count([QuickXasDetector(name="qxas", npts=100)], 2))
    assert docs[-1][1]["exit_status"] == "success"
    assert consumer.errors == 2
    assert any("sink down" in (r.exc_text or "") for r in caplog.records)
