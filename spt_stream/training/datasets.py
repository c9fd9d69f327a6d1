"""Training data for the SPT model: an in-memory dataset, its on-disk format, an importer, splits.

On disk a dataset is a directory holding

* ``arrays.npz``: ``spectra`` float32 (N, G), ``energy_rel`` float64 (G,), ``element`` and
  ``edge`` fixed-width unicode (N,), ``groups`` int64 (N,), and one ``label__<name>`` float32 (N,)
  per descriptor (NaN where undefined). Written with :func:`numpy.savez`, read with
  ``allow_pickle=False``: loading a dataset never unpickles.
* ``meta.json``: format name and version, descriptor names, grid summary, provenance and the
  sha256 of the array contents (checked on load).

Spectra are normalized mu (edge step 1) on the model grid: energies in eV relative to the
tabulated edge energy of the absorber (:data:`spt_stream.core.grid.MODEL_GRID_REL`).

One module: generation, storage and loading of one data-set format (arrays, labels, splits, hashes)
change together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from spt_stream.core.grid import MODEL_GRID_REL, edge_energy
from spt_stream.errors import SptValueError

__all__ = [
    "DATASET_FORMAT",
    "DATASET_VERSION",
    "SpectraDataset",
    "concat_datasets",
    "import_table",
    "load_dataset",
    "save_dataset",
    "split_by_group",
]

DATASET_FORMAT = "spt-stream-dataset"
DATASET_VERSION = 1
_LABEL_PREFIX = "label__"

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
StrArray = npt.NDArray[np.str_]


@dataclass(frozen=True)
class SpectraDataset:
    """Normalized spectra on one energy grid with their labels.

    Attributes
    ----------
    spectra: float32 (N, G), normalized mu on ``energy_rel``.
    energy_rel: float64 (G,), eV relative to the tabulated edge energy.
    element, edge: str (N,), absorber symbol ("Co") and edge ("K").
    labels: descriptor name -> float32 (N,); NaN = undefined for that row; discrete descriptors
        hold the class value (oxidation state 3 -> 3.0).
    groups: int64 (N,), material/structure id; rows sharing a group never straddle a split.
    provenance: free JSON-able description of where the data came from.
    """

    spectra: F32
    energy_rel: F64
    element: StrArray
    edge: StrArray
    labels: Mapping[str, F32]
    groups: I64
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.spectra
        if s.ndim != 2 or s.dtype != np.float32:
            raise SptValueError(f"spectra must be float32 (N, G), got {s.dtype} {s.shape}")
        n, g = s.shape
        if self.energy_rel.shape != (g,):
            raise SptValueError(f"energy_rel has shape {self.energy_rel.shape}, expected ({g},)")
        for name, arr in (("element", self.element), ("edge", self.edge), ("groups", self.groups)):
            if arr.shape != (n,):
                raise SptValueError(f"{name} has shape {arr.shape}, expected ({n},)")
        for name, lab in self.labels.items():
            if lab.shape != (n,) or lab.dtype != np.float32:
                raise SptValueError(
                    f"label {name!r} must be float32 ({n},), got {lab.dtype} {lab.shape}"
                )
        if not np.isfinite(s).all():
            bad = np.flatnonzero(~np.isfinite(s).all(axis=1))
            raise SptValueError(f"spectra hold non-finite values in rows {bad[:10].tolist()}")

    def __len__(self) -> int:
        return int(self.spectra.shape[0])

    @property
    def descriptor_names(self) -> tuple[str, ...]:
        return tuple(self.labels)

    def subset(self, index: npt.ArrayLike) -> SpectraDataset:
        """Rows ``index`` (integer indices or a boolean mask) as a new dataset."""
        idx = np.asarray(index)
        return SpectraDataset(
            spectra=np.ascontiguousarray(self.spectra[idx]),
            energy_rel=self.energy_rel,
            element=self.element[idx],
            edge=self.edge[idx],
            labels={k: v[idx] for k, v in self.labels.items()},
            groups=self.groups[idx],
            provenance=dict(self.provenance),
        )

    def content_hash(self) -> str:
        """sha256 over every array, in a fixed order (independent of provenance)."""
        h = hashlib.sha256()
        for name, arr in sorted(self._arrays().items()):
            h.update(name.encode())
            h.update(str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {
            "spectra": self.spectra,
            "energy_rel": self.energy_rel,
            "element": self.element.astype(np.str_),
            "edge": self.edge.astype(np.str_),
            "groups": self.groups,
        }
        for name, lab in self.labels.items():
            out[_LABEL_PREFIX + name] = lab
        return out


def save_dataset(ds: SpectraDataset, path: str | Path) -> Path:
    """Write ``ds`` as a dataset directory (created; existing files are replaced)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "arrays.npz", **ds._arrays())  # type: ignore[arg-type]
    meta = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "n_spectra": len(ds),
        "descriptors": list(ds.descriptor_names),
        "grid": _grid_summary(ds.energy_rel),
        "elements": sorted(set(ds.element.tolist())),
        "provenance": dict(ds.provenance),
        "sha256": ds.content_hash(),
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    return root


