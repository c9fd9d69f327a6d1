"""What a run contains, as configuration: the start document's ``md["spt"]`` and beamline profiles.

Two frozen pydantic models, validated once per run (hints) or once per engine (profile), never per
event:

* :class:`RunHints` is ``md["spt"]`` of a start document: the run says explicitly which data keys
  hold its spectrum or its channels.
* :class:`BeamlineProfile` is ``spt_stream/configs/profiles/<name>.yaml``: the data-key names a
  beamline uses, each role listing candidate keys tried in order (the first one present in the
  descriptor wins).

Roles (both models): ``spectrum`` (mu given directly: a 1-D array key for quick-XAS, or a scalar
key for a step scan), ``energy`` (a data key, or a configuration key holding the grid), channels
``i0``, ``it``, ``if`` (YAML/JSON spelling; ``if_`` in Python), ``iref``. Energies are in eV;
a key whose descriptor ``units`` say ``keV`` is converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spt_stream.config import PROFILE_DIR, read_yaml
from spt_stream.core.frames import Mode
from spt_stream.errors import AssemblyError, ConfigError, Reason

__all__ = ["CHANNEL_ROLES", "BeamlineProfile", "RunHints", "load_profile", "parse_hints"]

#: Roles a data key can play, in the order they are reported.
CHANNEL_ROLES = ("spectrum", "energy", "i0", "it", "if", "iref")


def _as_tuple(v: Any) -> Any:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return v


class RunHints(BaseModel):
    """``md["spt"]`` of a start document (every field optional; unknown keys are an error)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    element: str | None = None
    edge: str | None = None
    spectrum: str | None = None
    energy: str | None = None
    i0: str | None = None
    it: str | None = None
    if_: str | None = Field(None, alias="if")
    iref: str | None = None
    mode: Mode | None = None
    #: Event stream holding the spectra (default ``primary``).
    stream: str | None = None

    def role(self, role: str) -> str | None:
        """The data key given for ``role`` (``"if"`` is accepted for the fluorescence channel)."""
        value: str | None = getattr(self, "if_" if role == "if" else role)
        return value

    @property
    def names_keys(self) -> bool:
        """True when the hints name a spectrum or a channel (and so decide the mapping)."""
        return any(self.role(r) for r in ("spectrum", "i0", "it", "if"))


class BeamlineProfile(BaseModel):
    """A beamline's data-key conventions (``spt_stream/configs/profiles/<name>.yaml``).

    Every role lists candidate keys in order of preference; a single string is accepted for one.
    ``element``/``edge``/``mode`` are defaults used only when the run itself does not say.
    ``exclude_scalars`` lists data keys not to carry as frame scalars (e.g. setpoints).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str
    description: str = ""
    stream: str = "primary"
    mode: Mode | None = None
    element: str | None = None
    edge: str | None = None
    spectrum: tuple[str, ...] = ()
    energy: tuple[str, ...] = ()
    i0: tuple[str, ...] = ()
    it: tuple[str, ...] = ()
    if_: tuple[str, ...] = Field((), alias="if")
    iref: tuple[str, ...] = ()
    exclude_scalars: tuple[str, ...] = ()

    @field_validator(
        "spectrum", "energy", "i0", "it", "if_", "iref", "exclude_scalars", mode="before"
    )
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _as_tuple(v)

    def candidates(self, role: str) -> tuple[str, ...]:
        """Candidate data keys for ``role`` (``"if"`` = fluorescence channel)."""
        value: tuple[str, ...] = getattr(self, "if_" if role == "if" else role)
        return value


def load_profile(name_or_path: str | Path) -> BeamlineProfile:
    """Load a profile by name (``spt_stream/configs/profiles/<name>.yaml``) or by path.

    Raises :class:`ConfigError` naming the file when it is missing or invalid.
    """
    text = str(name_or_path)
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    path = Path(text) if looks_like_path else PROFILE_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"beamline profile not found (known profiles: {known})", source=str(path))
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    try:
        return BeamlineProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid beamline profile: {problems}", source=str(path)) from exc


def parse_hints(md: Any, *, run_uid: str) -> RunHints | None:
    """Validate ``md["spt"]`` of a start document; None when absent.

    Raises :class:`AssemblyError` (reason ``bad_hints``) when present but malformed.
    """
    if md is None:
        return None
    if not isinstance(md, Mapping):
        raise AssemblyError(
            f"md['spt'] must be a mapping, got {type(md).__name__}",
            run_uid=run_uid,
            reason=Reason.BAD_HINTS,
        )
    try:
        return RunHints.model_validate(dict(md))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise AssemblyError(
            f"md['spt'] is invalid: {problems}", run_uid=run_uid, reason=Reason.BAD_HINTS
        ) from exc
