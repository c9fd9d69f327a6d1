"""Replay of Bluesky runs stored in a real Tiled server (consumers/tiled_replay.py).

Runs are written by bluesky's own TiledWriter from a real RunEngine into the session's Tiled
server (fixture ``tiled_server`` from tests/plugins/tiled.py, configured with the json-seq
exporter), then read back with :func:`replay_tiled`.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from bluesky.callbacks.tiled_writer import TiledWriter
from tiled.client import from_uri

from spt_stream.errors import ConfigError, DocumentError, SourceError
from spt_stream.transports.tiled_replay import parse_tiled_filter, replay_tiled
from tests._replay_docs import (
    Docs,
    Recorder,
    assert_same_frames,
    difference,
    frames_of,
    record_run,
)
from tests.plugins.tiled import TiledServer

#: Fields TiledWriter adds to data keys.
ADDED = frozenset({"dtype_numpy"})


@pytest.fixture(scope="module")
def stored(tiled_server: TiledServer) -> dict[str, Any]:
    """Two real runs written with TiledWriter: A (10 events) then B (3 events), same campaign."""
    url, api_key = tiled_server
    writer = TiledWriter(from_uri(url, api_key=api_key))
    campaign = f"replay-{uuid.uuid4().hex[:8]}"
    uid_a, docs_a = record_run([writer], num=10, npts=100, campaign=campaign, sample="A")
    uid_b, docs_b = record_run([writer], num=3, npts=80, campaign=campaign, sample="B")
    return {
        "url": url,
        "api_key": api_key,
        "campaign": campaign,
        "runs": {uid_a: docs_a, uid_b: docs_b},
        "order": [uid_a, uid_b],
    }


def assert_equivalent(original: Docs, replayed: Docs) -> None:
    """What Tiled keeps: start/stop verbatim; descriptor uid, data keys (plus the
    ``dtype_numpy`` TiledWriter adds) and configuration; events' seq_num, time, data (arrays as
    arrays) and timestamps (event uids are synthetic)."""
    names = [n for n, _ in original]
    assert [n for n, _ in replayed] == names
    for (name, a), (_, b) in zip(original, replayed, strict=True):
        if name in ("start", "stop"):
            assert difference(a, b, name) is None, difference(a, b, name)
        elif name == "descriptor":
            for key in ("uid", "run_start", "name", "data_keys", "configuration"):
                diff = difference(a[key], b[key], f"descriptor.{key}", added=ADDED)
                assert diff is None, diff
        else:
            assert b["descriptor"] == a["descriptor"]
            for key in ("seq_num", "time", "data", "timestamps"):
                diff = difference(a[key], b[key], f"event.{key}")
                assert diff is None, diff


def test_replay_one_run_by_uid(stored: dict[str, Any]) -> None:
    """A run written by TiledWriter replays with the RunEngine's uids, data and arrays."""
    uid = stored["order"][0]
    original = stored["runs"][uid]
    handler = Recorder()
    stats = replay_tiled(stored["url"], uid, handler, api_key=stored["api_key"])
    assert (stats.runs, stats.rejected, stats.documents) == (1, 0, len(original))
    assert_equivalent(original, handler.pairs)
    event = next(d for n, d in handler.pairs if n == "event")
    assert isinstance(event["data"]["qxas_mu"], np.ndarray)
    positions = [p for _, _, p in handler.docs]
    assert positions[0] is not None
    assert positions[0].file == f"{stored['url']}/{uid}"
    assert [p.line for p in positions if p is not None] == list(range(1, len(original) + 1))


def test_replayed_frames_equal_live_frames(stored: dict[str, Any]) -> None:
    """The engine's ingest builds the same frames from the Tiled replay as from the live RE."""
    uid = stored["order"][0]
    handler = Recorder()
    replay_tiled(stored["url"], [uid], handler, api_key=stored["api_key"])
    assert_same_frames(frames_of(stored["runs"][uid]), frames_of(handler.pairs))


def test_search_replays_matching_runs_in_start_time_order(stored: dict[str, Any]) -> None:
    """A metadata filter selects runs; they replay oldest first, one start per run."""
    handler = Recorder()
    stats = replay_tiled(
        stored["url"], {"campaign": stored["campaign"]}, handler, api_key=stored["api_key"]
    )
    assert stats.runs == 2
    starts = [d["uid"] for n, d in handler.pairs if n == "start"]
    assert starts == stored["order"]

    only_b = Recorder()
    replay_tiled(
        stored["url"],
        parse_tiled_filter([f"campaign={stored['campaign']}", "sample=B"]),
        only_b,
        api_key=stored["api_key"],
    )
    assert_equivalent(stored["runs"][stored["order"][1]], only_b.pairs)


def test_unknown_uid_is_rejected_and_others_replayed(stored: dict[str, Any]) -> None:
    """A uid the server lacks goes to reject; the next run still replays."""
    handler = Recorder()
    missing = str(uuid.uuid4())
    stats = replay_tiled(
        stored["url"], [missing, stored["order"][1]], handler, api_key=stored["api_key"]
    )
    assert (stats.rejected, stats.runs) == (1, 1)
    error, _, position = handler.rejected[0]
    assert isinstance(error, DocumentError)
    assert error.run_uid == missing
    assert position is not None
    assert position.file == f"{stored['url']}/{missing}"


def test_wrong_api_key_is_a_source_error(stored: dict[str, Any]) -> None:
    """A refused key raises SourceError naming the server, before anything is handed on."""
    handler = Recorder()
    with pytest.raises(SourceError, match=r"(?i)cannot open Tiled.*(401|api.key)") as info:
        replay_tiled(stored["url"], stored["order"][0], handler, api_key="not-the-key")
    assert info.value.source == stored["url"]
    assert handler.docs == []


def test_filter_terms_parse_json_values() -> None:
    """CLI filter terms: JSON values where they parse, strings otherwise; key=value required."""
    assert parse_tiled_filter(["scan_id=3", "sample=LiCoO2", "ok=true"]) == {
        "scan_id": 3,
        "sample": "LiCoO2",
        "ok": True,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_tiled_filter(["sample"])
