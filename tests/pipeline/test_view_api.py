"""The view's HTTP and WebSocket API on stores written by the real Zarr writer: history,
increments, resuming from a seq_num, 404s that never leave the trace root, the token."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
with warnings.catch_warnings():  # "use httpx2": the installed starlette's own test client
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from spt_stream.errors import ConfigError
from spt_stream.sinks.zarr_trace import ZarrTraceWriter
from spt_stream.view.app import ViewOptions, create_app
from spt_stream.view.server import ViewProcess, check_bind
from spt_stream.view.store import TraceRoot
from tests._trace_rows import GRID, expected_norm, expected_os, make_rows

UID = "run-a"
FAST = ViewOptions(poll_s=0.05, page_rows=25, spectra_window=30, status_s=0.1)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "traces"


@pytest.fixture
def writer(root: Path) -> Iterator[ZarrTraceWriter]:
    w = ZarrTraceWriter(root, block_rows=16, fsync=False)
    w.open_run(UID, {"element": "Co", "edge": "K", "start_time": 1.79e9})
    w.write(UID, make_rows(range(1, 41)))
    yield w
    w.close()


def _client(root: Path, **kw: Any) -> TestClient:
    return TestClient(create_app(root, options=FAST, **kw))


def _rows_until(ws: Any, n: int) -> list[dict[str, Any]]:
    """``rows`` messages until ``n`` rows arrived (other messages skipped)."""
    got: list[dict[str, Any]] = []
    while sum(len(m["seq_num"]) for m in got) < n:
        msg = ws.receive_json()
        if msg["type"] == "rows":
            got.append(msg)
    return got


def test_run_list_and_schema(root: Path, writer: ZarrTraceWriter) -> None:
    with _client(root) as c:
        runs = c.get("/api/runs").json()
        assert [r["run_uid"] for r in runs["runs"]] == [UID]
        run = runs["runs"][0]
        assert run["element"] == "Co"
        assert run["n_rows"] == 40
        assert run["live"]
        info = c.get(f"/api/runs/{UID}").json()
        roles = {v["name"]: v["role"] for v in info["variables"]}
        assert roles["os"] == "descriptor"
        assert roles["os_std"] == "std"
        assert roles["flags"] == "quality"
        assert roles["ood"] == "quality"
        assert roles["norm"] == "spectrum"
        assert roles["os_probs"] == "other"
        assert info["coords"]["energy_rel"] == pytest.approx(GRID.tolist())
        assert "open_trace(" in info["run"]["python"]
        assert c.get("/").status_code == 200
        assert "uPlot" in c.get("/static/uPlot.iife.min.js").text
        assert c.get("/api/status").json() == {"attached": False, "status": None}


def test_rows_over_http_page_and_resume(root: Path, writer: ZarrTraceWriter) -> None:
    with _client(root) as c:
        first = c.get(f"/api/runs/{UID}/rows", params={"limit": 10}).json()
        assert first["seq_num"] == list(range(1, 11))
        assert first["n_rows"] == 40
        assert first["columns"]["os"] == pytest.approx(expected_os(np.arange(1, 11)).tolist())
        assert first["columns"]["ood"][4] is True
        assert first["columns"]["flags"][2] == 3
        rest = c.get(f"/api/runs/{UID}/rows", params={"after_seq": 10}).json()
        assert rest["seq_num"] == list(range(11, 36))  # one page (page_rows=25)
        # spectra only for the last spectra_window rows of the run (rows 10.. of 40)
        assert rest["spectra_first_row"] == 10
        assert np.allclose(rest["spectra"]["norm"], expected_norm(np.arange(11, 36)), atol=1e-5)
        bad = c.get(f"/api/runs/{UID}/rows", params={"after_seq": 999})
        assert bad.status_code == 404
        assert "999" in bad.json()["error"]
        assert c.get(f"/api/runs/{UID}/rows", params={"limit": "x"}).status_code == 400


def test_websocket_history_then_increments(root: Path, writer: ZarrTraceWriter) -> None:
    with _client(root) as c, c.websocket_connect(f"/ws/runs/{UID}") as ws:
        schema = ws.receive_json()
        assert schema["type"] == "schema"
        assert schema["run"]["run_uid"] == UID
        history = _rows_until(ws, 40)
        assert [s for m in history for s in m["seq_num"]] == list(range(1, 41))
        assert [m["first_row"] for m in history] == [0, 25]  # pages of page_rows
        # the engine commits more rows (and a new column): pushed without asking
        writer.write(UID, make_rows(range(41, 46), new_col_from=41))
        msgs: list[dict[str, Any]] = []
        while not any(m["type"] == "rows" for m in msgs):
            msgs.append(ws.receive_json())
        kinds = [m["type"] for m in msgs]
        assert kinds.index("schema") < kinds.index("rows")  # the new column is announced first
        inc = msgs[-1]
        assert inc["first_row"] == 40
        assert inc["seq_num"] == list(range(41, 46))
        assert inc["columns"]["potential"][0] == pytest.approx(3.0041)
        assert inc["columns"]["os"] == pytest.approx(expected_os(np.arange(41, 46)).tolist())
        writer.finalize(UID, "success")
        while (m := ws.receive_json())["type"] != "status":
            pass
        assert m["status"] == "success"


def test_websocket_resumes_after_seq_without_gaps_or_duplicates(
    root: Path, writer: ZarrTraceWriter
) -> None:
    with _client(root) as c:
        with c.websocket_connect(f"/ws/runs/{UID}") as ws:
            assert ws.receive_json()["type"] == "schema"
            seen = [s for m in _rows_until(ws, 40) for s in m["seq_num"]]
        # while the page is away, rows arrive out of seq order (a re-delivered batch)
        writer.write(UID, make_rows([50, 41, 42, 7]))  # 7 is a duplicate: the writer drops it
        with c.websocket_connect(f"/ws/runs/{UID}?after_seq={seen[-1]}") as ws:
            assert ws.receive_json()["type"] == "schema"
            (inc,) = _rows_until(ws, 3)
        assert inc["first_row"] == 40
        assert inc["seq_num"] == [50, 41, 42]
        seen += inc["seq_num"]
        assert len(seen) == len(set(seen)) == 43
        # an unknown seq_num (another store under the same name): reset and the whole history
        with c.websocket_connect(f"/ws/runs/{UID}?after_seq=12345") as ws:
            assert ws.receive_json()["type"] == "reset"
            assert ws.receive_json()["type"] == "schema"
            assert len([s for m in _rows_until(ws, 43) for s in m["seq_num"]]) == 43


@pytest.mark.parametrize(
    "run_id",
    ["nope", "..", "..%2F..%2Fetc", "%2Fetc%2Fpasswd", "run-a%2F..%2F..", "a" * 300, "-x"],
)
def test_bad_run_ids_get_a_clear_404(root: Path, writer: ZarrTraceWriter, run_id: str) -> None:
    with _client(root) as c:
        for path in (f"/api/runs/{run_id}", f"/api/runs/{run_id}/rows"):
            r = c.get(path)
            assert r.status_code == 404, path
            body = r.json()
            assert body["error"].startswith("not found"), body
            assert "Traceback" not in r.text
            assert str(root) not in r.text


def test_nothing_outside_the_root(root: Path, writer: ZarrTraceWriter, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    w = ZarrTraceWriter(outside, fsync=False)
    w.open_run("secret")
    w.write("secret", make_rows(range(1, 4)))
    w.close()
    os.symlink(outside / "secret.zarr", root / "linked.zarr")  # a link out of the root
    (root / "plain.zarr").mkdir()  # not a store
    with _client(root) as c:
        assert [r["run_uid"] for r in c.get("/api/runs").json()["runs"]] == [UID]
        for rid in ("linked", "plain", "secret"):
            assert c.get(f"/api/runs/{rid}").status_code == 404
        assert c.get("/static/../app.py").status_code == 404
        assert c.get("/static/%2e%2e/app.py").status_code == 404
        assert c.get("/nowhere").json() == {"error": "not found: no such page or resource"}
        with c.websocket_connect("/ws/runs/linked") as ws:
            msg = ws.receive_json()
            assert msg["type"] == "error"
            assert msg["status"] == 404
    with pytest.raises(LookupError):
        TraceRoot(root).resolve("linked")


def test_read_only(root: Path, writer: ZarrTraceWriter) -> None:
    with _client(root) as c:
        for method in ("post", "put", "delete", "patch"):
            r = getattr(c, method)(f"/api/runs/{UID}")
            assert r.status_code == 405, method
    assert (root / f"{UID}.zarr").exists()


def test_token_is_required_when_set(root: Path, writer: ZarrTraceWriter) -> None:
    with _client(root, token="s3cret") as c:
        r = c.get("/api/runs")
        assert r.status_code == 401
        assert "s3cret" not in r.text
        assert c.get("/api/runs", params={"token": "wrong"}).status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
        with pytest.raises(WebSocketDisconnect), c.websocket_connect(f"/ws/runs/{UID}") as ws:
            ws.receive_json()
        assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # the page's own URL carries the token once; a cookie covers its assets and socket
        page = c.get("/", params={"token": "s3cret"})
        assert page.status_code == 200
        assert "spt_view_token" in page.headers["set-cookie"]
        assert c.get("/static/view.js").status_code == 200
        with c.websocket_connect(f"/ws/runs/{UID}") as ws:
            assert ws.receive_json()["type"] == "schema"


def test_non_loopback_bind_needs_a_token(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.delenv("SPT_VIEW_TOKEN", raising=False)
    assert check_bind("127.0.0.1", None) is None
    assert check_bind("::1", None) is None
    with pytest.raises(ConfigError, match="SPT_VIEW_TOKEN"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError):
        ViewProcess(root, host="192.0.2.1")
    monkeypatch.setenv("SPT_VIEW_TOKEN", "tok")
    assert check_bind("0.0.0.0", None) == "tok"


def test_view_process_serves_and_relays_engine_status(root: Path, writer: ZarrTraceWriter) -> None:
    """``--view``: the view in a child process; the engine's snapshot reaches the page."""
    import json
    import time
    import urllib.request

    calls: list[int] = []

    def snapshot() -> dict[str, Any]:
        calls.append(1)
        return {"frames": 10 * len(calls), "latency_p50_ms": 5.0, "runs": [], "sinks": []}

    with ViewProcess(root, snapshot=snapshot, lag=lambda: 3, period_s=0.1) as view:
        assert view.url.startswith("http://127.0.0.1:")
        runs = json.load(urllib.request.urlopen(view.url + "api/runs", timeout=10))
        assert runs["engine"] is True
        assert runs["runs"][0]["run_uid"] == UID
        deadline = time.monotonic() + 10
        status: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            status = json.load(urllib.request.urlopen(view.url + "api/status", timeout=10))
            if status["status"] and "frames_per_s" in status["status"]:
                break
            time.sleep(0.1)
        assert status is not None
        assert status["attached"]
        assert status["status"]["lag"] == 3
        assert status["status"]["frames_per_s"] > 0
    assert not view.is_alive()
