"""Serving the view: in a thread (tests, ``spt-stream view``) or in a child process next to a
running engine (``--view`` on ``run``, ``replay``, ``demo``).

Next to an engine the view runs in its own process, so its reads of the trace store and its
JSON encoding never take the engine's interpreter lock. The engine's status reaches it through a
bounded side channel: a daemon thread puts :meth:`Engine.snapshot` into a queue of two once a
second and drops the snapshot when the queue is full; the engine itself never waits on the view.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr

from spt_stream.errors import ConfigError

__all__ = [
    "TOKEN_ENV",
    "QueueStatus",
    "ViewProcess",
    "ViewServer",
    "check_bind",
    "view_url",
]

log = logging.getLogger(__name__)

#: Environment variable holding the view's access token (required off the loopback).
TOKEN_ENV: Final = "SPT_VIEW_TOKEN"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> str | None:
    """The token to require: ``token``, else ``$SPT_VIEW_TOKEN``; raises :class:`ConfigError`
    when ``host`` is not a loopback address and there is no token."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not _is_loopback(host):
        raise ConfigError(
            f"the view binds to {host}, beyond this machine: set {TOKEN_ENV} to a secret token "
            "(the page is then opened as http://HOST:PORT/?token=...), or bind 127.0.0.1"
        )
    return token


def view_url(host: str, port: int) -> str:
    """The URL to print (never with the token in it)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


class QueueStatus:
    """The latest engine status from a side-channel queue (a :class:`StatusSource`), with the
    frame rate computed from successive snapshots."""

    def __init__(self, q: Any) -> None:
        self._q = q
        self._latest: dict[str, Any] | None = None
        self._prev: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def latest(self) -> Mapping[str, Any] | None:
        with self._lock:
            while True:
                try:
                    item = self._q.get_nowait()
                except (queue.Empty, OSError, EOFError, ValueError):
                    break
                if isinstance(item, dict):
                    self._take(item)
            return self._latest

    def _take(self, snap: dict[str, Any]) -> None:
        t = float(snap.get("t", time.time()))
        frames = int(snap.get("frames", 0))
        if self._prev is not None and t > self._prev[0]:
            snap["frames_per_s"] = (frames - self._prev[1]) / (t - self._prev[0])
        elif self._latest is not None:
            snap["frames_per_s"] = self._latest.get("frames_per_s", 0.0)
        self._prev = (t, frames)
        self._latest = snap


@dataclass
class _Bound:
    host: str
    port: int


class ViewServer:
    """The view's uvicorn server on a background thread (``port=0``: a free port)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws_ping_interval=10.0,
            ws_ping_timeout=10.0,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self.bound: _Bound | None = None

    @property
    def url(self) -> str:
        assert self.bound is not None, "not started"
        return view_url(self.bound.host, self.bound.port)

    def start(self, timeout_s: float = 20.0) -> ViewServer:
        self._thread = threading.Thread(target=self._server.run, name="spt-view", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(
                    f"the view could not listen on {self._config.host}:{self._config.port}"
                )
            time.sleep(0.02)
        sock = self._server.servers[0].sockets[0]
        addr = sock.getsockname()
        self.bound = _Bound(str(addr[0]), int(addr[1]))
        return self

    def wait(self) -> None:
        """Block until the server stops (KeyboardInterrupt goes to the caller)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _child(
    root: str,
    host: str,
    port: int,
    token: str | None,
    status_q: Any,
    ready_q: Any,
    tiled: tuple[str, Any] | None = None,
) -> None:
    """The child process: serve the view until terminated (``tiled``: URL and API key)."""
    import signal

    from spt_stream.view.app import create_app
    from spt_stream.view.tiled_store import TiledSource

    app = create_app(
        root,
        token=token,
        status=QueueStatus(status_q) if status_q else None,
        tiled=TiledSource(tiled[0], tiled[1]) if tiled is not None else None,
    )
    server = ViewServer(app, host, port)
    try:
        server.start()
    except Exception as exc:  # reported to the parent, which raises it
        ready_q.put(("error", str(exc)))
        return
    assert server.bound is not None
    ready_q.put(("ok", server.bound.port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    while not stop.wait(0.5):
        if os.getppid() == 1:  # the parent died without stopping us
            break
    server.stop()


class ViewProcess:
    """The view in a child process next to a running engine (context manager).

    ``snapshot``: the engine's :meth:`~spt_stream.engine.Engine.snapshot` (called once a second
    on a daemon thread here; the result is dropped when the view has not taken the last two);
    ``lag``: the consumer lag, added to the snapshot; ``tiled_url``/``tiled_api_key``: also list
    the runs the Tiled sink wrote there (the key travels to the child through its start-up pipe,
    never on a command line or in a log).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        snapshot: Callable[[], Mapping[str, Any]] | None = None,
        lag: Callable[[], int | None] | None = None,
        period_s: float = 1.0,
        tiled_url: str | None = None,
        tiled_api_key: SecretStr | str | None = None,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self._token = check_bind(host, token)
        self._snapshot = snapshot
        self._lag = lag
        self._period = period_s
        ctx = mp.get_context("spawn")
        self._status_q: Any = ctx.Queue(maxsize=2) if snapshot is not None else None
        self._ready_q: Any = ctx.Queue()
        self._proc = ctx.Process(
            target=_child,
            args=(
                str(self.root),
                host,
                port,
                self._token,
                self._status_q,
                self._ready_q,
                (tiled_url, _secret(tiled_api_key)) if tiled_url else None,
            ),
            name="spt-view",
            daemon=True,
        )
        self._stop = threading.Event()
        self._pusher: threading.Thread | None = None
        self.dropped = 0

    @property
    def url(self) -> str:
        return view_url(self.host, self.port)

    def is_alive(self) -> bool:
        return self._proc.is_alive()

    def start(self, timeout_s: float = 60.0) -> ViewProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        self._proc.start()
        try:
            kind, value = self._ready_q.get(timeout=timeout_s)
        except queue.Empty:
            self.stop()
            raise ConfigError("the view did not start in time") from None
        if kind != "ok":
            self.stop()
            raise ConfigError(str(value))
        self.port = int(value)
        if self._snapshot is not None:
            self._pusher = threading.Thread(target=self._push, name="spt-view-status", daemon=True)
            self._pusher.start()
        return self

    def _push(self) -> None:
        assert self._snapshot is not None
        while not self._stop.wait(self._period):
            try:
                snap = dict(self._snapshot())
                snap["t"] = time.time()
                if self._lag is not None:
                    snap["lag"] = self._lag()
                self._status_q.put_nowait(snap)
            except queue.Full:
                self.dropped += 1
            except Exception as exc:  # a status read racing the engine: skip this tick
                log.debug("view status snapshot skipped: %r", exc)

    def wait(self) -> None:
        """Block until Ctrl-C (or the view process ends)."""
        try:
            while self._proc.is_alive():
                self._proc.join(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self) -> None:
        self._stop.set()
        if self._pusher is not None:
            self._pusher.join(timeout=2)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(2)
        for q in (self._status_q, self._ready_q):
            if q is not None:
                q.cancel_join_thread()
                q.close()

    def __enter__(self) -> ViewProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _secret(key: SecretStr | str | None) -> SecretStr | None:
    return SecretStr(key) if isinstance(key, str) else key
