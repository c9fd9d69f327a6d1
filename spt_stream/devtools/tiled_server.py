"""A local, writable Tiled server in a child process (tests, ``spt-stream demo --tiled``).

Config-file mode (``tiled serve config``) from
``spt_stream/configs/tiled/local-server.yml.template``: a SQLite catalog, a data directory and a
DuckDB file for appendable tables, and the ``application/json-seq`` exporter of
``bluesky-tiled-plugins`` so stored Bluesky runs can be replayed (``run.documents()``). The API
key is set in the config (``authentication.single_user_api_key``); the URL the server prints at
start-up carries a different key that gets 401, so use :attr:`TiledServer.api_key`. Needs the
``tiled-server`` extra.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from spt_stream.config import CONFIG_DIR
from spt_stream.devtools.broker import find_free_port
from spt_stream.errors import SourceError

__all__ = ["TiledServer"]

TEMPLATE = CONFIG_DIR / "tiled" / "local-server.yml.template"
_STARTUP_TIMEOUT_S = 90.0


@dataclass
class TiledServer:
    """A ``tiled serve config`` child process; ``url``/``api_key`` stay valid across restarts."""

    workdir: Path
    port: int = field(default_factory=find_free_port)
    api_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __iter__(self) -> Iterator[str]:
        return iter((self.url, self.api_key))

    def start(self) -> None:
        """Start the server (idempotent) and wait until ``/api/v1/`` answers."""
        if self.process is not None and self.process.poll() is None:
            return
        config = self.workdir / "config.yml"
        if not config.exists():
            text = TEMPLATE.read_text(encoding="utf-8")
            for key, value in {
                "API_KEY": self.api_key,
                "CATALOG": str(self.workdir / "catalog.db"),
                "DATA_DIR": str(self.workdir / "data"),
                "TABLES": str(self.workdir / "tables.duckdb"),
            }.items():
                text = text.replace("{" + key + "}", value)
            config.write_text(text, encoding="utf-8")
        tiled = Path(sys.executable).with_name("tiled")
        log = (self.workdir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [str(tiled), "serve", "config", str(config), "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, "TILED_SINGLE_USER_API_KEY": self.api_key},
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SourceError(f"tiled server exited; see {self.workdir / 'server.log'}")
            try:
                if httpx.get(f"{self.url}/api/v1/", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SourceError(f"tiled server did not answer in {_STARTUP_TIMEOUT_S} s")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel but nothing
        answers, so requests time out after they may have been received (ambiguous failures)."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT); requests queued meanwhile are then processed."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s; ``kill=True``: SIGKILL at once, like a
        crash); the catalog and data stay."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> TiledServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
