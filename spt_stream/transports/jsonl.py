"""Replay of Bluesky documents stored as JSON lines (bluesky's ``JSONLinesWriter`` layout).

``bluesky.callbacks.json_writer.JSONLinesWriter`` appends one JSON object per document,
``{"name": <document name>, "doc": <document>}``, one per line; a file may hold several runs one
after another. Also accepted, line by line: a 2-element ``[name, doc]`` array (the
bluesky-kafka message layout as JSON), blank lines, and ``JSONWriter``'s single JSON array
(its ``[`` and ``]`` lines are skipped and the trailing comma of each element line dropped).

A line that is not one of those (truncated by a crash, hand-edited, binary junk) is reported as
:class:`~spt_stream.errors.DecodeError` naming the file and line, and reading goes on with the
next line. Array data that JSON turned into lists is restored with
:class:`~spt_stream.transports.replay.ArrayRestorer`, so the documents match what the RunEngine
emitted.

Note that ``JSONLinesWriter`` uses :func:`json.dump` as is, so a run with numpy array readings
must be sanitized before writing, e.g.
``RE.subscribe(lambda name, doc: writer(name, event_model.sanitize_doc(doc)))``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from spt_stream.errors import DecodeError, SourceError
from spt_stream.protocols import DocumentHandler, Position
from spt_stream.transports.replay import (
    ArrayRestorer,
    CountingHandler,
    ReplayStats,
    replay_progress,
)

__all__ = ["iter_jsonl_documents", "parse_jsonl_line", "replay_jsonl"]

#: Longest line read; beyond it the line is rejected rather than held in memory.
MAX_LINE_BYTES = 256 * 1024 * 1024


def parse_jsonl_line(raw: bytes) -> tuple[str, dict[str, Any]] | None:
    """Decode one line into ``(name, doc)``; None for a line that carries no document.

    Raises
    ------
    DecodeError
        If the line is not UTF-8 JSON of ``{"name": str, "doc": object}`` or ``[str, object]``
        (without file/line: the caller adds them).
    """
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"line is not valid UTF-8: {exc}") from None
    if text in ("", "[", "]"):  # blank line, or JSONWriter's array brackets
        return None
    if text.endswith(","):  # an element line of JSONWriter's array
        text = text[:-1]
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError(f"not valid JSON: {exc}"[:300]) from None
    if isinstance(obj, dict):
        if set(obj) != {"name", "doc"}:
            keys = ", ".join(sorted(map(str, obj))[:8])
            raise DecodeError(f'expected an object with keys "name" and "doc", got keys {keys}')
        name, doc = obj["name"], obj["doc"]
    elif isinstance(obj, list) and len(obj) == 2:
        name, doc = obj
    else:
        raise DecodeError(
            f'expected {{"name": ..., "doc": ...}} or [name, doc], got {type(obj).__name__}'
        )
    if not isinstance(name, str):
        raise DecodeError(f"document name must be a string, got {type(name).__name__}")
    if not isinstance(doc, dict):
        raise DecodeError(f"{name!r} document must be a JSON object, got {type(doc).__name__}")
    return name, doc


def _records(
    path: Path,
) -> Iterator[tuple[int, int, bytes, tuple[str, dict[str, Any]] | DecodeError | None]]:
    """``(line number, bytes consumed, raw line, parsed | error | None)`` for every line."""
    source = str(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(raw) > MAX_LINE_BYTES:
                err = DecodeError(
                    f"line of {len(raw)} bytes exceeds {MAX_LINE_BYTES}", source=source, line=lineno
                )
                yield lineno, len(raw), raw[:4096], err
                continue
            try:
                parsed = parse_jsonl_line(raw)
            except DecodeError as exc:
                err = DecodeError(exc.message, source=source, line=lineno)
                yield lineno, len(raw), raw, err
                continue
            yield lineno, len(raw), raw, parsed


def iter_jsonl_documents(
    path: str | os.PathLike[str],
    *,
    on_error: Callable[[DecodeError, bytes, Position], None] | None = None,
) -> Iterator[tuple[str, dict[str, Any], Position]]:
    """Yield ``(name, doc, Position(file=path, line=n))`` for every document in a JSONL file.

    Array data keys (per the run's descriptors) come back as :class:`numpy.ndarray`.

    Parameters
    ----------
    on_error:
        Called with ``(error, raw line, position)`` for a malformed line, and reading continues.
        Without it, the first malformed line raises its :class:`DecodeError`.

    Raises
    ------
    DecodeError
        For a malformed line when no ``on_error`` is given; ``OSError`` if the file cannot be
        opened.
    """
    p = Path(path)
    restorer = ArrayRestorer()
    for lineno, _, raw, parsed in _records(p):
        position = Position(file=str(p), line=lineno)
        if isinstance(parsed, DecodeError):
            if on_error is None:
                raise parsed
            on_error(parsed, raw, position)
            continue
        if parsed is None:
            continue
        name, doc = parsed
        yield name, dict(restorer(name, doc)), position


def replay_jsonl(
    path: str | os.PathLike[str], handler: DocumentHandler, *, progress: bool = False
) -> ReplayStats:
    """Hand every document of a JSONL file to ``handler``, in file order.

    Malformed lines go to ``handler.reject(DecodeError(..., source=path, line=n), raw_line,
    Position(file=path, line=n))`` and the replay continues. ``progress`` draws a rich bar
    over the file's bytes.

    Returns
    -------
    ReplayStats
        Documents delivered, runs (start documents) among them, lines rejected.
    """
    p = Path(path)
    counting = CountingHandler(handler)
    counting.stats.sources.append(str(p))
    restorer = ArrayRestorer()
    try:
        total = p.stat().st_size
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc.strerror or exc}", source=str(p)) from exc
    with replay_progress(f"replay {p.name}", total, enabled=progress, unit="bytes") as advance:
        for lineno, nbytes, raw, parsed in _records(p):
            position = Position(file=str(p), line=lineno)
            if isinstance(parsed, DecodeError):
                counting.reject(parsed, raw, position)
            elif parsed is not None:
                name, doc = parsed
                counting(name, restorer(name, doc), position)
            advance(nbytes)
    return counting.stats
