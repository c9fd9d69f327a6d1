"""10,000 malformed and hostile Kafka messages through the real decoder into a real engine.

The cases (tests/_hostile_cases.py, seeded: ``SPT_HOSTILE_SEED=<n>`` replays another draw) are
message values: random bytes, random msgpack, truncated and bit-flipped valid messages, lying
msgpack-numpy arrays, documents with missing or wrong-typed fields, events of unknown
descriptors, arrays beyond ``assembly.max_points``, NaN/inf spectra, wrong shapes, bad
``seq_num`` s and bad names, mixed with valid events of two runs. Each is delivered exactly as
:class:`~spt_stream.transports.kafka.KafkaDocumentSource` delivers a message: decoded by
:func:`~spt_stream.transports.wire.decode_document`; a :class:`DecodeError` goes to
``engine.reject(error, value, position)``, anything else to ``engine(name, doc, position)``,
and an :class:`SptError` raised by that to ``engine.reject``. The engine comes from
:func:`~spt_stream.engine.pipeline.build_pipeline` (packaged model, Zarr trace, memory dead letter).

What "accounted for" means, per case (the deltas of ``engine.ingest.counts`` across it):

* ``documents_seen`` grows by exactly 1, and exactly one of ``accepted``/``rejected`` by 1;
* **dead-lettered**: ``rejected`` grew, at least one dead-letter record was written, each with a
  ``reason`` and a message, and ``rejected_by_reason`` grew by the records written;
* **frame**: ``accepted`` grew and ``frames`` grew by 1: the frame went to the model and sinks;
* **accepted**: ``accepted`` grew and no frame: a start, descriptor, stop or ignored document.

The three outcome counts sum to the 10,000 cases. Every frame counted reaches the sinks (a
recording sink appended to the engine's sinks sees exactly that many rows) and the Zarr trace
holds exactly the distinct ``seq_num`` s among them (a bit flip may repeat one; the trace keeps
the first). Per category, what must happen (see ``EXPECTED``): e.g. truncated messages are all
undecodable, spectra beyond ``max_points`` all ``too_large``, NaN/inf spectra dead-lettered as
``nonfinite`` or stored with the NAN quality flag. No exception escapes the engine. Afterwards
the same engine turns a valid run into its complete trace.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spt_stream.config import load_settings
from spt_stream.engine import Engine
from spt_stream.engine.pipeline import ModelRunner, Pipeline, build_pipeline
from spt_stream.errors import DecodeError, SptError
from spt_stream.normalize.flags import QualityFlag
from spt_stream.protocols import Position
from spt_stream.sinks.deadletter import MemoryDeadLetter
from spt_stream.sinks.rows import TraceRows
from spt_stream.sinks.zarr_trace import open_trace
from spt_stream.transports.wire import decode_document, encode_document
from tests._hostile_cases import CATEGORIES, MAX_POINTS, Case, generate_cases
from tests._spectra_docs import compose_docs

SEED = int(os.environ.get("SPT_HOSTILE_SEED", "20240612"))
N_CASES = 10_000

#: Per category: the outcomes allowed, and the dead-letter reasons allowed (None: any).
EXPECTED: dict[str, tuple[set[str], set[str] | None]] = {
    "valid": ({"frame", "accepted"}, set()),
    "random_bytes": ({"dead-lettered", "accepted"}, None),
    "random_msgpack": ({"dead-lettered", "accepted"}, None),
    "truncated": ({"dead-lettered"}, {"undecodable"}),
    "bitflip": ({"dead-lettered", "frame", "accepted"}, None),
    "hostile_numpy": ({"dead-lettered"}, {"undecodable"}),
    "missing_field": ({"dead-lettered"}, {"missing_field"}),
    "wrong_type": ({"dead-lettered", "frame"}, None),
    "unknown_descriptor": ({"dead-lettered"}, {"event_before_descriptor"}),
    "huge_array": ({"dead-lettered"}, {"too_large"}),
    "nan_spectrum": ({"dead-lettered", "frame"}, {"nonfinite"}),
    "wrong_shape": ({"dead-lettered"}, None),
    "bad_seq_num": ({"dead-lettered", "frame"}, {"bad_field"}),
    "bad_name": ({"dead-lettered", "accepted"}, None),
}


@dataclass
class Ledger:
    """Outcome counts per category, and the seq_nums of frames by category."""

    outcomes: Counter[tuple[str, str]]
    reasons: Counter[tuple[str, str]]
    frame_seq: dict[str, list[int]]


class RecordingSink:
    """A TraceSink that keeps the ``(seq_num, flags)`` of every row the engine hands it."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[int, int]]] = {}
        self.finalized: dict[str, str] = {}

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        self.rows.setdefault(run_uid, [])

    def write(self, run_uid: str, rows: TraceRows) -> None:
        flags = np.asarray(rows.columns["flags"]).tolist()
        self.rows[run_uid].extend(zip(rows.seq_num.tolist(), flags, strict=True))

    def finalize(self, run_uid: str, status: str) -> None:
        self.finalized[run_uid] = status

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def stats(self) -> Mapping[str, int | float]:
        return {"rows": sum(len(r) for r in self.rows.values())}


