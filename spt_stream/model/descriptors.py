"""The descriptor schema: which local-structure descriptors the SPT model predicts, and how.

Loaded from ``spt_stream/configs/descriptors.yaml`` into a frozen pydantic
:class:`DescriptorSchema`. A discrete descriptor is a softmax head over its class values (labels
are stored as floats, e.g. oxidation state ``3.0``); a continuous one is a regression head (mean
and log-variance).
Checkpoints carry the subset they were trained on, so inference never needs the YAML.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spt_stream.config import CONFIG_DIR, read_yaml
from spt_stream.errors import ConfigError

__all__ = [
    "DEFAULT_DESCRIPTORS_YAML",
    "DescriptorSchema",
    "DescriptorSpec",
    "load_descriptor_schema",
]

DEFAULT_DESCRIPTORS_YAML = CONFIG_DIR / "descriptors.yaml"


class DescriptorSpec(BaseModel):
    """One descriptor: its name, kind and (discrete) class values or (continuous) units."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Literal["discrete", "continuous"]
    #: Class values of a discrete descriptor, strictly increasing.
    classes: tuple[float, ...] = ()
    units: str | None = None
    #: Weight of this descriptor's term in the joint loss.
    weight: float = Field(1.0, ge=0.0)
    description: str = ""

    @model_validator(mode="after")
    def _check_kind(self) -> DescriptorSpec:
        if self.kind == "discrete":
            if len(self.classes) < 2:
                raise ValueError(f"discrete descriptor {self.name!r} needs at least two classes")
            if any(b <= a for a, b in zip(self.classes, self.classes[1:], strict=False)):
                raise ValueError(f"classes of {self.name!r} must be strictly increasing")
        elif self.classes:
            raise ValueError(f"continuous descriptor {self.name!r} must not list classes")
        return self

    @property
    def n_classes(self) -> int:
        """Number of classes (0 for a continuous descriptor)."""
        return len(self.classes)

    @property
    def class_labels(self) -> tuple[str, ...]:
        """Class values as the strings used in JSON (``"3"`` for 3.0, ``"2.5"`` for 2.5)."""
        return tuple(_label(c) for c in self.classes)


def _label(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class DescriptorSchema(BaseModel):
    """An ordered set of descriptors (the order of the model's heads)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    descriptors: tuple[DescriptorSpec, ...]

    @model_validator(mode="after")
    def _unique(self) -> DescriptorSchema:
        names = [d.name for d in self.descriptors]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate descriptor names in {names}")
        if not names:
            raise ValueError("a descriptor schema needs at least one descriptor")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.descriptors)

    @property
    def discrete(self) -> tuple[DescriptorSpec, ...]:
        return tuple(d for d in self.descriptors if d.kind == "discrete")

    @property
    def continuous(self) -> tuple[DescriptorSpec, ...]:
        return tuple(d for d in self.descriptors if d.kind == "continuous")

    def get(self, name: str) -> DescriptorSpec:
        """The descriptor called ``name``; :class:`ConfigError` if the schema has none."""
        for d in self.descriptors:
            if d.name == name:
                return d
        raise ConfigError(f"unknown descriptor {name!r}; the schema has {list(self.names)}")

    def subset(
        self, names: Iterable[str], weights: Mapping[str, float] | None = None
    ) -> DescriptorSchema:
        """A schema of the named descriptors in the given order, optionally re-weighted."""
        weights = dict(weights or {})
        unknown = set(weights) - set(names)
        if unknown:
            raise ConfigError(f"loss weights given for descriptors not trained: {sorted(unknown)}")
        specs = []
        for n in names:
            spec = self.get(n)
            if n in weights:
                spec = spec.model_copy(update={"weight": float(weights[n])})
            specs.append(spec)
        return DescriptorSchema(schema_version=self.schema_version, descriptors=tuple(specs))

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (stored in checkpoint metadata)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DescriptorSchema:
        """Inverse of :meth:`to_json`; :class:`ConfigError` on invalid data."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(f"invalid descriptor schema: {exc}") from exc


def load_descriptor_schema(path: Path | None = None) -> DescriptorSchema:
    """Read a descriptor YAML (default: the packaged ``spt_stream/configs/descriptors.yaml``)."""
    path = DEFAULT_DESCRIPTORS_YAML if path is None else Path(path)
    raw = read_yaml(path)
    entries = raw.get("descriptors")
    if not isinstance(entries, Mapping):
        raise ConfigError("'descriptors' must be a mapping name -> spec", source=str(path))
    specs = []
    for name, body in entries.items():
        if not isinstance(body, Mapping):
            raise ConfigError(f"descriptor {name!r} must be a mapping", source=str(path))
        specs.append({"name": str(name), **body})
    try:
        return DescriptorSchema(
            schema_version=int(raw.get("schema_version", 1)), descriptors=tuple(specs)
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid descriptor schema: {exc}", source=str(path)) from exc
