"""Spectrum files in, SPT descriptors out: what ``spt-stream predict`` and the real-data
evaluation (:mod:`spt_stream.training.real_eval`) run.

Each file is read (:func:`spt_stream.readers.read_spectrum`), normalized and put on the model grid
exactly as the engine does (:func:`spt_stream.normalize.normalize_frames` with the engine's
normalization settings), and all files go through the model in one batch.

A record holds ``source``, ``element``, ``edge``, ``e0``, then for every descriptor ``<name>``
(class expectation for discrete ones), ``<name>_std`` and, for discrete ones, ``<name>_probs``
(class label -> probability), ``ood_score`` / ``ood``, the classical descriptors beside the
network (spt_stream.classical): ``e_half``, ``wl_energy``, ``wl_height``, ``pre_centroid``,
``pre_area`` (eV relative to the tabulated edge, edge steps) and the edge-position oxidation
state ``os_edge`` / ``os_edge_std``, and ``units`` / ``descriptions`` of the columns. A file that
cannot be read, has no element, or cannot be normalized becomes an error message naming it; the
others are still predicted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["check_element", "predict_files"]


def predict_files(
    paths: list[Path], element: str | None, model: Path | None, config: Path | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read, normalize and predict; returns (records in input order, error messages).

    ``element``: the absorbing element of files that do not state one (a file's own
    ``Element.symbol`` wins). Raises :class:`~spt_stream.errors.ConfigError` for a symbol that
    is not an element.
    """
    import dataclasses

    import numpy as np

    from spt_stream.classical.edge_os import load_edge_calibration
    from spt_stream.classical.features import edge_features
    from spt_stream.config import load_settings
    from spt_stream.core.frames import Frame
    from spt_stream.engine.pipeline import column_attrs
    from spt_stream.errors import SptError
    from spt_stream.model.predictor import Predictor
    from spt_stream.normalize import NormParams, QualityFlag, describe_flags, normalize_frames
    from spt_stream.readers import read_spectrum

    if element is not None:
        element = check_element(element)
    settings = load_settings(config)
    predictor = Predictor.from_checkpoint(
        model if model is not None else settings.model, device=settings.device
    )
    params = NormParams.from_settings(settings.normalization)
    errors: list[str] = []
    frames: list[Frame] = []
    for i, path in enumerate(paths):
        try:
            spec = read_spectrum(path)
        except SptError as exc:
            errors.append(str(exc) if exc.source else f"{exc} [source={path}]")
            continue
        if element is not None and (spec.element is None or spec.element_inferred):
            # the file does not say (nothing, or only a guess from the edge position)
            spec = dataclasses.replace(
                spec,
                element=element,
                edge=spec.edge if not spec.element_inferred and spec.edge else "K",
                element_inferred=False,
            )
        if spec.element is None:
            errors.append(f"no absorbing element known; pass --element [source={path}]")
            continue
        frames.append(
            Frame(
                run_uid="predict", seq_num=i, time=0.0, energy=spec.energy, mu=spec.mu,
                element=spec.element, edge=spec.edge or "K", mode=spec.mode,
                reference=spec.reference, provenance={"source": str(path)},
            )
        )  # fmt: skip
    if not frames:
        return [], errors
    norm = normalize_frames(
        frames, params,
        calibrate_from_reference=settings.normalization.calibrate_from_reference,
        energy_shift=settings.normalization.energy_shift,
    )  # fmt: skip
    unusable = int(QualityFlag.UNUSABLE) | int(QualityFlag.NO_ELEMENT)
    keep = [
        i
        for i in range(len(frames))
        if not (int(norm.flags[i]) & unusable) and np.isfinite(norm.norm[i]).all()
    ]
    for i in sorted(set(range(len(frames))) - set(keep)):
        flags = ", ".join(describe_flags(int(norm.flags[i]))) or "non-finite spectrum"
        errors.append(f"cannot normalize ({flags}) [source={frames[i].provenance['source']}]")
    if not keep:
        return [], errors
    batch = predictor.predict(norm.norm[keep], [str(frames[i].element) for i in keep])
    feats = edge_features(norm.norm[keep], norm.grid_rel)
    os_edge, os_edge_std = load_edge_calibration().predict(
        feats.e_half, [str(frames[i].element) for i in keep]
    )
    classical = {**feats.columns(), "os_edge": os_edge, "os_edge_std": os_edge_std}
    records = []
    for row, i in enumerate(keep):
        f = frames[i]
        e0 = float(norm.e0[i])
        records.append(
            {
                "source": str(f.provenance["source"]),
                "element": f.element,
                "edge": f.edge,
                "e0": e0 if np.isfinite(e0) else None,
                **batch.record(row),
                **{k: _finite(v[row]) for k, v in classical.items()},
            }
        )
    attrs = column_attrs(predictor)
    for rec in records:
        rec["units"] = {k: a["units"] for k, a in attrs.items() if "units" in a and k in rec}
        rec["descriptions"] = {
            k: a["long_name"] for k, a in attrs.items() if f"{k}_std" in rec and "long_name" in a
        }
    return records, errors


def _finite(v: Any) -> float | None:
    f = float(v)
    return f if f == f and abs(f) != float("inf") else None


def check_element(symbol: str) -> str:
    """``symbol`` as a capitalised element symbol with a tabulated K edge; ConfigError if not."""
    from spt_stream.core.grid import edge_energy
    from spt_stream.errors import ConfigError, SptValueError

    norm = symbol.strip().capitalize()
    try:
        edge_energy(norm, "K")
    except SptValueError as exc:
        raise ConfigError(f"--element {symbol!r} is not a chemical element symbol") from exc
    return norm
