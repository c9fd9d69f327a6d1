"""The picture of a trace: oxidation state with its uncertainty against time and potential,
and the normalized spectra as a heat map (``spt-stream plot``, and the demo's PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spt_stream.sinks.zarr_trace import open_trace

    ds = open_trace(Path(trace))
    if ds.sizes.get("time", 0) == 0:
        raise ValueError(f"trace {trace} has no rows")
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
    if reference is not None and reference in ds.variables:
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
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
