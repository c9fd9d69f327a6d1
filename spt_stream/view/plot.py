"""The picture of a trace: oxidation state with its uncertainty against time and potential,
and the normalized spectra as a heat map (``spt-stream plot``, and the demo's PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spt_stream.errors import SinkError, SptValueError

__all__ = ["POTENTIAL_KEYS", "plot_trace"]

#: Scalar columns recognised as the electrochemical potential, first match wins.
POTENTIAL_KEYS: tuple[str, ...] = (
    "potential",
    "cell_potential",
    "voltage",
    "ewe",
    "Ewe",
    "E_we",
)


def _seconds(ds: Any) -> np.ndarray[Any, Any]:
    t = ds["time"].values
    if np.issubdtype(t.dtype, np.datetime64):
        sec = (t - t[0]).astype("timedelta64[ns]").astype(np.float64) / 1e9
    else:
        sec = np.asarray(t, dtype=np.float64) - float(t[0])
    return np.asarray(sec, dtype=np.float64)


def plot_trace(
    trace: Path | str,
    out: Path | str,
    *,
    descriptor: str = "os",
    reference: str | None = None,
    potential_keys: Sequence[str] = POTENTIAL_KEYS,
    title: str | None = None,
) -> Path:
    """Save a PNG of ``trace`` (a run's ``.zarr`` store) to ``out``; return its path.

    ``reference``: an optional column holding a known value of ``descriptor`` per frame (for a
    simulated experiment), drawn as a dashed line.

    Raises
    ------
    SptValueError
        ``trace`` is not one run's trace store (a trace root, another folder, a file), has no
        rows, or lacks ``descriptor`` or ``reference``.
    SinkError
        ``out`` cannot be written (e.g. a folder on its path is a file).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spt_stream.sinks.zarr_trace import open_trace

    ds = open_trace(_trace_store(Path(trace)))
    if ds.sizes.get("time", 0) == 0:
        raise SptValueError("the trace has no rows yet", source=str(trace))
    for column, what in ((descriptor, "descriptor"), (reference, "--reference column")):
        if column is not None and column not in ds.variables:
            names = ", ".join(sorted(str(v) for v in ds.data_vars if ds[v].dims == ("time",)))
            raise SptValueError(
                f"no {what} {column!r} in the trace (columns: {names})", source=str(trace)
            )
    if f"{descriptor}_std" not in ds.variables:
        raise SptValueError(f"{descriptor!r} has no uncertainty column", source=str(trace))
    out_path = Path(out)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError | NotADirectoryError):
            why = f"a file is in the way ({exc.filename})"
        raise SinkError(f"cannot write the figure: {why}", source=str(out)) from exc
    t_min = _seconds(ds) / 60.0
    value = np.asarray(ds[descriptor].values, dtype=np.float64)
    std = np.asarray(ds[f"{descriptor}_std"].values, dtype=np.float64)
    pot_key = next((k for k in potential_keys if k in ds.variables), None)
    units = "" if descriptor == "os" else f" ({ds[descriptor].attrs.get('units', '')})"
    label = "oxidation state" if descriptor == "os" else descriptor
    element = ds.attrs.get("element") or "?"

    fig = plt.figure(figsize=(11, 8.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.0], width_ratios=[2.2, 1.0])
    ax = fig.add_subplot(grid[0, 0])
    ax.fill_between(t_min, value - std, value + std, color="C0", alpha=0.25, label="±1 std")
    ax.plot(t_min, value, color="C0", lw=1.2, label=f"SPT {label}")
    if descriptor == "os" and "os_edge" in ds.variables:
        ax.plot(t_min, ds["os_edge"].values, color="C2", lw=0.9, alpha=0.8, label="os_edge")
    if descriptor == "os" and "os_delta" in ds.variables:
        # anchored on the network's mean over the run's reference frames
        n_ref = int(ds.attrs.get("config", {}).get("tracking", {}).get("reference_frames", 5))
        anchor = float(np.nanmean(value[:n_ref]))
        ax.plot(t_min, anchor + ds["os_delta"].values, color="C1", lw=0.9,
                label=f"os(first {n_ref}) + os_delta")  # fmt: skip
    if reference is not None:
        ax.plot(t_min, ds[reference].values, "k--", lw=1.0, label=reference)
    if "ood" in ds.variables:
        ood = np.asarray(ds["ood"].values, dtype=bool)
        if ood.any():
            ax.plot(t_min[ood], value[ood], "rx", ms=4, label="out of distribution")
    ax.set_xlabel("time since start (min)")
    ax.set_ylabel(f"{element} {label}{units}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    if pot_key is not None:
        ax2 = ax.twinx()
        ax2.plot(t_min, ds[pot_key].values, color="C3", lw=1.0, alpha=0.8)
        ax2.set_ylabel(f"{pot_key} (V)", color="C3")
        ax2.tick_params(axis="y", colors="C3")

    axp = fig.add_subplot(grid[0, 1])
    if pot_key is not None:
        sc = axp.scatter(ds[pot_key].values, value, c=t_min, s=6, cmap="viridis")
        axp.errorbar(ds[pot_key].values, value, yerr=std, fmt="none", ecolor="0.7", lw=0.5)
        axp.set_xlabel(f"{pot_key} (V)")
        fig.colorbar(sc, ax=axp, label="time (min)")
    else:
        axp.hist(value[np.isfinite(value)], bins=30, color="C0")
        axp.set_xlabel(f"{label}{units}")
    axp.set_ylabel(f"{label}{units}" if pot_key is not None else "frames")
    axp.grid(alpha=0.3)

    axh = fig.add_subplot(grid[1, :])
    norm = np.asarray(ds["norm"].values, dtype=np.float64)
    e_rel = np.asarray(ds["energy_rel"].values, dtype=np.float64)
    mesh = axh.pcolormesh(e_rel, t_min, norm, shading="nearest", cmap="magma")
    axh.set_xlabel(f"energy - {element} {ds.attrs.get('edge') or 'K'} edge (eV)")
    axh.set_ylabel("time since start (min)")
    fig.colorbar(mesh, ax=axh, label="normalized μ(E)")
    run_uid = str(ds.attrs.get("run_uid", ""))[:8]
    fig.suptitle(title or f"spt-stream trace {run_uid} ({element} {ds.attrs.get('edge', '')})")
    try:
        fig.savefig(out_path, dpi=110)
    except OSError as exc:
        raise SinkError(f"cannot write the figure: {exc.strerror or exc}", source=str(out)) from exc
    finally:
        plt.close(fig)
    return out_path


def _trace_store(path: Path) -> Path:
    """``path`` if it is one run's trace store; else an error saying what it is instead."""
    if not path.exists():
        raise SptValueError("no such trace store", source=str(path))
    if not path.is_dir():
        raise SptValueError(
            "not a trace store (a file; give a <run_uid>.zarr folder)", source=str(path)
        )
    if (path / "zarr.json").is_file() or (path / ".zgroup").is_file():
        return path
    runs = sorted(p.name for p in path.glob("*.zarr"))
    if runs:
        raise SptValueError(
            f"a trace root holding {len(runs)} run(s); give one of them, e.g. {path / runs[0]}",
            source=str(path),
        )
    raise SptValueError("not a trace store (no zarr.json in it)", source=str(path))
