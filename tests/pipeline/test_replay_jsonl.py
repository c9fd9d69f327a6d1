"""Replay of bluesky JSON-lines document files (consumers/jsonl.py) against a real RunEngine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bluesky.callbacks.json_writer import JSONLinesWriter, JSONWriter
from event_model import sanitize_doc

from spt_stream.errors import DecodeError
from spt_stream.protocols import DocumentHandler, Position
from spt_stream.transports.jsonl import iter_jsonl_documents, parse_jsonl_line, replay_jsonl
from tests._replay_docs import (
    Callback,
    Docs,
    Recorder,
    assert_same_documents,
    assert_same_frames,
    frames_of,
    record_run,
)


def jsonl_writer(directory: Path, filename: str) -> Callback:
    """bluesky's JSONLinesWriter behind event-model's sanitize_doc (json.dump cannot take numpy)."""
    writer = JSONLinesWriter(str(directory), filename)
    return lambda name, doc: writer(name, sanitize_doc(doc))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Docs]:
    """One real quick-XAS run (5 events, 120-point spectra) written by JSONLinesWriter."""
    directory = tmp_path_factory.mktemp("jsonl")
    _, docs = record_run([jsonl_writer(directory, "run.jsonl")], num=5, sample="LiCoO2")
    return directory / "run.jsonl", docs


class TestReplayJsonl:
    def test_replay_reproduces_the_runengine_documents(self, recorded: tuple[Path, Docs]) -> None:
        """Every document comes back as the RE emitted it, arrays as float64 ndarrays."""
        path, original = recorded
        handler = Recorder()
        assert isinstance(handler, DocumentHandler)
        stats = replay_jsonl(path, handler)
        assert_same_documents(original, handler.pairs)
        assert (stats.documents, stats.runs, stats.rejected) == (len(original), 1, 0)
        assert stats.sources == [str(path)]
        assert [p for _, _, p in handler.docs] == [
            Position(file=str(path), line=n) for n in range(1, len(original) + 1)
        ]
        event = next(d for n, d in handler.pairs if n == "event")
        assert event["data"]["qxas_mu"].dtype == np.float64
        descriptor = next(d for n, d in handler.pairs if n == "descriptor")
        grid = descriptor["configuration"]["qxas"]["data"]["qxas_energy"]
        assert isinstance(grid, np.ndarray)
        assert grid.shape == (120,)

    def test_iter_jsonl_documents_matches_replay(self, recorded: tuple[Path, Docs]) -> None:
        """The iterator yields the same documents with file:line positions."""
        path, original = recorded
        items = list(iter_jsonl_documents(path))
        assert_same_documents(original, [(n, d) for n, d, _ in items])
        assert str(items[2][2]) == f"{path}:3"

    def test_malformed_lines_are_rejected_and_replay_continues(
        self, recorded: tuple[Path, Docs], tmp_path: Path
    ) -> None:
        """Bad lines go to reject with file and line; every good document still arrives."""
        path, original = recorded
        lines = path.read_bytes().splitlines(keepends=True)
        bad = {
            3: lines[2][: len(lines[2]) // 2] + b"\n",  # truncated mid-document
            5: b'{"name": 3, "doc": {}}\n',  # name not a string
            7: b"\xff\xfe not utf-8\n",
            9: b"[1, 2, 3]\n",  # valid JSON, not a document
            10: b'{"name": "event", "doc": [1]}\n',  # doc not an object
        }
        out: list[bytes] = []
        good = iter(lines)
        for lineno in range(1, len(lines) + len(bad) + 1):
            out.append(bad[lineno] if lineno in bad else next(good))
        broken = tmp_path / "broken.jsonl"
        broken.write_bytes(b"".join(out))

        handler = Recorder()
        stats = replay_jsonl(broken, handler)
        assert stats.rejected == len(bad)
        assert stats.documents == len(original)
        assert_same_documents(original, handler.pairs)
        for (error, payload, position), lineno in zip(handler.rejected, sorted(bad), strict=True):
            assert isinstance(error, DecodeError)
            assert (error.source, error.line) == (str(broken), lineno)
            assert f"{broken}:{lineno}" in str(error)
            assert position == Position(file=str(broken), line=lineno)
            assert payload == bad[lineno]

    def test_iterator_raises_on_malformed_line_without_handler(self, tmp_path: Path) -> None:
        """Without on_error, the first malformed line raises DecodeError naming file and line."""
        path = tmp_path / "bad.jsonl"
        path.write_text('{"name": "start", "doc": {"uid": "u", "time": 1}}\n{oops\n')
        with pytest.raises(DecodeError) as info:
            list(iter_jsonl_documents(path))
        assert (info.value.source, info.value.line) == (str(path), 2)

        seen: list[int | None] = []
        docs = list(iter_jsonl_documents(path, on_error=lambda e, raw, pos: seen.append(pos.line)))
        assert [n for n, _, _ in docs] == ["start"]
        assert seen == [2]

    def test_two_runs_appended_to_one_file(self, tmp_path: Path) -> None:
        """JSONLinesWriter appends runs; both replay, arrays restored in each."""
        writer = jsonl_writer(tmp_path, "two.jsonl")
        _, first = record_run([writer], num=2, npts=50)
        _, second = record_run([writer], num=3, npts=60)
        handler = Recorder()
        stats = replay_jsonl(tmp_path / "two.jsonl", handler)
        assert (stats.runs, stats.documents) == (2, len(first) + len(second))
        assert_same_documents(first + second, handler.pairs)

    def test_jsonwriter_array_layout_is_accepted(self, tmp_path: Path) -> None:
        """bluesky's JSONWriter (one JSON array, one document per line) replays too."""
        writer = JSONWriter(str(tmp_path), "run.json")
        _, original = record_run([lambda n, d: writer(n, sanitize_doc(d))], num=3, npts=40)
        assert json.loads((tmp_path / "run.json").read_text())[0]["name"] == "start"
        handler = Recorder()
        stats = replay_jsonl(tmp_path / "run.json", handler)
        assert stats.rejected == 0
        assert_same_documents(original, handler.pairs)


class TestParseLine:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            (b'{"name": "stop", "doc": {"uid": "s"}}\n', ("stop", {"uid": "s"})),
            (b'["stop", {"uid": "s"}]', ("stop", {"uid": "s"})),
            (b'  {"name": "stop", "doc": {"uid": "s"}},\n', ("stop", {"uid": "s"})),
            (b"\n", None),
            (b"[\n", None),
        ],
    )
    def test_accepted_layouts(self, raw: bytes, expected: Any) -> None:
        """Object and 2-list layouts, JSONWriter element lines, blank and bracket lines."""
        assert parse_jsonl_line(raw) == expected

    def test_extra_keys_are_refused(self) -> None:
        """An object with keys besides name/doc is not a document line."""
        with pytest.raises(DecodeError, match="keys"):
            parse_jsonl_line(b'{"name": "stop", "doc": {}, "x": 1}')


def test_replayed_frames_equal_live_frames(recorded: tuple[Path, Docs]) -> None:
    """The engine's ingest builds the same frames from the JSONL replay as from the live RE."""
    path, original = recorded
    handler = Recorder()
    replay_jsonl(path, handler)
    live = frames_of(original)
    assert len(live) == 5
    assert_same_frames(live, frames_of(handler.pairs))
    assert live[0].scalars.keys() >= {"qxas_potential", "qxas_current"}
