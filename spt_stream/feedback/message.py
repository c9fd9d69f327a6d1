"""The compact per-frame feedback message, defined once.

One JSON object per analysed frame, published on the feedback topic (key: the raw run uid, so one
run's messages stay ordered). Its JSON Schema is generated from this model and kept in
``spt_stream/schemas/frame_feedback.schema.json``; a test fails when the two drift apart.

How an agent uses it: subscribe to the feedback topic, ``FrameFeedback.model_validate_json(value)``
(or any JSON-Schema validator in another language), act on ``descriptors["os"].value`` with its
``std`` (the network), ``descriptors["os_delta"]`` (the change since the run's reference frames,
from the edge shift: the most precise measure of a trend within a run) or
``descriptors["os_edge"]`` (the edge-position baseline), and ignore or flag frames where ``ood``
is true (the spectrum is unlike the training data: the numbers are not to be trusted) or
``quality_flags`` is non-zero.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SCHEMA_VERSION", "DescriptorEstimate", "FrameFeedback", "frame_feedback_schema"]

SCHEMA_VERSION = 2


class DescriptorEstimate(BaseModel):
    """One descriptor's estimate for one frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: float = Field(
        description="Class expectation (discrete) or regression mean (continuous)."
    )
    std: float = Field(ge=0.0, description="Standard deviation of the estimate, same units.")
    probs: dict[str, float] | None = Field(
        default=None, description="Discrete descriptors: class label -> calibrated probability."
    )
    units: str | None = Field(default=None, description="Units of value/std (None: dimensionless).")


class FrameFeedback(BaseModel):
    """Descriptors of one XANES frame, as the engine publishes them for agents."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_uid: str = Field(description="uid of the raw Bluesky run the frame belongs to.")
    seq_num: int = Field(
        ge=0, description="Frame identity within the run (event seq_num or sweep)."
    )
    event_time: float = Field(description="Event time of the frame, UNIX seconds.")
    analysis_time: float = Field(
        description="When the engine published this message, UNIX seconds."
    )
    element: str | None = None
    edge: str | None = None
    e0: float | None = Field(default=None, description="Edge energy found in the frame, eV.")
    descriptors: dict[str, DescriptorEstimate]
    ood_score: float = Field(description="Out-of-distribution score (higher = less like training).")
    ood: bool = Field(description="True when ood_score exceeds the model's threshold.")
    quality_flags: int = Field(ge=0, description="Bitmask of spt_stream.normalize.QualityFlag.")
    model: str = Field(description="Model name and version that produced the estimates.")
    scalars: dict[str, float] = Field(
        default_factory=dict, description="Scalar readings the event carried (potential, ...)."
    )
    classical: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Classical descriptors of the frame, pure numpy beside the network: e_half (edge "
            "energy at half height), wl_energy (white-line energy), pre_centroid (pre-edge "
            "centroid), all in eV relative to the tabulated edge energy; wl_height (edge "
            "steps), pre_area (edge steps x eV). The edge-position oxidation state os_edge and "
            "the run-relative os_delta are in descriptors."
        ),
    )


def frame_feedback_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`FrameFeedback` (the one committed under ``schemas/``)."""
    schema = FrameFeedback.model_json_schema()
    schema["$id"] = "https://spt-stream.invalid/schemas/frame_feedback.schema.json"
    return schema


if __name__ == "__main__":  # regenerate: python -m spt_stream.feedback.message > schema file
    print(json.dumps(frame_feedback_schema(), indent=2, sort_keys=True))