def deliver(engine: Engine, value: bytes, position: Position) -> None:
    """One message, handled as ``KafkaDocumentSource._deliver`` handles it."""
    try:
        name, doc = decode_document(value)
    except DecodeError as exc:
        engine.reject(DecodeError(exc.message, source=str(position)), value, position)
        return
    try:
        engine(name, doc, position)
    except SptError as exc:
        engine.reject(exc, value, position)


@pytest.fixture(scope="module")
def model() -> ModelRunner:
    """The packaged default model, loaded once for the module."""
    return ModelRunner(None, device="cpu")


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, model: ModelRunner
) -> Iterator[tuple[Pipeline, Path]]:
    """One engine for the module (the model loads once), Zarr root in a temporary directory."""
    root = tmp_path_factory.mktemp("hostile")
    settings = load_settings(
        None,
        {"zarr": {"root": root}, "dead_letter": {"path": None},
         "assembly": {"max_points": MAX_POINTS}},
    )  # fmt: skip
    pipe = build_pipeline(settings, model=model, dead_letter=MemoryDeadLetter())
    yield pipe, root
    pipe.close()


def run_cases(engine: Engine, dead: MemoryDeadLetter, cases: list[Case]) -> Ledger:
    """Deliver every case and classify it from the counters (see the module docstring)."""
    ledger = Ledger(Counter(), Counter(), {k: [] for k in CATEGORIES})
    for i, case in enumerate(cases):
        c = engine.ingest.counts
        seen, acc, rej, frames = c.documents_seen, c.accepted, c.rejected, c.frames
        by_reason, records = sum(c.rejected_by_reason.values()), len(dead.records)
        try:
            deliver(engine, case.value, Position("hostile", 0, i))
        except Exception as exc:
            pytest.fail(f"case {i} ({case.category}, seed {SEED}) escaped: {exc!r}")
        c = engine.ingest.counts
        new = dead.records[records:]
        where = f"case {i} ({case.category}, seed {SEED}): {c.as_dict()} {new}"
        assert c.documents_seen - seen == 1, where
        assert (c.accepted - acc, c.rejected - rej) in ((1, 0), (0, 1)), where
        assert sum(c.rejected_by_reason.values()) - by_reason == len(new), where
        if c.rejected > rej:
            outcome = "dead-lettered"
            assert new, where
            for rec in new:
                assert isinstance(rec["reason"], str), where
                assert rec["reason"], where
                assert rec["message"], where
                ledger.reasons[(case.category, rec["reason"])] += 1
        elif c.frames > frames:
            outcome = "frame"
            assert c.frames - frames == 1, where
            ledger.frame_seq[case.category].append(-1 if case.seq_num is None else case.seq_num)
        else:
            outcome = "accepted"
        allowed, _ = EXPECTED[case.category]
        assert outcome in allowed, where
        ledger.outcomes[(case.category, outcome)] += 1
    return ledger


def test_ten_thousand_hostile_messages_are_all_accounted_for(
    pipeline: tuple[Pipeline, Path],
) -> None:
    """Nothing escapes; every one of the 10,000 cases is a frame, an accepted document or a
    dead-letter record with its reason; frames reach the trace exactly once per seq_num."""
    print(f"hostile-input seed: SPT_HOSTILE_SEED={SEED}")
    pipe, root = pipeline
    engine, dead = pipe.engine, pipe.dead_letter
    assert isinstance(dead, MemoryDeadLetter)
    recorder = RecordingSink()
    engine.sinks.append(recorder)  # sees every row the engine writes, after the Zarr trace
    cases = generate_cases(SEED)
    assert len(cases) == N_CASES
    assert Counter(c.category for c in cases) == CATEGORIES
    logging.disable(logging.WARNING)  # one warning per rejected case: 9,000 log lines
    try:
        t0 = time.perf_counter()
        ledger = run_cases(engine, dead, cases)
        engine.idle()
        engine.flush_sinks()
        elapsed = time.perf_counter() - t0
    finally:
        logging.disable(logging.NOTSET)
    by_outcome = Counter(outcome for (_, outcome) in ledger.outcomes.elements())
    print(f"{N_CASES} cases in {elapsed:.1f} s: {dict(by_outcome)}")
    print("by category:", dict(sorted(ledger.outcomes.items())))
    print("dead-letter reasons:", dict(sorted(ledger.reasons.items())))

    # every case counted once, in exactly one outcome
    assert sum(by_outcome.values()) == N_CASES
    counts = engine.ingest.counts
    assert counts.documents_seen == counts.accepted + counts.rejected == N_CASES
    assert counts.rejected == by_outcome["dead-lettered"]
    assert len(dead.records) == sum(counts.rejected_by_reason.values())
    assert counts.frames == by_outcome["frame"]
    assert counts.callback_errors == counts.dead_letter_failures == 0
    # per category: only the allowed outcomes and reasons (checked per case), and these totals
    for category, n in CATEGORIES.items():
        got = sum(v for (cat, _), v in ledger.outcomes.items() if cat == category)
        assert got == n, category
        _, reasons = EXPECTED[category]
        seen = {r for (cat, r), _ in ledger.reasons.items() if cat == category}
        assert reasons is None or seen <= reasons, (category, seen)
    assert ledger.outcomes[("valid", "frame")] == CATEGORIES["valid"] - 6  # 2x start/desc/stop
    for category in ("random_bytes", "truncated", "hostile_numpy", "missing_field", "huge_array"):
        assert ledger.outcomes[(category, "dead-lettered")] == CATEGORIES[category], category

    # every frame reached the sinks; the trace holds each distinct seq_num once
    run_uids = sorted(recorder.rows)
    assert len(run_uids) == 2
    assert sum(len(rows) for rows in recorder.rows.values()) == counts.frames
    flags_of: dict[int, int] = {}
    for uid in run_uids:
        # raw times: a bit flip can make an absurd but finite event time that CF decoding
        # cannot represent (see test_absurd_event_time_keeps_the_trace_readable)
        ds = open_trace(root / f"{uid}.zarr", decode_times=False).load()
        stored = ds["seq_num"].values.tolist()
        handed = [seq for seq, _ in recorder.rows[uid]]
        assert len(stored) == len(set(stored)) == len(set(handed)), uid
        assert set(stored) == set(handed), uid
        assert ds.attrs["status"] == recorder.finalized[uid] == "success"
        flags_of.update(zip(stored, ds["flags"].values.tolist(), strict=True))
    # frames with a fresh seq_num are in the trace under it; NaN spectra kept are flagged
    for category in ("valid", "wrong_type", "nan_spectrum"):
        for seq in ledger.frame_seq[category]:
            assert seq in flags_of, (category, seq)
    for seq in ledger.frame_seq["nan_spectrum"]:
        assert flags_of[seq] & QualityFlag.NAN, seq


