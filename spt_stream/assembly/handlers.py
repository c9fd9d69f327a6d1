"""event-model handlers for externally stored spectra (resource/datum documents).

A handler class is called once per resource as ``Handler(full_path, **resource_kwargs)`` and the
instance once per datum as ``handler(**datum_kwargs)`` (event-model's Filler protocol). Files are
read with ``allow_pickle=False``: a resource document never makes us unpickle anything.

Specs supported:

* ``NPY``: ``resource_path`` is one ``.npy`` file. Without ``index`` the datum is the whole array;
  with ``index`` it is that row (a stack of spectra, one per event; memory-mapped, one row copied).
* ``NPY_SEQ``: one ``.npy`` file per datum, ``<resource_path>_<index>.npy``; this is what ophyd's
  registry-backed simulated detectors (``ophyd.sim.SynSignalWithRegistry``) write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_HANDLERS", "NpyHandler", "NpySeqHandler"]


class NpyHandler:
    """Spec ``NPY``: a single ``.npy`` file, whole or one row per datum."""

    def __init__(self, resource_path: str, **resource_kwargs: Any) -> None:
        self._path = Path(resource_path)
        self._array: np.ndarray[Any, Any] | None = None

    def __call__(self, index: int | None = None, **datum_kwargs: Any) -> np.ndarray[Any, Any]:
        if self._array is None:
            self._array = np.load(self._path, mmap_mode="r", allow_pickle=False)
        if index is None:
            return np.array(self._array)
        return np.array(self._array[int(index)])


class NpySeqHandler:
    """Spec ``NPY_SEQ``: file ``<resource_path>_<index>.npy`` per datum."""

    def __init__(self, resource_path: str, **resource_kwargs: Any) -> None:
        self._stem = str(resource_path)

    def __call__(self, index: int, **datum_kwargs: Any) -> np.ndarray[Any, Any]:
        data: np.ndarray[Any, Any] = np.load(f"{self._stem}_{int(index)}.npy", allow_pickle=False)
        return data


#: Handler registry used by :class:`~spt_stream.assembly.FrameAssembler` unless told otherwise.
DEFAULT_HANDLERS: dict[str, type[Any]] = {"NPY": NpyHandler, "NPY_SEQ": NpySeqHandler}