def load_dataset(path: str | Path, *, verify: bool = True) -> SpectraDataset:
    """Read a dataset directory written by :func:`save_dataset` (never unpickles)."""
    root = Path(path)
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SptValueError(f"not a dataset directory: {exc}", source=str(root)) from exc
    if meta.get("format") != DATASET_FORMAT or int(meta.get("version", -1)) > DATASET_VERSION:
        raise SptValueError(
            f"unsupported dataset format {meta.get('format')!r} v{meta.get('version')}",
            source=str(root),
        )
    try:
        with np.load(root / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise SptValueError(f"cannot read arrays.npz: {exc}", source=str(root)) from exc
    missing = {"spectra", "energy_rel", "element", "edge", "groups"} - set(arrays)
    if missing:
        raise SptValueError(f"arrays.npz lacks {sorted(missing)}", source=str(root))
    ds = SpectraDataset(
        spectra=arrays["spectra"].astype(np.float32, copy=False),
        energy_rel=arrays["energy_rel"].astype(np.float64, copy=False),
        element=arrays["element"],
        edge=arrays["edge"],
        labels={
            k[len(_LABEL_PREFIX) :]: v.astype(np.float32, copy=False)
            for k, v in arrays.items()
            if k.startswith(_LABEL_PREFIX)
        },
        groups=arrays["groups"].astype(np.int64, copy=False),
        provenance=meta.get("provenance", {}),
    )
    if verify and meta.get("sha256") != ds.content_hash():
        raise SptValueError(
            "dataset content does not match its sha256 (modified or corrupt)", source=str(root)
        )
    return ds


def concat_datasets(parts: Sequence[SpectraDataset]) -> SpectraDataset:
    """Rows of several datasets on the same grid; a label missing from a part becomes NaN."""
    if not parts:
        raise SptValueError("nothing to concatenate")
    grid = parts[0].energy_rel
    for p in parts[1:]:
        if p.energy_rel.shape != grid.shape or not np.allclose(p.energy_rel, grid):
            raise SptValueError("datasets are on different energy grids")
    names: list[str] = []
    for p in parts:
        names += [n for n in p.labels if n not in names]
    offset = 0
    groups = []
    for p in parts:  # keep group ids distinct across parts
        groups.append(p.groups + offset)
        offset += int(p.groups.max()) + 1 if len(p) else 0
    return SpectraDataset(
        spectra=np.concatenate([p.spectra for p in parts]),
        energy_rel=grid,
        element=np.concatenate([p.element for p in parts]),
        edge=np.concatenate([p.edge for p in parts]),
        labels={
            n: np.concatenate([p.labels.get(n, np.full(len(p), np.nan, np.float32)) for p in parts])
            for n in names
        },
        groups=np.concatenate(groups),
        provenance={"concatenated": [dict(p.provenance) for p in parts]},
    )


def split_by_group(
    ds: SpectraDataset, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[SpectraDataset, ...]:
    """Split into parts of about ``fractions`` of the rows, whole groups at a time.

    Groups are shuffled with ``seed`` and dealt to the part furthest below its target row count,
    so rows of one material/structure never straddle parts. With fewer groups than parts the
    split falls back to rows (recorded as ``provenance["split"] == "row"``).
    """
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.ndim != 1 or len(frac) < 1 or (frac < 0).any() or frac.sum() <= 0:
        raise SptValueError(f"invalid split fractions {list(fractions)}")
    frac = frac / frac.sum()
    rng = np.random.default_rng(seed)
    uniq, inverse, counts = np.unique(ds.groups, return_inverse=True, return_counts=True)
    n_parts = len(frac)
    assign = np.empty(len(ds), dtype=np.int64)
    mode = "group"
    if len(uniq) >= n_parts:
        order = rng.permutation(len(uniq))
        filled = np.zeros(n_parts)
        targets = frac * len(ds)
        part_of_group = np.empty(len(uniq), dtype=np.int64)
        for gi in order:
            k = int(np.argmax(targets - filled))
            part_of_group[gi] = k
            filled[k] += counts[gi]
        assign = part_of_group[inverse]
    else:
        mode = "row"
        perm = rng.permutation(len(ds))
        bounds = np.round(np.cumsum(frac) * len(ds)).astype(int)
        assign[perm] = np.searchsorted(bounds, np.arange(len(ds)), side="right")
    out = []
    for k in range(n_parts):
        part = ds.subset(np.flatnonzero(assign == k))
        prov = dict(part.provenance)
        prov["split"] = {"mode": mode, "part": k, "fractions": frac.tolist(), "seed": seed}
        out.append(
            SpectraDataset(
                spectra=part.spectra,
                energy_rel=part.energy_rel,
                element=part.element,
                edge=part.edge,
                labels=part.labels,
                groups=part.groups,
                provenance=prov,
            )
        )
    return tuple(out)


def _grid_summary(grid: F64) -> dict[str, Any]:
    step = np.diff(grid)
    uniform = bool(len(step) and np.allclose(step, step[0]))
    return {
        "n_points": len(grid),
        "start_ev": float(grid[0]) if len(grid) else None,
        "stop_ev": float(grid[-1]) if len(grid) else None,
        "step_ev": float(step[0]) if uniform else None,
        "reference": "tabulated edge energy",
    }


# --------------------------------------------------------------------------------------------
# Importer from generic tables
# --------------------------------------------------------------------------------------------


def _resample(energy: F64, spectra: npt.NDArray[Any], grid: F64) -> tuple[F32, int]:
    """Linear interpolation of each row onto ``grid``; returns rows not covering the grid."""
    energy = np.asarray(energy, dtype=np.float64)
    out = np.empty((spectra.shape[0], len(grid)), dtype=np.float32)
    partial = 0
    for i in range(spectra.shape[0]):
        e = energy if energy.ndim == 1 else energy[i]
        order = np.argsort(e)
        e, y = e[order], np.asarray(spectra[i], dtype=np.float64)[order]
        if e[0] > grid[0] + 1e-6 or e[-1] < grid[-1] - 1e-6:
            partial += 1
        out[i] = np.interp(grid, e, y)  # constant extension outside the measured range
    return out, partial


def _float_or_none(name: str) -> float | None:
    try:
        return float(name)
    except ValueError:
        return None


def import_table(
    path: str | Path,
    *,
    element: str | None = None,
    edge: str = "K",
    descriptors: Sequence[str] | None = None,
    group_column: str = "group",
    energy_reference: str = "edge",
    grid_rel: F64 = MODEL_GRID_REL,
) -> SpectraDataset:
    """Import normalized spectra from a CSV, Parquet or NPZ table onto the model grid.

    Table layouts
    -------------
    CSV / Parquet: one row per spectrum; every column whose name parses as a number is an energy
    point (its value is mu at that energy); optional columns ``element``, ``edge``,
    ``group_column`` (any hashable id, e.g. a Materials Project id); every other numeric column
    is a label (or only those named in ``descriptors``).
    NPZ (no pickles): ``spectra`` (N, M), ``energy`` (M,) or (N, M), optional ``element``,
    ``edge``, ``groups`` (N,) and labels as ``<name>`` or ``label__<name>`` arrays (N,).

    Energies are eV relative to the tabulated edge (``energy_reference="edge"``) or absolute
    (``"absolute"``: the tabulated edge of each row's element is subtracted). Rows are resampled
    linearly onto ``grid_rel``; values outside a row's energy range are held constant (counted in
    ``provenance["rows_not_covering_grid"]``). Spectra must already be normalized (edge step 1).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        cols = _read_npz(p)
    elif suffix in (".csv", ".parquet", ".pq"):
        cols = _read_frame(p, group_column)
    else:
        raise SptValueError(f"unsupported table type {suffix!r} (csv, parquet, npz)", source=str(p))
    spectra, energy = cols["spectra"], np.asarray(cols["energy"], dtype=np.float64)
    n = spectra.shape[0]
    if n == 0:
        raise SptValueError("table holds no spectra", source=str(p))
    el = cols.get("element")
    if el is None:
        if element is None:
            raise SptValueError("table has no 'element' column; pass element=", source=str(p))
        el = np.full(n, element)
    el = np.asarray([str(x).strip().capitalize() for x in np.asarray(el).reshape(-1)])
    if el.shape != (n,):
        el = np.full(n, el[0])
    ed = np.asarray(cols.get("edge", np.full(n, edge))).astype(np.str_).reshape(-1)
    if ed.shape != (n,):
        ed = np.full(n, ed[0])
    if energy_reference == "absolute":
        shifts = np.array([edge_energy(e, d) for e, d in zip(el, ed, strict=True)])
        energy = (energy[None, :] if energy.ndim == 1 else energy) - shifts[:, None]
    elif energy_reference != "edge":
        raise SptValueError(
            f"energy_reference must be 'edge' or 'absolute', not {energy_reference!r}"
        )
    resampled, partial = _resample(energy, spectra, np.asarray(grid_rel, dtype=np.float64))
    labels_in: dict[str, npt.NDArray[Any]] = cols["labels"]
    if descriptors is not None:
        absent = [d for d in descriptors if d not in labels_in]
        if absent:
            raise SptValueError(f"label columns {absent} not found in table", source=str(p))
        labels_in = {d: labels_in[d] for d in descriptors}
    raw_groups = cols.get("groups")
    if raw_groups is None:
        groups = np.arange(n, dtype=np.int64)
    else:
        _, groups = np.unique(np.asarray(raw_groups).astype(np.str_), return_inverse=True)
    return SpectraDataset(
        spectra=resampled,
        energy_rel=np.array(grid_rel, dtype=np.float64),
        element=el.astype(np.str_),
        edge=ed.astype(np.str_),
        labels={k: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in labels_in.items()},
        groups=np.asarray(groups, dtype=np.int64).reshape(-1),
        provenance={
            "imported_from": str(p),
            "energy_reference": energy_reference,
            "rows_not_covering_grid": partial,
        },
    )


def _read_npz(p: Path) -> dict[str, Any]:
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise SptValueError(f"cannot read npz table: {exc}", source=str(p)) from exc
    if "spectra" not in arrays or "energy" not in arrays:
        raise SptValueError("npz table needs 'spectra' and 'energy' arrays", source=str(p))
    spectra = np.atleast_2d(arrays.pop("spectra"))
    out: dict[str, Any] = {"spectra": spectra, "energy": arrays.pop("energy")}
    for key in ("element", "edge", "groups"):
        if key in arrays:
            out[key] = arrays.pop(key)
    out["labels"] = {
        (k[len(_LABEL_PREFIX) :] if k.startswith(_LABEL_PREFIX) else k): v
        for k, v in arrays.items()
        if v.shape == (spectra.shape[0],) and np.issubdtype(v.dtype, np.number)
    }
    return out


def _read_frame(p: Path, group_column: str) -> dict[str, Any]:
    import pandas as pd  # type: ignore[import-untyped]

    try:
        df = pd.read_csv(p) if p.suffix.lower() == ".csv" else pd.read_parquet(p)
    except Exception as exc:  # pandas raises many types (ParserError, ArrowInvalid, OSError)
        raise SptValueError(f"cannot read table: {exc}", source=str(p)) from exc
    energy_cols = [c for c in df.columns if _float_or_none(str(c)) is not None]
    if len(energy_cols) < 2:
        raise SptValueError(
            "no energy columns (column names that are numbers) found", source=str(p)
        )
    energy = np.array([float(str(c)) for c in energy_cols])
    out: dict[str, Any] = {
        "spectra": df[energy_cols].to_numpy(dtype=np.float64),
        "energy": energy,
    }
    if "element" in df.columns:
        out["element"] = df["element"].to_numpy()
    if "edge" in df.columns:
        out["edge"] = df["edge"].to_numpy()
    if group_column in df.columns:
        out["groups"] = df[group_column].to_numpy()
    skip = {*energy_cols, "element", "edge", group_column}
    out["labels"] = {
        str(c): df[c].to_numpy(dtype=np.float64)
        for c in df.columns
        if c not in skip and pd.api.types.is_numeric_dtype(df[c])
    }
    return out
