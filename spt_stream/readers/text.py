"""Readers for text spectrum files: XDI, SPEC-like ``#L`` scans and column ASCII with headers.

How columns are recognised (names compared case-insensitively):

- names come from XDI ``# Column.N: name`` lines, else a SPEC ``#L`` line, else the last header
  line whose word count equals the number of data columns; files with no names are read as
  ``energy mu [...]``;
- energy: a column named ``energy``/``e``/``energy_ev``, else the first name containing
  ``energ``, else the first column. An energy column whose largest value is below
  :data:`KEV_THRESHOLD` is in keV and converted to eV;
- mu, in this order: a mu column (``mu``, ``xmu``, ``mutrans``, ``mufluor``, ``normtrans``,
  ...); fluorescence ROI columns of a multi-element detector (``Fe_Ka_mca1``...) summed over i0;
  transmission ``ln(i0/it)``; fluorescence ``if/i0``; the second column. ``mode`` says which;
- channel names: i0 ``i0 io izero mon monitor``, it ``itrans it i1``, if ``ifluor if``, iref
  ``irefer iref i2``; plus two beamline layouts met in real files: PETRA III P65 voltage-to-
  frequency converters (``VFC01`` = i0, ``VFC02`` = i1, ``VFC03`` = i2) and ALBA electrometer
  ``albaemNN_ch1..4`` (i0 = ch1 + ch2, it = ch3 + ch4, as the parseq-xas ALBA definitions use).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from spt_stream.core.frames import FloatArray, Mode
from spt_stream.errors import ReaderError
from spt_stream.normalize.flags import QualityFlag
from spt_stream.readers.spectrum import Spectrum

__all__ = ["DUPLICATE_ENERGY_EV", "KEV_THRESHOLD", "infer_edge", "read_spectra", "read_spectrum"]

#: Energies closer than this (eV) are one point (Larch's smallest tolerated step).
DUPLICATE_ENERGY_EV = 5e-4
#: An energy column whose maximum is below this is taken to be in keV.
KEV_THRESHOLD = 100.0

_MU_NAMES = ("mu", "xmu", "mutrans", "mu_trans", "mufluor", "mu_fluor", "normtrans", "normfluor")
_I0_NAMES = ("i0", "io", "izero", "i_0", "mon", "monitor", "vfc01")
_IT_NAMES = ("itrans", "it", "i1", "i_t", "vfc02")
_IF_NAMES = ("ifluor", "if", "i_f", "fluo", "fluor")
_IREF_NAMES = ("irefer", "iref", "i2", "i_ref", "vfc03")
_ROI = re.compile(r"^[a-z]{1,2}_k[ab]\w*$")
_ALBA = re.compile(r"^(albaem\d+)_ch([1-4])$")
_XDI_FIELD = re.compile(r"^#\s*([A-Za-z][\w-]*\.[\w.-]+)\s*:\s*(.*)$")
_KEYVAL = re.compile(r"^#\s*([A-Za-z][\w .()/-]{0,60}?)\s*[:=]\s*(.+)$")
_TIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%d-%m-%Y %H:%M:%S",
    "%a %b %d %H:%M:%S %Y",
)
_TIME_PATTERNS = (
    re.compile(r"^#\s*Scan started at (.+?)(?:,|$)"),
    re.compile(r"^#C Acquisition started at (.+)$"),
    re.compile(r"^#D (.+)$"),
)


def _parse_time(text: str) -> float | None:
    text = text.strip()
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        stamp = None
        for fmt in _TIME_FORMATS:
            try:
                stamp = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _scalar(text: str) -> Any:
    value = text.split("||")[0].strip()
    try:
        return float(value)
    except ValueError:
        return value


def _split(line: str) -> list[str]:
    return [tok for tok in re.split(r"[\s,;]+", line.strip()) if tok]


class _Parsed:
    def __init__(self) -> None:
        self.header: list[tuple[int, str]] = []
        self.rows: list[list[float]] = []
        self.first_data_line = 0


def _parse_lines(path: str, text: str) -> _Parsed:
    out = _Parsed()
    ncols = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(("#", ";", "!")):
            out.header.append((lineno, line))
            continue
        tokens = _split(line)
        try:
            values = [float(tok) for tok in tokens]
        except ValueError as exc:
            if not out.rows:  # a header line without a comment marker
                out.header.append((lineno, "# " + line))
                continue
            raise ReaderError(
                f"not a number in data line: {line[:60]!r}", source=path, line=lineno
            ) from exc
        if ncols is None:
            ncols = len(values)
            out.first_data_line = lineno
        elif len(values) != ncols:
            raise ReaderError(
                f"data line has {len(values)} columns, expected {ncols}", source=path, line=lineno
            )
        out.rows.append(values)
    if len(out.rows) < 2:
        raise ReaderError("no data lines found", source=path)
    return out


def _column_names(parsed: _Parsed, ncols: int) -> list[str] | None:
    xdi: dict[int, str] = {}
    for _, line in parsed.header:
        m = re.match(r"^#\s*Column\.(\d+)\s*:\s*(\S+)", line, flags=re.IGNORECASE)
        if m:
            xdi[int(m.group(1))] = m.group(2).lower()
    if xdi:
        return [xdi.get(i + 1, f"col{i + 1}") for i in range(ncols)]
    for _, line in parsed.header:
        if line.startswith("#L "):
            names = [s.lower() for s in re.split(r"\s{2,}", line[3:].strip())]
            if len(names) != ncols:
                names = [s.lower() for s in line[3:].split()]
            if len(names) == ncols:
                return names
    for _, line in reversed(parsed.header):
        words = line.lstrip("#;! ").split()
        if len(words) == ncols and not all(_is_number(w) for w in words):
            return [w.lower() for w in words]
    return None


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _metadata(parsed: _Parsed) -> tuple[dict[str, Any], float | None]:
    meta: dict[str, Any] = {}
    stamp: float | None = None
    for _, line in parsed.header:
        m = _XDI_FIELD.match(line)
        if m and not m.group(1).lower().startswith("column."):
            meta[m.group(1)] = _scalar(m.group(2))
        elif (k := _KEYVAL.match(line)) and not line.startswith(("#L", "#S")):
            meta.setdefault(k.group(1).strip(), _scalar(k.group(2)))
        if line.startswith("#S "):
            meta["scan"] = line[3:].strip()
        for pattern in _TIME_PATTERNS:
            t = pattern.match(line)
            if t and stamp is None:
                stamp = _parse_time(t.group(1))
    for key in ("Scan.start_time", "Scan.start"):
        if stamp is None and isinstance(meta.get(key), str):
            stamp = _parse_time(meta[key])
    return meta, stamp


def _find(names: list[str], choices: Sequence[str]) -> int | None:
    for choice in choices:
        if choice in names:
            return names.index(choice)
    return None


def _energy_index(names: list[str]) -> int:
    exact = _find(names, ("energy", "e", "energy_ev", "energy_kev"))
    if exact is not None:
        return exact
    for i, name in enumerate(names):
        if "energ" in name:
            return i
    return 0


def _ratio_log(num: FloatArray, den: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = np.log(num / den)
    return np.where(np.isfinite(out), out, np.nan)


def _channels(names: list[str], data: FloatArray) -> dict[str, FloatArray]:
    chans: dict[str, FloatArray] = {}
    for key, choices in (
        ("i0", _I0_NAMES),
        ("it", _IT_NAMES),
        ("if", _IF_NAMES),
        ("iref", _IREF_NAMES),
    ):
        idx = _find(names, choices)
        if idx is not None:
            chans[key] = data[:, idx]
    alba: dict[str, dict[int, int]] = {}
    for i, name in enumerate(names):
        m = _ALBA.match(name)
        if m:
            alba.setdefault(m.group(1), {})[int(m.group(2))] = i
    for chs in alba.values():
        if len(chs) == 4 and "i0" not in chans:
            chans["i0"] = data[:, chs[1]] + data[:, chs[2]]
            chans["it"] = data[:, chs[3]] + data[:, chs[4]]
    rois = [i for i, name in enumerate(names) if _ROI.match(name)]
    if rois:
        chans["if_roi"] = data[:, rois].sum(axis=1)
    return chans


def _choose_mu(
    names: list[str] | None, data: FloatArray, e_idx: int, chans: dict[str, FloatArray]
) -> tuple[FloatArray, Mode, str]:
    if names is not None:
        idx = _find(names, _MU_NAMES)
        if idx is not None:
            return data[:, idx].copy(), "mu", f"column {names[idx]}"
        if "i0" in chans and "if_roi" in chans:
            return chans["if_roi"] / chans["i0"], "fluorescence", "sum of fluorescence ROIs / i0"
        if "i0" in chans and "it" in chans:
            return _ratio_log(chans["i0"], chans["it"]), "transmission", "ln(i0/it)"
        if "i0" in chans and "if" in chans:
            return chans["if"] / chans["i0"], "fluorescence", "if/i0"
    other = 1 if e_idx == 0 else 0
    label = names[other] if names is not None else f"column {other + 1}"
    return data[:, other].copy(), "mu", f"column {label}"


def _element_from_meta(meta: dict[str, Any]) -> tuple[str | None, str | None]:
    lower = {k.lower(): v for k, v in meta.items()}
    element = edge = None
    for key in ("element.symbol", "scanparameters.element", "element"):
        if isinstance(lower.get(key), str) and lower[key].strip():
            element = lower[key].strip().capitalize()
            break
    for key in ("element.edge", "scanparameters.edge", "edge"):
        if isinstance(lower.get(key), str) and lower[key].strip():
            edge = lower[key].strip().upper()
            break
    return element, edge


def _k_edges() -> list[tuple[str, float]]:
    import xraydb

    table = []
    for z in range(3, 96):
        sym = xraydb.atomic_symbol(z)
        try:
            table.append((sym, float(xraydb.xray_edge(sym, "K").energy)))
        except Exception:  # xraydb has no K edge for this element
            continue
    return table


_K_EDGES: list[tuple[str, float]] | None = None


def infer_edge(energy: FloatArray, mu: FloatArray) -> tuple[str, str] | None:
    """The K edge inside the energy range nearest to the steepest rise of mu, or None."""
    global _K_EDGES
    if _K_EDGES is None:
        _K_EDGES = _k_edges()
    lo, hi = float(energy[0]), float(energy[-1])
    inside = [(sym, e) for sym, e in _K_EDGES if lo <= e <= hi]
    if not inside:
        return None
    finite = np.isfinite(mu)
    if finite.sum() >= 16:
        from spt_stream.normalize.e0 import find_e0

        e0 = float(find_e0(energy[finite], mu[finite][None, :], "larch")[0])
    else:
        e0 = 0.5 * (lo + hi)
    sym, _ = min(inside, key=lambda item: abs(item[1] - e0))
    return sym, "K"


def _sort_dedupe(
    energy: FloatArray, arrays: dict[str, FloatArray]
) -> tuple[FloatArray, dict[str, FloatArray], bool]:
    """Sort by energy and merge points closer than DUPLICATE_ENERGY_EV (averaging values)."""
    if np.all(np.diff(energy) > DUPLICATE_ENERGY_EV):
        return energy, arrays, False
    order = np.argsort(energy, kind="stable")
    group = np.concatenate([[0], np.cumsum(np.diff(energy[order]) > DUPLICATE_ENERGY_EV)])
    counts = np.bincount(group)

    def merge(values: FloatArray) -> FloatArray:
        out: FloatArray = np.bincount(group, weights=values[order]) / counts
        return out

    return merge(energy), {k: merge(v) for k, v in arrays.items()}, True


def read_spectrum(
    path: str | Path,
    *,
    element: str | None = None,
    edge: str | None = None,
) -> Spectrum:
    """Read one spectrum file (XDI, SPEC-like ``#L``, or column ASCII); see the module docstring.

    ``element``/``edge`` override what the file says. Raises
    :class:`~spt_stream.errors.ReaderError` naming the file (and line) when it cannot be read.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ReaderError(f"cannot read file: {exc.strerror or exc}", source=source) from exc
    parsed = _parse_lines(source, text)
    data: npt.NDArray[np.float64] = np.asarray(parsed.rows, dtype=np.float64)
    ncols = data.shape[1]
    if ncols < 2:
        raise ReaderError(
            "need at least two columns (energy, mu)", source=source, line=parsed.first_data_line
        )
    names = _column_names(parsed, ncols)
    meta, stamp = _metadata(parsed)
    e_idx = _energy_index(names) if names is not None else 0
    energy = data[:, e_idx].copy()
    keep = np.isfinite(energy)
    data, energy = data[keep], energy[keep]
    if energy.size < 2:
        raise ReaderError("energy column has fewer than two finite values", source=source)
    if float(np.max(energy)) < KEV_THRESHOLD:
        energy = energy * 1000.0
        meta["energy_unit_converted"] = "keV->eV"
    chans = _channels(names, data) if names is not None else {}
    mu, mode, how = _choose_mu(names, data, e_idx, chans)
    meta["mu_source"] = how
    meta["columns"] = names if names is not None else []
    arrays = {"mu": mu, **{k: v for k, v in chans.items() if k != "if_roi"}}
    if "if_roi" in chans:
        arrays["if"] = chans["if_roi"]
    if "it" in chans and "iref" in chans:
        arrays["reference"] = _ratio_log(chans["it"], chans["iref"])
    energy, arrays, reordered = _sort_dedupe(energy, arrays)
    flags = int(QualityFlag.UNSORTED_ENERGY) if reordered else 0

    file_element, file_edge = _element_from_meta(meta)
    element = element or file_element
    edge = edge or file_edge or ("K" if element else None)
    inferred = False
    if element is None:
        guess = infer_edge(energy, arrays["mu"])
        if guess is not None:
            element, edge = guess
            inferred = True
            flags |= int(QualityFlag.ELEMENT_INFERRED)
    if stamp is not None and not math.isfinite(stamp):
        stamp = None
    reference = arrays.pop("reference", None)
    mu = arrays.pop("mu")
    return Spectrum(
        source=source,
        energy=energy,
        mu=mu,
        element=element,
        edge=edge,
        mode=mode,
        reference=reference,
        channels=arrays,
        metadata=meta,
        timestamp=stamp,
        flags=flags,
        element_inferred=inferred,
    )


def read_spectra(paths: Sequence[str | Path]) -> list[Spectrum]:
    """Read several files in order; the first unreadable one raises its ReaderError."""
    return [read_spectrum(p) for p in paths]
