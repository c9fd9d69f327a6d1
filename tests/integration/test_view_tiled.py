"""The view's Tiled runs against a real Tiled server (tests/plugins/tiled.py): traces written by the
project's Tiled sink are listed beside the Zarr runs with element, rows and start time; their rows
come back equal to what was written, over HTTP and pushed over the WebSocket as they are appended;
bad ids get a 404; an unreachable server is one line in the run list (503 for its runs), never a
hang; ``spt-stream view --tiled-url`` and ``--view`` (the engine's Tiled settings) read them with
the API key from the environment, which no answer or log shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
import tiled.server  # noqa: F401  (the tiled-server extra; missing = a failure, not a skip)

with warnings.catch_warnings():  # "use httpx2": the installed starlette's own test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from spt_stream.config import TiledSettings
from spt_stream.devtools.broker import find_free_port
from spt_stream.sinks.tiled_trace import TiledTraceWriter
from spt_stream.sinks.zarr_trace import ZarrTraceWriter
from spt_stream.view.app import ViewOptions, create_app
from spt_stream.view.options import start_view
from spt_stream.view.tiled_store import TiledSource
from tests._trace_rows import T0, expected_os, expected_potential, make_rows
from tests.plugins.tiled import TiledServer

FAST = ViewOptions(poll_s=0.05, page_rows=25, spectra_window=30, status_s=0.1)
MODEL = {"name": "spt-test", "descriptors": ["os"]}


def _rows(first: int, last: int) -> Any:
    """Rows ``first..last`` with every column from the first row (a Tiled table's layout is
    fixed by its first batch): os, os_std, flags, ood, potential, os_probs (flattened), norm."""
    return make_rows(range(first, last + 1), new_col_from=first)


@pytest.fixture
def zarr_root(tmp_path: Path) -> Path:
    root = tmp_path / "traces"
    w = ZarrTraceWriter(root, block_rows=16, fsync=False)
    w.open_run("zarr-run", {"element": "Ni", "edge": "K", "start_time": T0 + 5})
    w.write("zarr-run", make_rows(range(1, 11)))
    w.close()
    return root


@pytest.fixture
def tiled_run(tiled_server: TiledServer) -> Iterator[tuple[str, TiledTraceWriter]]:
    """A running Tiled run (rows 1..40 written, not finalized) and its writer."""
    url, api_key = tiled_server
    uid = f"view-{uuid.uuid4().hex[:12]}"
    writer = TiledTraceWriter(url, api_key)
    writer.open_run(uid, {"element": "Co", "edge": "K", "start_time": T0, "model": MODEL})
    writer.write(uid, _rows(1, 40))
    writer.flush(timeout=60)
    yield uid, writer
    writer.close()


def _client(root: Path, tiled: TiledSource | None) -> TestClient:
    return TestClient(create_app(root, options=FAST, tiled=tiled))


def _source(server: TiledServer, **kw: Any) -> TiledSource:
    return TiledSource(server.url, server.api_key, poll_s=0.05, list_ttl_s=0.0, **kw)


def _check_values(msg: dict[str, Any], seq: np.ndarray[Any, Any]) -> None:
    assert msg["seq_num"] == seq.tolist()
    assert msg["time"] == pytest.approx((T0 + seq * 0.05).tolist())
    cols = msg["columns"]
    assert cols["os"] == pytest.approx(expected_os(seq).tolist())
    assert cols["os_std"] == pytest.approx([0.1] * seq.size)
    assert cols["potential"] == pytest.approx(expected_potential(seq).tolist())
    assert cols["flags"] == (seq % 4).tolist()
    assert cols["ood"] == (seq % 5 == 0).tolist()
    assert not any(k.startswith("os_probs") for k in cols)  # a 2-D column, as in Zarr


def test_tiled_runs_listed_beside_the_zarr_runs(
    zarr_root: Path, tiled_run: tuple[str, TiledTraceWriter], tiled_server: TiledServer
) -> None:
    uid, writer = tiled_run
    with _client(zarr_root, _source(tiled_server)) as c:
        r = c.get("/api/runs")
        body = r.json()
        assert body["tiled"] == {"url": tiled_server.url, "error": None}
        by_id = {run["id"]: run for run in body["runs"]}
        tiled = by_id[f"tiled:{uid}"]
        assert tiled["source"] == "tiled"
        assert tiled["run_uid"] == uid
        assert tiled["element"] == "Co"
        assert tiled["edge"] == "K"
        assert tiled["n_rows"] == 40
        assert tiled["start_time"] == pytest.approx(T0)
        assert tiled["status"] == "open"
        zarr = by_id["zarr-run"]
        assert zarr["source"] == "zarr"
        assert zarr["n_rows"] == 10
        ids = [run["id"] for run in body["runs"]]
        assert ids.index("zarr-run") < ids.index(f"tiled:{uid}")  # the live Zarr run first
        assert tiled_server.api_key not in r.text
        # the run grows (a running engine): the list counts the new rows and shows it live
        writer.write(uid, _rows(41, 45))
        writer.flush(timeout=60)
        tiled = {run["id"]: run for run in c.get("/api/runs").json()["runs"]}[f"tiled:{uid}"]
        assert tiled["n_rows"] == 45
        assert tiled["live"]
        # finalized: the sink's final status and row count
        assert writer.finalize_and_wait(uid, "success", timeout=60)
        tiled = {run["id"]: run for run in c.get("/api/runs").json()["runs"]}[f"tiled:{uid}"]
        assert (tiled["status"], tiled["n_rows"]) == ("success", 45)


def test_tiled_run_schema_and_rows_equal_what_was_written(
    zarr_root: Path, tiled_run: tuple[str, TiledTraceWriter], tiled_server: TiledServer
) -> None:
    uid, _ = tiled_run
    rid = f"tiled:{uid}"
    with _client(zarr_root, _source(tiled_server)) as c:
        info = c.get(f"/api/runs/{rid}")
        assert info.status_code == 200
        schema = info.json()
        assert schema["run"]["source"] == "tiled"
        assert schema["run"]["id"] == rid
        assert schema["run"]["element"] == "Co"
        assert schema["run"]["status"] == "open"
        assert schema["run"]["model"] == "spt-test"
        assert "from_uri(" in schema["run"]["python"]
        assert tiled_server.api_key not in info.text
        roles = {v["name"]: v["role"] for v in schema["variables"]}
        assert roles == {
            "os": "descriptor",
            "os_std": "std",
            "flags": "quality",
            "ood": "quality",
            "potential": "process",
            "os_probs": "other",
        }
        assert schema["coords"] == {}  # spectra are not written to Tiled
        first = c.get(f"/api/runs/{rid}/rows", params={"limit": 10}).json()
        assert first["n_rows"] == 40
        _check_values(first, np.arange(1, 11))
        assert first["spectra"] == {}
        rest = c.get(f"/api/runs/{rid}/rows", params={"after_seq": 10}).json()
        _check_values(rest, np.arange(11, 36))  # one page (page_rows=25)
        bad = c.get(f"/api/runs/{rid}/rows", params={"after_seq": 999})
        assert bad.status_code == 404
        assert "999" in bad.json()["error"]


@pytest.mark.parametrize("full_read_values", [500_000, 0], ids=["whole-table", "new-rows"])
def test_tiled_rows_pushed_as_they_are_appended(
    zarr_root: Path,
    tiled_run: tuple[str, TiledTraceWriter],
    tiled_server: TiledServer,
    full_read_values: int,
) -> None:
    """History first, then the new rows as they are appended (read as the whole table while the
    run is small, else only the new rows of each column)."""
    uid, writer = tiled_run
    with (
        _client(zarr_root, _source(tiled_server, full_read_values=full_read_values)) as c,
        c.websocket_connect(f"/ws/runs/tiled:{uid}") as ws,
    ):
        assert ws.receive_json()["type"] == "schema"
        got: list[dict[str, Any]] = []
        while sum(len(m["seq_num"]) for m in got) < 40:
            msg = ws.receive_json()
            if msg["type"] == "rows":
                got.append(msg)
        assert [s for m in got for s in m["seq_num"]] == list(range(1, 41))
        writer.write(uid, _rows(41, 47))
        writer.flush(timeout=60)
        t0 = time.monotonic()
        while True:
            msg = ws.receive_json()
            if msg["type"] == "rows":
                break
        assert msg["first_row"] == 40
        _check_values(msg, np.arange(41, 48))
        assert time.monotonic() - t0 < 10
        assert writer.finalize_and_wait(uid, "success", timeout=60)
        while (msg := ws.receive_json())["type"] != "status":
            pass
        assert msg["status"] == "success"


def test_bad_tiled_ids_get_a_clear_404(
    zarr_root: Path, tiled_run: tuple[str, TiledTraceWriter], tiled_server: TiledServer
) -> None:
    from tiled.client import from_uri

    plain = f"plain-{uuid.uuid4().hex[:8]}"  # a container that is not a trace of the sink
    from_uri(tiled_server.url, api_key=tiled_server.api_key, remember_me=False).create_container(
        key=plain, metadata={"x": 1}
    )
    with _client(zarr_root, _source(tiled_server)) as c:
        ids = [run["id"] for run in c.get("/api/runs").json()["runs"]]
        assert f"tiled:{plain}" not in ids
        for rid in ("tiled:nope", f"tiled:{plain}", "tiled:..", "tiled:%2E%2E%2Fx", "tiled:"):
            for path in (f"/api/runs/{rid}", f"/api/runs/{rid}/rows"):
                r = c.get(path)
                assert r.status_code == 404, path
                assert r.json()["error"].startswith("not found"), r.text
                assert "Traceback" not in r.text
        with c.websocket_connect("/ws/runs/tiled:nope") as ws:
            msg = ws.receive_json()
            assert (msg["type"], msg["status"]) == ("error", 404)
    with _client(zarr_root, None) as c:  # a view without a Tiled server
        r = c.get(f"/api/runs/tiled:{tiled_run[0]}")
        assert r.status_code == 404
        assert "Tiled" in r.json()["error"]
        assert c.get("/api/runs").json()["tiled"] is None


def test_unreachable_tiled_is_one_line_in_the_run_list(zarr_root: Path) -> None:
    url = f"http://127.0.0.1:{find_free_port()}"  # nothing listens
    t0 = time.monotonic()
    with _client(zarr_root, TiledSource(url, "some-key", list_ttl_s=0.0)) as c:
        body = c.get("/api/runs").json()
        assert [r["id"] for r in body["runs"]] == ["zarr-run"]  # the Zarr runs still listed
        assert body["tiled"]["url"] == url
        assert "unreachable" in body["tiled"]["error"]
        assert "\n" not in body["tiled"]["error"]
        r = c.get("/api/runs/tiled:some-run")
        assert r.status_code == 503
        assert "unreachable" in r.json()["error"]
        with c.websocket_connect("/ws/runs/tiled:some-run") as ws:
            msg = ws.receive_json()
            assert (msg["type"], msg["status"]) == ("error", 503)
    assert time.monotonic() - t0 < 10  # no client retries for ~45 s


def test_view_command_and_view_option_read_tiled(
    zarr_root: Path, tiled_run: tuple[str, TiledTraceWriter], tiled_server: TiledServer
) -> None:
    """``spt-stream view --tiled-url`` (key from SPT_TILED_API_KEY) and ``--view``'s
    :func:`start_view` with the engine's Tiled settings list the Tiled run; the key never shows."""
    uid, _ = tiled_run
    key = tiled_server.api_key

    def tiled_ids(view_url: str) -> list[str]:
        with urllib.request.urlopen(view_url + "api/runs", timeout=30) as resp:
            text = resp.read().decode()
        assert key not in text
        body = json.loads(text)
        assert body["tiled"]["error"] is None, body["tiled"]
        return [r["id"] for r in body["runs"] if r["source"] == "tiled"]

    view = start_view(
        zarr_root, "127.0.0.1", 0, tiled=TiledSettings(url=tiled_server.url, api_key=key)
    )
    try:
        assert f"tiled:{uid}" in tiled_ids(view.url)
    finally:
        view.stop()

    spt = Path(sys.executable).with_name("spt-stream")
    env = {**os.environ, "SPT_TILED_API_KEY": key}
    env.pop("SPT_TILED__API_KEY", None)
    proc = subprocess.Popen(
        [str(spt), "view", str(zarr_root), "--view-port", "0", "--tiled-url", tiled_server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "live view: URL" once it listens
        assert line.startswith("live view: "), line
        assert f"tiled:{uid}" in tiled_ids(line.removeprefix("live view: ").strip())
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert key not in line + out + err
    assert tiled_server.url in err  # "spt-stream view of ... and the Tiled runs at URL"
