"""The view's ASGI app (Starlette): a static page, a small read-only JSON API and one WebSocket
per open run that pushes the rows the Zarr sink committed (and, with a Tiled server, the rows the
Tiled sink wrote: :mod:`spt_stream.view.tiled_store`).

HTTP (all ``GET``; nothing changes a trace):

* ``/``: the page; ``/static/...``: its scripts and styles (shipped in the package);
* ``/api/runs``: the run list: live runs first, then the stored ones of the trace root, then
  those of the Tiled server; each with ``id`` (the ``{run}`` of the URLs below: the store's name,
  or ``tiled:<uid>``), ``source`` (``"zarr"`` or ``"tiled"``), element, state, rows, start time;
  ``tiled``: the server's URL and, when it cannot be listed now, ``error`` (one line);
* ``/api/runs/{run}``: a run's attributes, variables (with their roles) and energy grid;
* ``/api/runs/{run}/rows?after_seq=S&limit=N``: committed rows after the row of ``seq_num`` S;
* ``/api/status``: the attached engine's status (frames/s, latency, lag, sinks), if any.

WebSocket ``/ws/runs/{run}?after_seq=S``: a ``schema`` message, then ``rows`` messages (the
history in pages, then each increment as it is committed), ``status`` when the run's state
changes, ``engine`` about once a second when an engine is attached. ``after_seq`` resumes after
the last row the page has, so a reconnect neither repeats nor skips a row; an unknown seq_num
gets a ``reset`` and the history again.

Errors: a bad run id is a 404 (``{"error": "not found: ..."}``; an ``error`` message and close code
4404 on the WebSocket); a Tiled run while its server cannot be reached is a 503 (close code 4503:
the page retries).

Auth: when a token is configured every request needs it (``?token=``, ``Authorization: Bearer``,
or the ``spt_view_token`` cookie that the page's own URL sets); otherwise 401 (HTTP) or a refused
WebSocket handshake. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Final, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from spt_stream.view.store import (
    RunNotFoundError,
    RunReader,
    RunSummary,
    SourceUnavailableError,
    TraceRoot,
)
from spt_stream.view.tiled_store import TILED_PREFIX, TiledSource

__all__ = ["STATIC_DIR", "StatusSource", "ViewOptions", "create_app"]

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
TOKEN_COOKIE: Final = "spt_view_token"


class StatusSource(Protocol):
    """Where the attached engine's latest status comes from (None: nothing yet / detached)."""

    def latest(self) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class ViewOptions:
    #: Seconds between two checks of a run's committed row count.
    poll_s: float = 0.25
    #: Rows per ``rows`` message (the history is sent in pages of this size).
    page_rows: int = 2000
    #: Spectra sent with the history: the last this many rows (the heat map's window).
    spectra_window: int = 1000
    #: Seconds between two ``engine`` status messages.
    status_s: float = 1.0


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def _clean(obj: Any) -> Any:
    """Replace non-finite floats (not JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _json(obj: Any, status_code: int = 200) -> Response:
    return Response(_dumps(_clean(obj)), status_code, media_type="application/json")


class _TokenGate:
    """Refuse every request without the token (pure ASGI: covers HTTP and WebSocket)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    def _ok(self, scope: Scope) -> bool:
        candidates: list[str] = []
        qs = scope.get("query_string", b"").decode("latin-1")
        from urllib.parse import parse_qs

        candidates += parse_qs(qs).get("token", [])
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                v = value.decode("latin-1")
                if v.lower().startswith("bearer "):
                    candidates.append(v[7:].strip())
            elif key == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:  # a malformed cookie header is just no token
                    continue
                if TOKEN_COOKIE in jar:
                    candidates.append(jar[TOKEN_COOKIE].value)
        return any(hmac.compare_digest(c.encode(), self._token) for c in candidates)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._ok(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401, "reason": "token required"})
            return
        body = _dumps({"error": "unauthorized: this view needs its token (SPT_VIEW_TOKEN)"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


def create_app(
    root: Path | str,
    *,
    token: str | None = None,
    status: StatusSource | None = None,
    options: ViewOptions | None = None,
    tiled: TiledSource | None = None,
) -> ASGIApp:
    """The view of the trace stores under ``root`` (see module docstring); ``tiled``: a
    :class:`~spt_stream.view.tiled_store.TiledSource` whose runs are listed beside them."""
    traces = TraceRoot(root)
    opts = options or ViewOptions()

    def _live_uids() -> frozenset[str]:
        snap = status.latest() if status is not None else None
        if not snap:
            return frozenset()
        return frozenset(
            str(r.get("run_uid"))
            for r in snap.get("runs", [])
            if isinstance(r, Mapping) and r.get("status") == "open"
        )

    async def index(request: Request) -> Response:
        resp: Response = FileResponse(
            STATIC_DIR / "index.html", headers={"cache-control": "no-store"}
        )
        given = request.query_params.get("token")
        if token is not None and given is not None and hmac.compare_digest(given, token):
            resp.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
        return resp

    def _tiled_runs(live: frozenset[str]) -> tuple[list[RunSummary], str | None]:
        assert tiled is not None
        try:
            return tiled.runs(live), None
        except SourceUnavailableError as exc:  # one line in the run list, never a failure
            return [], str(exc)

    async def runs(request: Request) -> Response:
        live = _live_uids()
        found = await asyncio.to_thread(traces.runs, live)
        tiled_info: dict[str, Any] | None = None
        if tiled is not None:
            more, error = await asyncio.to_thread(_tiled_runs, live)
            found = (
                [r for r in found if r.live]
                + [r for r in more if r.live]
                + [r for r in (*found, *more) if not r.live]
            )
            tiled_info = {"url": tiled.url, "error": error}
        return _json(
            {
                "root": str(traces.root),
                "engine": status is not None,
                "tiled": tiled_info,
                "runs": [r.as_dict() for r in found],
            }
        )

    def _open_reader(run_id: str) -> RunReader:
        if run_id.startswith(TILED_PREFIX):
            if tiled is None:
                raise RunNotFoundError(
                    f"no run {run_id[:80]!r}: this view reads no Tiled server (--tiled-url)"
                )
            reader: RunReader = tiled.reader(run_id)
            return reader
        return traces.reader(run_id)

    async def _reader(request: Request) -> RunReader:
        return await asyncio.to_thread(_open_reader, str(request.path_params["run_id"]))

    def _schema_message(reader: RunReader) -> dict[str, Any]:
        attrs = reader.attrs()
        vars_, coords = reader.schema()
        keep = ("run_uid", "element", "edge", "status", "n_rows", "start_time", "created")
        model = attrs.get("model")
        return {
            "type": "schema",
            "run": {k: attrs.get(k) for k in keep}
            | {
                "id": reader.run_id,
                "source": reader.source,
                "model": model.get("name") if isinstance(model, Mapping) else None,
                "python": reader.python_snippet(),
            },
            "variables": [v.as_dict() for v in vars_.values()],
            "coords": coords,
        }

    async def run_info(request: Request) -> Response:
        reader = await _reader(request)
        return _json(await asyncio.to_thread(_schema_message, reader))

    async def run_rows(request: Request) -> Response:
        reader = await _reader(request)
        try:
            after = request.query_params.get("after_seq")
            after_seq = int(after) if after is not None else None
            limit = min(int(request.query_params.get("limit", opts.page_rows)), opts.page_rows)
        except ValueError:
            return _json({"error": "after_seq and limit must be integers"}, 400)
        start = 0
        if after_seq is not None:
            found = await asyncio.to_thread(reader.row_after_seq, after_seq)
            if found is None:
                return _json({"error": f"seq_num {after_seq} is not in run {reader.run_id}"}, 404)
            start = found
        n = await asyncio.to_thread(reader.n_rows)
        block = await asyncio.to_thread(
            reader.read, start, start + max(limit, 0), spectra_from=n - opts.spectra_window
        )
        return _json(block.as_message() | {"n_rows": n})

    async def engine_status(request: Request) -> Response:
        snap = status.latest() if status is not None else None
        return _json({"attached": status is not None, "status": snap})

    async def ws_run(ws: WebSocket) -> None:
        await ws.accept()
        try:
            reader = await asyncio.to_thread(_open_reader, str(ws.path_params["run_id"]))
        except RunNotFoundError as exc:
            await ws.send_text(_dumps({"type": "error", "status": 404, "error": str(exc)}))
            await ws.close(code=4404, reason="run not found")
            return
        except SourceUnavailableError as exc:
            await _unavailable(ws, exc)
            return
        try:
            await _stream(ws, reader)
        except SourceUnavailableError as exc:  # its Tiled server went away before any row
            await _unavailable(ws, exc)
        except (WebSocketDisconnect, RuntimeError, OSError):  # the page went away mid-send
            return

    async def _unavailable(ws: WebSocket, exc: Exception) -> None:
        try:
            await ws.send_text(_dumps({"type": "error", "status": 503, "error": str(exc)}))
            await ws.close(code=4503, reason="source unavailable")
        except (WebSocketDisconnect, RuntimeError, OSError):
            return

    async def _stream(ws: WebSocket, reader: RunReader) -> None:
        after = ws.query_params.get("after_seq")
        cursor = 0
        if after not in (None, ""):
            try:
                found = await asyncio.to_thread(reader.row_after_seq, int(after))
            except ValueError:
                found = None
            if found is None:
                await ws.send_text(_dumps({"type": "reset", "reason": f"seq_num {after} unknown"}))
            else:
                cursor = found
        schema = await asyncio.to_thread(_schema_message, reader)
        await ws.send_text(_dumps(_clean(schema)))
        names = {v["name"] for v in schema["variables"]}
        last_status = schema["run"].get("status")
        gone = asyncio.ensure_future(_until_closed(ws))
        next_status = 0.0
        try:
            while not gone.done():
                n = await asyncio.to_thread(reader.n_rows)
                if n < cursor:  # the store was replaced by a shorter one
                    await ws.send_text(_dumps({"type": "reset", "reason": "trace rewritten"}))
                    cursor = 0
                if cursor < n:
                    schema = await asyncio.to_thread(_schema_message, reader)
                    now_names = {v["name"] for v in schema["variables"]}
                    if now_names != names:
                        names = now_names
                        await ws.send_text(_dumps(_clean(schema)))
                while cursor < n and not gone.done():
                    stop = min(n, cursor + opts.page_rows)
                    block = await asyncio.to_thread(
                        reader.read, cursor, stop, spectra_from=n - opts.spectra_window
                    )
                    await ws.send_text(_dumps(block.as_message() | {"n_rows": n}))
                    cursor = block.first_row + len(block)
                    if not len(block):
                        break
                run_status = (await asyncio.to_thread(reader.attrs)).get("status")
                if run_status != last_status:
                    last_status = run_status
                    await ws.send_text(
                        _dumps({"type": "status", "status": run_status, "n_rows": cursor})
                    )
                if status is not None and time.monotonic() >= next_status:
                    next_status = time.monotonic() + opts.status_s
                    snap = status.latest()
                    if snap is not None:
                        await ws.send_text(_dumps(_clean({"type": "engine", "status": snap})))
                await asyncio.wait([gone], timeout=opts.poll_s)
        finally:
            gone.cancel()

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code != 404:
            return _json({"error": exc.detail}, exc.status_code)
        what = str(exc) if isinstance(exc, RunNotFoundError) else "no such page or resource"
        return _json({"error": f"not found: {what}"}, 404)

    async def unavailable(request: Request, exc: Exception) -> Response:
        return _json({"error": f"unavailable: {exc}"}, 503)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("view request %s failed: %r", request.url.path, exc)
        return _json({"error": "internal error (see the server's log)"}, 500)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/runs", runs, methods=["GET"]),
        Route("/api/runs/{run_id}", run_info, methods=["GET"]),
        Route("/api/runs/{run_id}/rows", run_rows, methods=["GET"]),
        Route("/api/status", engine_status, methods=["GET"]),
        WebSocketRoute("/ws/runs/{run_id}", ws_run),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_found,
        HTTPException: not_found,
        RunNotFoundError: not_found,
        SourceUnavailableError: unavailable,
        Exception: server_error,
    }
    app: ASGIApp = Starlette(routes=routes, exception_handlers=handlers)
    if token is not None:
        app = _TokenGate(app, token)
    return app


async def _until_closed(ws: WebSocket) -> None:
    """Return when the page closes the socket (messages from the page are ignored)."""
    while True:
        msg: Message = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
