"""The live status view of ``spt-stream run`` (rich): rates, latency, lag, per-run progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["StatusView", "render_status", "sink_cell"]


def render_status(snap: Mapping[str, Any], fps: float, lag: int | None) -> Group:
    """One screen of status from an :meth:`Engine.snapshot` (pure: no I/O)."""
    head = Table.grid(padding=(0, 3))
    p50, p99 = snap.get("latency_p50_ms", float("nan")), snap.get("latency_p99_ms", float("nan"))
    ingest = snap.get("ingest", {})
    head.add_row(
        Text(f"frames {snap.get('frames', 0)}", style="bold"),
        Text(f"{fps:7.1f} frames/s"),
        Text(f"latency p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"),
        Text(f"lag {lag if lag is not None else '-'}"),
        Text(f"pending {snap.get('pending', 0)}"),
        Text(f"rejected {ingest.get('rejected_total', ingest.get('rejected', 0))}"),
        Text(_model_cell(snap.get("model", {}))),
    )
    queues = Table.grid(padding=(0, 3))
    cells = [sink_cell(q) for q in snap.get("sinks", [])]
    if cells:
        queues.add_row(
            Text("backpressure", style="bold red")
            if snap.get("backpressure")
            else Text("sinks", style="dim"),
            *cells,
        )
    runs = Table(title="runs", expand=False, show_edge=False)
    for col in ("run uid", "element", "frames", "duplicates", "status"):
        runs.add_column(col)
    for r in snap.get("runs", []):
        runs.add_row(
            str(r["run_uid"])[:8],
            str(r.get("element") or "?"),
            str(r["frames"]),
            str(r["duplicates"]),
            str(r["status"]),
        )
    return Group(head, queues, runs)


def _model_cell(model: Mapping[str, Any]) -> str:
    """``model aot``, or ``model eager (compiling aot)`` while a background compile runs."""
    text = f"model {model.get('backend', '?')}"
    return text + " (compiling aot)" if model.get("compiling") else text


def sink_cell(queue: Mapping[str, Any]) -> Text:
    """One sink queue: ``name depth/capacity``, the seconds the engine has waited on it, and
    ``BLOCKED`` (red) while it waits now."""
    text = Text(
        f"{queue.get('name', '?')} {queue.get('queue_depth', 0)}/{queue.get('queue_capacity', '?')}"
        f" waited {float(queue.get('blocked_s', 0.0)):.1f} s"
    )
    if queue.get("blocked"):
        text.append(" BLOCKED", style="bold red")
    return text


class StatusView:
    """Refresh :func:`render_status` from a snapshot callable in a daemon thread."""

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, Any]],
        *,
        lag: Callable[[], int | None] = lambda: None,
        console: Console | None = None,
        period_s: float = 0.5,
    ) -> None:
        self._snapshot = snapshot
        self._lag = lag
        self._console = console or Console(stderr=True)
        self._period = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        last_frames, last_t = 0, time.monotonic()
        with Live(console=self._console, refresh_per_second=4, transient=False) as live:
            while not self._stop.wait(self._period):
                try:
                    snap = self._snapshot()
                except RuntimeError:  # dict changed size during a read: try again next tick
                    continue
                now = time.monotonic()
                frames = int(snap.get("frames", 0))
                fps = (frames - last_frames) / max(now - last_t, 1e-9)
                last_frames, last_t = frames, now
                live.update(render_status(snap, fps, self._lag()))

    def __enter__(self) -> StatusView:
        self._thread = threading.Thread(target=self._loop, name="spt-status", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
