"""One entry point for ``spt-stream replay SOURCE...``: route each source to its replay consumer.

* ``http://`` / ``https://`` URL: a Tiled server or container; the runs come from ``runs``
  (uids or a start-metadata filter, see :mod:`spt_stream.transports.tiled_replay`);
* ``*.jsonl`` / ``*.json``: a bluesky document file (:mod:`spt_stream.transports.jsonl`);
* anything else: a spectrum file; all spectrum files given together make ONE run
  (:mod:`spt_stream.transports.files`), replayed after the document files.

Sources are replayed in the order given, spectrum files last (they form one run together).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from spt_stream.errors import ConfigError
from spt_stream.protocols import DocumentHandler
from spt_stream.transports.replay import ReplayStats

__all__ = ["DOCUMENT_SUFFIXES", "replay_sources"]

#: File suffixes read as bluesky document files rather than spectra.
DOCUMENT_SUFFIXES = frozenset({".jsonl", ".json"})


def replay_sources(
    sources: Sequence[str],
    handler: DocumentHandler,
    *,
    runs: str | Sequence[str] | dict[str, object] | None = None,
    api_key: str | SecretStr | None = None,
    element: str | None = None,
    edge: str | None = None,
    progress: bool = False,
) -> ReplayStats:
    """Replay every source through ``handler``; returns the summed :class:`ReplayStats`.

    Raises
    ------
    ConfigError
        A Tiled URL without ``runs``, or no sources at all.
    SourceError, AssemblyError
        As raised by the Tiled and spectrum-file consumers.
    """
    if not sources:
        raise ConfigError("nothing to replay: give a JSONL file, a Tiled URL or spectrum files")
    total = ReplayStats()
    spectra: list[str] = []
    for source in sources:
        if source.startswith(("http://", "https://")):
            if runs is None:
                raise ConfigError(f"which runs to replay from {source}? give uids or a search")
            from spt_stream.transports.tiled_replay import replay_tiled

            total += replay_tiled(source, runs, handler, api_key=api_key, progress=progress)
        elif Path(source).suffix.lower() in DOCUMENT_SUFFIXES:
            from spt_stream.transports.jsonl import replay_jsonl

            total += replay_jsonl(source, handler, progress=progress)
        else:
            spectra.append(source)
    if spectra:
        from spt_stream.transports.files import replay_files

        total += replay_files(spectra, handler, element=element, edge=edge, progress=progress)
    return total
