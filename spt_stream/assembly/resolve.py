"""Resolution: which data keys of a run hold its spectrum, channels and energy grid.

Order, per role (``spectrum``, ``energy``, ``i0``, ``it``, ``if``, ``iref``):

1. the start document's ``md["spt"]`` (:class:`~spt_stream.assembly.profile.RunHints`); a key it
   names that the descriptor lacks is an error, never silently replaced;
2. the beamline profile (first candidate present in the descriptor);
3. heuristics, documented here:

   * **spectrum**: the one 1-D array data key that is not named like an energy or a channel
     (several: the one named like ``mu``/``spectrum``/``xas``/``xanes``);
   * **array channels**: 1-D array keys named like ``i0``/``it``/``if``/``iref``;
   * **step-scan channels**: numeric scalar keys named like ``i0``/``io``/``izero``,
     ``it``/``i1``, ``if``/``fluor``/``pips``, ``iref``/``ir``/``i2`` (a whole-name match beats a
     token match: ``sclr_i0`` matches ``i0`` through its token ``i0``);
   * **energy** for arrays: a 1-D array data key, else a configuration value (a ``kind="config"``
     signal, under ``descriptor["configuration"][obj]["data"]``), named like ``energy``, preferring
     one as long as the spectrum; for step scans: the plan's single motor (``md["motors"]``) when it
     is a scalar data key, else a scalar key named like ``energy`` (setpoints excluded).

``mode`` comes from ``md["spt"]``, then the profile, else ``mu`` with a spectrum key,
``transmission`` with ``it``, ``fluorescence`` with ``if``. Element and edge: ``md["spt"]``, then
the start document's ``element``/``edge`` (or ``absorber``), then the profile. Layout: ``array``
when the spectrum/channels are 1-D array keys (one frame per event), ``step`` when they are
scalars (one frame per sweep). Energies are in eV; keys whose ``units`` are ``keV`` are scaled
by 1000.

Everything here runs once per run or per descriptor, never per event.

One module: the rules that decide what a run's spectrum is (metadata, profile, heuristics) and
their error reasons are read together when a run is not understood.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from spt_stream.assembly.kernels import as_vector, check_energy, frozen
from spt_stream.assembly.profile import BeamlineProfile, RunHints, parse_hints
from spt_stream.core.frames import FloatArray, Mode, RunInfo
from spt_stream.errors import AssemblyError, FrameError, Reason

__all__ = ["DescriptorPlan", "StartContext", "resolve_descriptor", "run_info", "start_context"]

_SPLIT = re.compile(r"[^a-z0-9]+")
_ROLE_TOKENS: dict[str, frozenset[str]] = {
    "spectrum": frozenset({"mu", "spectrum", "xas", "xanes", "absorption"}),
    "energy": frozenset({"energy", "energies", "egrid"}),
    "i0": frozenset({"i0", "io", "izero"}),
    "it": frozenset({"it", "i1", "itrans"}),
    "if": frozenset({"if", "ifluor", "ifluo", "fluor", "fluo", "fluorescence", "pips"}),
    "iref": frozenset({"iref", "ir", "i2"}),
}
_CHANNELS = ("i0", "it", "if", "iref")
_MD_SKIP = frozenset({"uid", "time", "spt", "hints", "plan_args", "versions"})


def _tokens(key: str) -> set[str]:
    return {t for t in _SPLIT.split(key.lower()) if t}


def _named_like(role: str, keys: list[str]) -> list[str]:
    tokens = _ROLE_TOKENS[role]
    exact = [k for k in keys if k.lower() in tokens]
    if exact:
        return exact
    found = [k for k in keys if _tokens(k) & tokens]
    plain = [k for k in found if "setpoint" not in _tokens(k)]
    return plain or found


@dataclass(frozen=True, slots=True)
class StartContext:
    """What the start document says, parsed once per run."""

    run_uid: str
    start_time: float
    element: str | None
    edge: str | None
    hints: RunHints | None
    profile: BeamlineProfile | None
    stream: str
    motors: tuple[str, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)


def start_context(
    start: Mapping[str, Any], profile: BeamlineProfile | None, default_stream: str = "primary"
) -> StartContext:
    """Parse a start document. Raises :class:`AssemblyError` for a malformed ``md["spt"]``."""
    run_uid = str(start["uid"])
    hints = parse_hints(start.get("spt"), run_uid=run_uid)

    def text(v: Any) -> str | None:
        return v.strip() if isinstance(v, str) and v.strip() else None

    element = (
        (hints.element if hints else None)
        or text(start.get("element"))
        or text(start.get("absorber"))
        or (profile.element if profile else None)
    )
    edge = (hints.edge if hints else None) or text(start.get("edge"))
    edge = edge or (profile.edge if profile else None)
    stream = (hints.stream if hints else None) or (profile.stream if profile else default_stream)
    motors = start.get("motors")
    metadata = {
        k: v
        for k, v in list(start.items())[:256]
        if k not in _MD_SKIP
        and isinstance(v, str | int | float | bool)
        and not (isinstance(v, str) and len(v) > 256)
    }
    return StartContext(
        run_uid=run_uid,
        start_time=float(start.get("time", 0.0)),
        element=element,
        edge=edge,
        hints=hints,
        profile=profile,
        stream=stream,
        motors=tuple(m for m in motors if isinstance(m, str)) if isinstance(motors, list) else (),
        metadata=metadata,
    )


@dataclass(frozen=True, slots=True)
class DescriptorPlan:
    """How to turn the events of one descriptor into frames (compiled once per descriptor)."""

    descriptor_uid: str
    stream: str
    layout: Literal["array", "step"]
    mode: Mode
    #: role -> key actually used (``energy`` may name a configuration key).
    keys: Mapping[str, str]
    resolved_by: str
    spectrum: str | None
    i0: str | None
    it: str | None
    if_: str | None
    iref: str | None
    #: Per-event energy data key (array layout with per-event grids; the motor for step scans).
    energy_key: str | None
    #: Fixed grid from the descriptor's configuration (eV, validated, read-only), else None.
    grid: FloatArray | None
    #: Multiplier bringing the energy key's units to eV.
    energy_scale: float
    #: Numeric scalar data keys carried into ``Frame.scalars``.
    scalar_keys: tuple[str, ...]


def _fail(message: str, ctx: StartContext, reason: Reason) -> AssemblyError:
    return AssemblyError(message, run_uid=ctx.run_uid, reason=reason)


def _classify(data_keys: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    arrays: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for key, dk in data_keys.items():
        if not isinstance(key, str) or not isinstance(dk, Mapping):
            continue
        shape = dk.get("shape")
        dtype = dk.get("dtype")
        if dtype == "array" and isinstance(shape, list) and len(shape) == 1:
            arrays[key] = dk
        elif dtype in ("number", "integer") and not shape and "external" not in dk:
            scalars[key] = dk
    return arrays, scalars


def _config_values(descriptor: Mapping[str, Any]) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    out: dict[str, tuple[Any, Mapping[str, Any]]] = {}
    configuration = descriptor.get("configuration")
    if not isinstance(configuration, Mapping):
        return out
    for conf in configuration.values():
        if not isinstance(conf, Mapping) or not isinstance(conf.get("data"), Mapping):
            continue
        dks = conf.get("data_keys")
        dks = dks if isinstance(dks, Mapping) else {}
        for key, value in conf["data"].items():
            dk = dks.get(key)
            dk = dk if isinstance(dk, Mapping) else {}
            if isinstance(key, str) and "external" not in dk:
                out[key] = (value, dk)
    return out


def _scale(dk: Mapping[str, Any]) -> float:
    units = dk.get("units")
    return 1000.0 if isinstance(units, str) and units.strip().lower() == "kev" else 1.0


def _declared_points(dk: Mapping[str, Any]) -> int | None:
    shape = dk.get("shape")
    if isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int):
        return shape[0]
    return None


def resolve_descriptor(
    ctx: StartContext,
    descriptor: Mapping[str, Any],
    *,
    max_points: int,
    min_points: int,
) -> DescriptorPlan:
    """Compile a :class:`DescriptorPlan` for a descriptor of the run's spectrum stream.

    Raises :class:`AssemblyError` (``reason``: ``unknown_key``, ``unresolved``,
    ``ambiguous``, ``bad_layout``, ``bad_grid``, ``too_large``, or a grid problem from
    :mod:`~spt_stream.assembly.kernels` such as ``non_monotonic_energy``) when it cannot say.
    """
    data_keys = descriptor.get("data_keys")
    if not isinstance(data_keys, Mapping):
        raise _fail("descriptor has no data_keys mapping", ctx, Reason.BAD_DESCRIPTOR)
    stream = str(descriptor.get("name", "primary"))
    arrays, scalars = _classify(data_keys)
    config = _config_values(descriptor)
    roles: dict[str, str] = {}
    resolved_by = "heuristic"

    hints = ctx.hints
    if hints is not None:
        for role in ("spectrum", "energy", *_CHANNELS):
            key = hints.role(role)
            if key is None:
                continue
            if key not in data_keys and not (role == "energy" and key in config):
                raise _fail(
                    f"md['spt']['{role}']={key!r} is not a data key of stream {stream!r}"
                    f"{' nor a configuration key' if role == 'energy' else ''}"
                    f" (data keys: {sorted(map(str, data_keys))[:20]})",
                    ctx,
                    Reason.UNKNOWN_KEY,
                )
            roles[role] = key
        if hints.names_keys:
            resolved_by = "md"

    profile = ctx.profile
    if profile is not None:
        decided = "spectrum" in roles or "i0" in roles
        for role in ("spectrum", "energy", *_CHANNELS):
            if role in roles or (decided and role != "energy"):
                continue
            for key in profile.candidates(role):
                if key in data_keys or (role == "energy" and key in config):
                    roles[role] = key
                    break
        if not decided and ("spectrum" in roles or "i0" in roles):
            resolved_by = f"profile:{profile.name}"

    if not ("spectrum" in roles or "i0" in roles):
        _heuristic_channels(ctx, roles, arrays, scalars)

    mode = _mode(ctx, roles)
    primary = roles["spectrum"] if mode == "mu" else roles["i0"]
    if primary in arrays:
        layout: Literal["array", "step"] = "array"
    elif primary in scalars:
        layout = "step"
    else:
        dk = data_keys.get(primary)
        raise _fail(
            f"data key {primary!r} is neither a 1-D array nor a numeric scalar "
            f"(dtype={dk.get('dtype') if isinstance(dk, Mapping) else None!r}, "
            f"shape={dk.get('shape') if isinstance(dk, Mapping) else None!r})",
            ctx,
            Reason.BAD_LAYOUT,
        )
    used = ["spectrum"] if mode == "mu" else ["i0", "it" if mode == "transmission" else "if"]
    if "iref" in roles and "it" in roles:
        used += ["it", "iref"]
    kinds = arrays if layout == "array" else scalars
    for role in used:
        if roles[role] not in kinds:
            raise _fail(
                f"{role} key {roles[role]!r} is not a "
                f"{'1-D array' if layout == 'array' else 'scalar'} like {primary!r}",
                ctx,
                Reason.BAD_LAYOUT,
            )
    declared = _declared_points(data_keys[primary]) if layout == "array" else None
    if declared is not None and declared > max_points:
        raise _fail(
            f"{primary!r} declares {declared} points (max_points={max_points})",
            ctx,
            Reason.TOO_LARGE,
        )

    if "energy" not in roles:
        energy = _heuristic_energy(ctx, layout, arrays, scalars, config, declared)
        if energy is None:
            raise _fail(
                f"no energy grid found for {primary!r}: name it in md['spt']['energy'] "
                f"(data keys: {sorted(map(str, data_keys))[:20]}, "
                f"configuration keys: {sorted(config)[:20]})",
                ctx,
                Reason.UNRESOLVED,
            )
        roles["energy"] = energy
    energy_key: str | None = None
    grid: FloatArray | None = None
    ekey = roles["energy"]
    if layout == "step":
        if ekey not in scalars:
            raise _fail(
                f"energy key {ekey!r} is not a scalar (motor) data key", ctx, Reason.BAD_LAYOUT
            )
        energy_key, scale = ekey, _scale(scalars[ekey])
    elif ekey in arrays:
        energy_key, scale = ekey, _scale(arrays[ekey])
    elif ekey in config:
        value, dk = config[ekey]
        scale = _scale(dk)
        try:
            grid = as_vector(value, f"energy grid {ekey!r}", max_points)
            if scale != 1.0:
                grid = frozen(grid * scale)
            check_energy(grid, f"energy grid {ekey!r}", min_points)
        except FrameError as exc:
            reason = exc.reason if exc.reason is not None else Reason.BAD_GRID
            raise _fail(f"configuration {exc.message}", ctx, reason) from None
        if declared is not None and declared != grid.shape[0]:
            raise _fail(
                f"{primary!r} declares {declared} points but energy grid {ekey!r} has "
                f"{grid.shape[0]}",
                ctx,
                Reason.BAD_GRID,
            )
    else:
        raise _fail(
            f"energy key {ekey!r} is not a 1-D array or configuration key", ctx, Reason.BAD_LAYOUT
        )

    exclude = set(profile.exclude_scalars) if profile else set()
    exclude.update(roles[r] for r in used)
    exclude.add(ekey)
    if layout == "step":
        exclude.add(f"{ekey}_setpoint")
    scalar_keys = tuple(k for k in scalars if k not in exclude)
    keys = {
        r: roles[r]
        for r in ("spectrum", "energy", *_CHANNELS)
        if r in roles and r in {*used, "energy"}
    }
    return DescriptorPlan(
        descriptor_uid=str(descriptor["uid"]),
        stream=stream,
        layout=layout,
        mode=mode,
        keys=keys,
        resolved_by=resolved_by,
        spectrum=roles.get("spectrum") if mode == "mu" else None,
        i0=roles["i0"] if mode != "mu" else None,
        it=roles.get("it") if "it" in used else None,
        if_=roles.get("if") if mode == "fluorescence" else None,
        iref=roles.get("iref") if "iref" in used else None,
        energy_key=energy_key,
        grid=grid,
        energy_scale=scale,
        scalar_keys=scalar_keys,
    )


def _pick(role: str, keys: list[str], ctx: StartContext, required: bool) -> str | None:
    found = _named_like(role, keys)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise _fail(
            f"several keys look like {role!r}: {sorted(found)}; name one in md['spt']['{role}']",
            ctx,
            Reason.AMBIGUOUS,
        )
    if required:
        raise _fail(f"no key looks like {role!r}", ctx, Reason.UNRESOLVED)
    return None


def _heuristic_channels(
    ctx: StartContext, roles: dict[str, str], arrays: dict[str, Any], scalars: dict[str, Any]
) -> None:
    channel_like = set()
    for role in _CHANNELS:
        channel_like.update(_named_like(role, list(arrays)))
    energy_like = set(_named_like("energy", list(arrays)))
    spectra = [k for k in arrays if k not in channel_like and k not in energy_like]
    if len(spectra) > 1:
        spectra = _named_like("spectrum", spectra) or spectra
    if len(spectra) == 1:
        roles["spectrum"] = spectra[0]
        return
    if len(spectra) > 1:
        raise _fail(
            f"several 1-D array keys could be the spectrum: {sorted(spectra)}; "
            "name one in md['spt']['spectrum']",
            ctx,
            Reason.AMBIGUOUS,
        )
    pool = list(arrays) if _named_like("i0", list(arrays)) else list(scalars)
    i0 = _pick("i0", pool, ctx, required=False)
    if i0 is None:
        raise _fail(
            "cannot tell what this run measures: no 1-D array data key (spectrum) and no "
            "I0-like channel; say it in md['spt'] or a beamline profile "
            f"(data keys: {sorted([*arrays, *scalars])[:20]})",
            ctx,
            Reason.UNRESOLVED,
        )
    roles["i0"] = i0
    for role in ("it", "if", "iref"):
        if role not in roles:
            key = _pick(role, [k for k in pool if k != i0], ctx, required=False)
            if key is not None:
                roles[role] = key


def _mode(ctx: StartContext, roles: Mapping[str, str]) -> Mode:
    mode: Mode | None = ctx.hints.mode if ctx.hints else None
    if mode is None and ctx.profile is not None:
        mode = ctx.profile.mode
    if mode is None:
        if "spectrum" in roles:
            mode = "mu"
        elif "it" in roles:
            mode = "transmission"
        elif "if" in roles:
            mode = "fluorescence"
        else:
            raise _fail(
                f"I0 channel {roles.get('i0')!r} found but neither It nor If",
                ctx,
                Reason.UNRESOLVED,
            )
    need = {"mu": ("spectrum",), "transmission": ("i0", "it"), "fluorescence": ("i0", "if")}[mode]
    missing = [r for r in need if r not in roles]
    if missing:
        raise _fail(f"mode {mode!r} needs keys for {missing}", ctx, Reason.UNRESOLVED)
    return mode


def _heuristic_energy(
    ctx: StartContext,
    layout: str,
    arrays: Mapping[str, Any],
    scalars: Mapping[str, Any],
    config: Mapping[str, tuple[Any, Mapping[str, Any]]],
    npts: int | None,
) -> str | None:
    if layout == "step":
        motors = [m for m in ctx.motors if m in scalars]
        if len(motors) == 1:
            return motors[0]
        return _pick("energy", list(scalars), ctx, required=False)
    found = _named_like("energy", list(arrays))
    if len(found) == 1:
        return found[0]
    candidates = []
    for key in _named_like("energy", list(config)):
        value = config[key][0]
        n = len(value) if isinstance(value, list) else getattr(value, "size", None)
        if isinstance(value, list | np.ndarray) and (npts is None or n == npts):
            candidates.append(key)
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise _fail(
            f"several configuration keys could be the energy grid: {sorted(candidates)}",
            ctx,
            Reason.AMBIGUOUS,
        )
    return None


def run_info(ctx: StartContext, plan: DescriptorPlan) -> RunInfo:
    """The :class:`RunInfo` of a run, from its start context and first spectrum descriptor."""
    return RunInfo(
        run_uid=ctx.run_uid,
        element=ctx.element,
        edge=ctx.edge,
        mode=plan.mode,
        keys=dict(plan.keys),
        layout=plan.layout,
        resolved_by=plan.resolved_by,
        start_time=ctx.start_time,
        metadata=dict(ctx.metadata),
    )