def test_engine_still_processes_a_valid_run(pipeline: tuple[Pipeline, Path]) -> None:
    """After the hostile cases, a valid run through the same engine gives its complete trace:
    every seq_num once, finite model outputs, status success, no new dead-letter record."""
    pipe, root = pipeline
    dead = pipe.dead_letter
    assert isinstance(dead, MemoryDeadLetter)
    before = len(dead.records)
    uid, docs = compose_docs(40, seed=5)
    for i, (name, doc) in enumerate(docs):
        deliver(pipe.engine, encode_document(name, doc), Position("valid", 0, i))
    pipe.engine.idle()
    pipe.engine.flush_sinks()
    ds = open_trace(root / f"{uid}.zarr").load()
    assert ds["seq_num"].values.tolist() == list(range(1, 41))
    assert ds.attrs["status"] == "success"
    assert np.isfinite(ds["os"].values).all()
    assert len(dead.records) == before


def test_seq_num_beyond_int64_is_dead_lettered(tmp_path: Path, model: ModelRunner) -> None:
    """An event whose seq_num does not fit the trace's int64 column must be dead-lettered
    (``bad_field``), not crash the engine (a Kafka consumer would re-read it after every
    restart; found by the generated cases, fixed in ``assembly/run.py:_ids``)."""
    settings = load_settings(None, {"zarr": {"root": tmp_path}, "dead_letter": {"path": None}})
    dead = MemoryDeadLetter()
    pipe = build_pipeline(settings, model=model, dead_letter=dead)
    uid, docs = compose_docs(3, seed=6)
    docs[2][1]["seq_num"] = 2**64 - 1
    for i, (name, doc) in enumerate(docs):
        deliver(pipe.engine, encode_document(name, doc), Position("overflow", 0, i))
    pipe.close()
    assert [r["reason"] for r in dead.records] == ["bad_field"]
    assert open_trace(tmp_path / f"{uid}.zarr").load()["seq_num"].values.tolist() == [2, 3]


def test_absurd_event_time_keeps_the_trace_readable(tmp_path: Path, model: ModelRunner) -> None:
    """An event whose time is finite but absurd (a flipped exponent bit) must be dead-lettered
    or stored so that the trace still opens: one hostile message must not make a whole run's
    trace unreadable with :func:`open_trace`."""
    settings = load_settings(None, {"zarr": {"root": tmp_path}, "dead_letter": {"path": None}})
    pipe = build_pipeline(settings, model=model, dead_letter=MemoryDeadLetter())
    uid, docs = compose_docs(3, seed=7)
    docs[3][1]["time"] = 2.0e163
    for i, (name, doc) in enumerate(docs):
        deliver(pipe.engine, encode_document(name, doc), Position("time", 0, i))
    dead = pipe.dead_letter
    pipe.close()
    ds = open_trace(tmp_path / f"{uid}.zarr").load()
    assert 1 in ds["seq_num"].values.tolist()
    assert isinstance(dead, MemoryDeadLetter)
    assert [r["reason"] for r in dead.records] == ["bad_field"]
