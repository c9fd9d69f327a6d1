"""Replay of Bluesky runs stored in Tiled (the bluesky-tiled-plugins layout, as TiledWriter writes).

Each run is read back with ``client[uid].documents()``: the server re-emits the run's documents
(start, descriptors, events, stream resources/datums, stop) through bluesky-tiled-plugins'
``application/json-seq`` exporter, which the server must be configured with::

    media_types:
      container:
        application/json-seq: bluesky_tiled_plugins.exporters:json_seq_exporter

(a server without it answers 406; this module turns that into a :class:`SourceError` saying so).

What comes back, compared with what the RunEngine emitted: start, descriptor and stop documents
are the stored ones (same uids); events are rebuilt from the stored table, with the original
``seq_num``, ``time``, ``data`` and ``timestamps`` but a synthetic ``uid``
(``event-<descriptor uid>-<seq_num>``) and no ``filled``; array readings come back as JSON lists
and are restored to numpy arrays (:class:`~spt_stream.transports.replay.ArrayRestorer`). Frames are
identified by ``(run_uid, seq_num)``, so the trace is the same as the live one.

Runs are chosen by uid (one, or a list, replayed in the order given) or by a metadata search
(a mapping of start-document keys to values, dotted for nested keys, all of which must match),
replayed in order of their start time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from spt_stream.errors import ConfigError, DocumentError, SourceError
from spt_stream.protocols import DocumentHandler, Position
from spt_stream.transports.replay import (
    ArrayRestorer,
    CountingHandler,
    ReplayStats,
    replay_progress,
)

if TYPE_CHECKING:
    from tiled.client.container import Container

__all__ = ["RunSelection", "parse_tiled_filter", "replay_tiled", "select_runs"]

#: One uid, several uids (replayed in the given order), or a start-metadata filter.
RunSelection = str | Sequence[str] | Mapping[str, Any]

_JSON_SEQ_HELP = (
    "the Tiled server cannot export Bluesky runs as application/json-seq: add "
    "'media_types: {container: {application/json-seq: "
    "bluesky_tiled_plugins.exporters:json_seq_exporter}}' to its configuration"
)


def parse_tiled_filter(terms: Iterable[str]) -> dict[str, Any]:
    """``["sample=LiCoO2", "scan_id=3"]`` -> ``{"sample": "LiCoO2", "scan_id": 3}`` (for the CLI).

    Each value is read as JSON when it parses (numbers, booleans, quoted strings), else taken
    as a plain string.

    Raises
    ------
    ConfigError
        A term without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for term in terms:
        key, sep, raw = term.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Tiled filter {term!r} must look like key=value")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def _connect(url: str, api_key: str | SecretStr | None) -> Container:
    from tiled.client import from_uri

    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    try:
        return from_uri(url, api_key=key)
    except Exception as exc:  # httpx connection errors, 401/404 ClientError, bad URL
        raise SourceError(
            f"cannot open Tiled at {url}: {type(exc).__name__}: {exc}"[:500], source=url
        ) from exc


def select_runs(client: Container, runs: RunSelection) -> list[str]:
    """The uids to replay: ``runs`` itself for uids, else the search results by start time."""
    if isinstance(runs, str):
        return [runs]
    if not isinstance(runs, Mapping):
        return [str(uid) for uid in runs]
    from tiled.queries import Key

    node = client
    for key, value in runs.items():
        path = key if key.startswith(("start.", "stop.")) else f"start.{key}"
        node = node.search(Key(path) == value)
    found: list[tuple[float, str]] = []
    for uid, run in node.items():
        start = run.metadata.get("start", {}) if isinstance(run.metadata, Mapping) else {}
        t = start.get("time") if isinstance(start, Mapping) else None
        found.append((float(t) if isinstance(t, int | float) else float("inf"), str(uid)))
    return [uid for _, uid in sorted(found)]


def _documents(client: Container, uid: str, url: str) -> Iterator[tuple[str, Any]]:
    from tiled.client.utils import ClientError

    try:
        run = client[uid]
        yield from run.documents()
    except ClientError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 406:
            raise SourceError(_JSON_SEQ_HELP, run_uid=uid, source=url) from exc
        raise SourceError(f"Tiled refused run {uid}: {exc}"[:500], run_uid=uid, source=url) from exc


def replay_tiled(
    url: str,
    runs: RunSelection,
    handler: DocumentHandler,
    *,
    api_key: str | SecretStr | None = None,
    progress: bool = False,
) -> ReplayStats:
    """Hand the documents of Bluesky runs stored in Tiled to ``handler``, run after run.

    Parameters
    ----------
    url:
        The Tiled server or container holding the runs (``http://host:8000``, or a path below).
    runs:
        A run uid, a sequence of uids (in that order), or a start-metadata filter such as
        ``{"sample": "LiCoO2", "spt.element": "Co"}`` (matching runs, oldest first).
    api_key:
        The server's API key (the CLI takes it from ``SPT_TILED_API_KEY``).

    A uid the server does not have, and a run with no stop document yet (the exporter then
    sends an empty one), go to ``handler.reject`` and the replay continues. Every document's
    position is ``Position(file=<url>/<uid>, line=<index in the run, 1-based>)``.

    Raises
    ------
    SourceError
        The server cannot be reached, refuses the key, or lacks the json-seq exporter.
    """
    client = _connect(url, api_key)
    uids = select_runs(client, runs)
    counting = CountingHandler(handler)
    base = url.rstrip("/")
    with replay_progress("replay Tiled runs", len(uids), enabled=progress, unit="runs") as advance:
        for uid in uids:
            source = f"{base}/{uid}"
            if uid not in client:
                counting.reject(
                    DocumentError(f"no run {uid} in Tiled", run_uid=uid, source=base),
                    None,
                    Position(file=source),
                )
                advance(1)
                continue
            counting.stats.sources.append(source)
            restorer = ArrayRestorer()
            for index, (name, doc) in enumerate(_documents(client, uid, base), start=1):
                position = Position(file=source, line=index)
                if name == "stop" and not doc:
                    counting.reject(
                        DocumentError(
                            "run has no stop document in Tiled (still running, or the writer "
                            "died): replayed without one",
                            run_uid=uid,
                            source=source,
                        ),
                        None,
                        position,
                    )
                    continue
                counting(name, restorer(name, dict(doc)), position)
            advance(1)
    return counting.stats
