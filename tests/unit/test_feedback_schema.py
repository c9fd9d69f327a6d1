"""The per-frame feedback message and its committed JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

import spt_stream
from spt_stream.feedback.message import DescriptorEstimate, FrameFeedback, frame_feedback_schema

SCHEMA_FILE = Path(spt_stream.__file__).parent / "schemas" / "frame_feedback.schema.json"


def _example() -> FrameFeedback:
    return FrameFeedback(
        run_uid="c0ffee",
        seq_num=3,
        event_time=1.7e9,
        analysis_time=1.7e9 + 0.01,
        element="Co",
        edge="K",
        e0=7719.2,
        descriptors={
            "os": DescriptorEstimate(value=3.2, std=0.3, probs={"3": 0.8, "4": 0.2}),
            "nnrs": DescriptorEstimate(value=0.02, std=0.01, units="angstrom"),
        },
        ood_score=1.5,
        ood=False,
        quality_flags=0,
        model="spt-default 1",
        scalars={"potential": 4.1},
    )


def test_committed_schema_matches_model() -> None:
    """The schema file in the repository is exactly what the model generates (no drift)."""
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(frame_feedback_schema(), sort_keys=True))


def test_message_validates_against_committed_schema() -> None:
    """A message serialized by the model is valid under the committed JSON Schema."""
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(json.loads(_example().model_dump_json()), schema)


def test_round_trip_and_rejections() -> None:
    """JSON round trip is lossless; unknown fields and negative std are refused."""
    msg = _example()
    assert FrameFeedback.model_validate_json(msg.model_dump_json()) == msg
    data = json.loads(msg.model_dump_json())
    data["surprise"] = 1
    with pytest.raises(ValidationError):
        FrameFeedback.model_validate(data)
    with pytest.raises(ValidationError):
        DescriptorEstimate(value=1.0, std=-0.1)
