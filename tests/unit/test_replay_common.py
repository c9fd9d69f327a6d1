"""What every replay source shares (consumers/replay.py, consumers/sources.py)."""

from __future__ import annotations

from pathlib import Path

import event_model
import numpy as np
import pytest
from bluesky.callbacks.json_writer import JSONLinesWriter
from event_model import sanitize_doc
from rich.console import Console

from spt_stream.errors import ConfigError, DecodeError
from spt_stream.transports.replay import (
    ArrayRestorer,
    CountingHandler,
    ReplayStats,
    replay_progress,
)
from spt_stream.transports.sources import replay_sources
from tests._replay_docs import Recorder, record_run


def composed_run(dtype_numpy: str = "") -> list[tuple[str, dict[str, object]]]:
    """A small run built with event_model.compose_run: array key ``spec``, scalar ``t``."""
    spec_key: dict[str, object] = {"dtype": "array", "shape": [3], "source": "sim"}
    if dtype_numpy:
        spec_key["dtype_numpy"] = dtype_numpy
    bundle = event_model.compose_run()
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={"spec": spec_key, "t": {"dtype": "number", "shape": [], "source": "sim"}},
        configuration={
            "det": {
                "data": {"grid": np.array([1.0, 2.0, 3.0])},
                "timestamps": {"grid": 0.0},
                "data_keys": {"grid": {"dtype": "array", "shape": [3], "source": "sim"}},
            }
        },
    )
    page = desc.compose_event_page(
        data={"spec": [np.arange(3.0), np.arange(3.0) + 1], "t": [1.0, 2.0]},
        timestamps={"spec": [0.0, 0.0], "t": [0.0, 0.0]},
        seq_num=[1, 2],
    )
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc), ("event_page", page)]
    return [(n, sanitize_doc(dict(d))) for n, d in docs]


def test_restores_event_page_and_configuration_arrays() -> None:
    """Lists under array keys become ndarrays (per event of a page); scalars stay as they are."""
    restorer = ArrayRestorer()
    out = [(n, restorer(n, d)) for n, d in composed_run()]
    conf = out[1][1]["configuration"]["det"]["data"]["grid"]
    assert isinstance(conf, np.ndarray)
    assert np.array_equal(conf, [1.0, 2.0, 3.0])
    data = out[2][1]["data"]
    assert all(isinstance(v, np.ndarray) for v in data["spec"])
    assert data["t"] == [1.0, 2.0]


def test_declared_numpy_dtype_is_honoured() -> None:
    """``dtype_numpy`` in the data key decides the restored dtype (float32 stays float32)."""
    restorer = ArrayRestorer()
    out = [restorer(n, d) for n, d in composed_run("<f4")]
    assert out[2]["data"]["spec"][0].dtype == np.float32


def test_unknown_descriptor_and_ragged_values_pass_through() -> None:
    """Events of an unseen descriptor, and ragged lists, are left for the engine to judge."""
    restorer = ArrayRestorer()
    event = {"descriptor": "nope", "data": {"spec": [1, 2]}}
    assert restorer("event", event) is event
    docs = composed_run()
    restorer("descriptor", docs[1][1])
    ragged = {"descriptor": docs[1][1]["uid"], "data": {"spec": [[1, 2], [3]], "t": 1.0}}
    assert restorer("event", ragged)["data"]["spec"] == [[1, 2], [3]]


def test_counting_handler_counts_and_forwards() -> None:
    """Documents, runs (start documents) and rejections are counted; all reach the handler."""
    inner = Recorder()
    counting = CountingHandler(inner)
    for name, doc in composed_run():
        counting(name, doc)
    counting.reject(DecodeError("bad", source="f", line=3), b"x")
    assert (counting.stats.documents, counting.stats.runs, counting.stats.rejected) == (3, 1, 1)
    assert len(inner.docs) == 3
    assert inner.rejected[0][1] == b"x"
    total = ReplayStats(1, 1, 0, ["a"])
    total += counting.stats
    assert (total.documents, total.runs, total.rejected) == (4, 2, 1)


def test_progress_bar_counts_to_total() -> None:
    """The rich bar shows the description and done/total; disabled, nothing is drawn."""
    console = Console(record=True, width=100, force_terminal=False)
    with replay_progress("replay run.jsonl", 3, console=console) as advance:
        for _ in range(3):
            advance(1)
    text = console.export_text()
    assert "replay run.jsonl" in text
    assert "3/3" in text
    quiet = Console(record=True, width=100, force_terminal=False)
    with replay_progress("quiet", None, enabled=False, console=quiet) as advance:
        advance(1)
    assert quiet.export_text() == ""


def test_replay_sources_routes_documents_and_spectra(reference_dir: Path, tmp_path: Path) -> None:
    """A JSONL file and spectrum files in one call: the JSONL run, then one run of spectra."""
    writer = JSONLinesWriter(str(tmp_path), "run.jsonl")
    uid, _ = record_run([lambda n, d: writer(n, sanitize_doc(d))], num=2, npts=30)
    spectra = [str(reference_dir / f) for f in ("MnO2_rt_01.xdi", "MnO_rt_01.xdi")]
    handler = Recorder()
    stats = replay_sources([spectra[0], str(tmp_path / "run.jsonl"), spectra[1]], handler)
    starts = [d for n, d in handler.pairs if n == "start"]
    assert (stats.runs, stats.rejected) == (2, 0)
    assert starts[0]["uid"] == uid
    assert starts[1]["spt"]["element"] == "Mn"
    with pytest.raises(ConfigError, match="which runs"):
        replay_sources(["http://127.0.0.1:1"], handler)
