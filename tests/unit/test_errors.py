"""The error hierarchy: typed dead-letter reasons (:class:`Reason`) and pickling."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

import spt_stream
from spt_stream.errors import (
    AssemblyError,
    DocumentError,
    FrameError,
    Reason,
    SinkTimeoutError,
    SptError,
)

PACKAGE = Path(spt_stream.__file__).parent


def test_every_reason_is_raised_somewhere_in_the_package() -> None:
    """No dead member: each Reason is named (``Reason.NAME``) outside errors.py."""
    source = "\n".join(
        p.read_text(encoding="utf-8")
        for p in sorted(PACKAGE.rglob("*.py"))
        if p != PACKAGE / "errors.py"
    )
    used = set(re.findall(r"\bReason\.([A-Z][A-Z0-9_]*)\b", source))
    assert {r.name for r in Reason} - used == set()
    assert used - {r.name for r in Reason} == set()  # no typo'd name slipped past mypy


def test_reason_values_are_the_plain_codes() -> None:
    """Values are lower-case snake codes, unique, equal to the member name lower-cased."""
    assert all(r.value == r.name.lower() for r in Reason)
    assert len({r.value for r in Reason}) == len(Reason)
    assert Reason.BAD_FIELD == "bad_field"
    assert f"{Reason.NONFINITE}" == "nonfinite"


def test_error_with_a_reason_exposes_it_typed_and_in_detail() -> None:
    err = DocumentError("seq_num is a str", run_uid="r1", seq_num=3, reason=Reason.BAD_FIELD)
    assert err.reason is Reason.BAD_FIELD
    assert err.detail == {"reason": "bad_field"}
    assert type(err.detail["reason"]) is str  # the plain value, not the enum member
    ctx = err.context()
    assert json.dumps(ctx["detail"]) == '{"reason": "bad_field"}'
    assert str(err) == "seq_num is a str [run_uid=r1, seq_num=3]"


def test_reason_merges_with_other_detail() -> None:
    err = FrameError("too long", detail={"points": 9}, reason=Reason.TOO_LARGE)
    assert err.detail == {"points": 9, "reason": "too_large"}
    assert err.reason is Reason.TOO_LARGE


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        (None, None),
        ({}, None),
        ({"reason": "nonfinite"}, Reason.NONFINITE),
        ({"reason": "?"}, None),
    ],
)
def test_reason_read_from_detail(detail: dict[str, str] | None, expected: Reason | None) -> None:
    """An error built from a copied ``detail`` (re-rendered in context) keeps its reason."""
    assert SptError("x", detail=detail).reason is expected


@pytest.mark.parametrize(
    "err",
    [
        AssemblyError("no stream", run_uid="r", reason=Reason.NO_STREAM),
        FrameError(
            "nan", run_uid="r", seq_num=1, source="f.jsonl", line=4, reason=Reason.NONFINITE
        ),
        SinkTimeoutError("slow sink"),
    ],
)
def test_errors_survive_pickling(err: SptError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert back.context() == err.context()
    assert back.reason is err.reason
    assert str(back) == str(err)
