"""Pure numeric kernels of frame assembly (no documents, no I/O)."""

from __future__ import annotations

import msgpack
import msgpack_numpy
import numpy as np
import pytest

from spt_stream.assembly.kernels import (
    as_vector,
    check_energy,
    check_finite,
    check_length,
    mu_fluorescence,
    mu_transmission,
    sweep_arrays,
)
from spt_stream.errors import FrameError


def reason(exc: pytest.ExceptionInfo[FrameError]) -> str:
    return str(exc.value.detail["reason"])


def test_decoded_wire_arrays_are_kept_without_copy() -> None:
    """msgpack-numpy arrays are read-only over immutable bytes: kept as they are."""
    packed = msgpack.packb(np.linspace(0.0, 1.0, 50), default=msgpack_numpy.encode)
    decoded = msgpack.unpackb(packed, object_hook=msgpack_numpy.decode)
    assert as_vector(decoded, "mu", 100) is decoded


def test_writable_arrays_are_copied_and_frozen() -> None:
    """A writable input is copied; the result is read-only and unaffected by later edits."""
    source = np.linspace(0.0, 1.0, 50)
    out = as_vector(source, "mu", 100)
    source[:] = 7.0
    assert not np.shares_memory(out, source)
    assert not out.flags.writeable
    assert out[0] == 0.0


def test_read_only_view_of_writable_array_is_copied() -> None:
    """A read-only view whose base is writable could still change: it is copied."""
    base = np.arange(20.0)
    view = base[:]
    view.flags.writeable = False
    assert not np.shares_memory(as_vector(view, "mu", 100), base)


@pytest.mark.parametrize("value", [[1, 2, 3], np.arange(3, dtype=np.int32), np.ones(3, "f4")])
def test_numeric_inputs_become_float64(value: object) -> None:
    """Lists and integer/float32 arrays are converted to float64."""
    out = as_vector(value, "mu", 10)
    assert out.dtype == np.float64
    assert out.shape == (3,)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "not_array"),
        (["a", "b"], "not_numeric"),
        ([[1.0, 2.0], [3.0, 4.0]], "bad_shape"),
        (np.zeros((2, 2)), "bad_shape"),
        (np.zeros(11), "too_large"),
        ([0.0] * 11, "too_large"),
        (np.array([True, False]), "not_numeric"),
    ],
)
def test_bad_inputs(value: object, expected: str) -> None:
    """Wrong types, shapes and sizes raise FrameError with a reason code."""
    with pytest.raises(FrameError) as exc:
        as_vector(value, "mu", 10)
    assert reason(exc) == expected


def test_energy_checks() -> None:
    """Energy must be finite, strictly increasing and long enough."""
    check_energy(np.array([1.0, 2.0, 3.0]), "E", 3)
    cases = {
        "non_monotonic_energy": np.array([1.0, 2.0, 2.0]),
        "nonfinite": np.array([1.0, np.nan, 3.0]),
        "too_short": np.array([1.0, 2.0]),
        "empty": np.array([]),
    }
    for code, energy in cases.items():
        with pytest.raises(FrameError) as exc:
            check_energy(energy, "E", 3)
        assert reason(exc) == code


def test_finite_check_finds_inf_among_huge_values() -> None:
    """Values whose sum overflows are still finite; a real inf is still caught."""
    huge = np.full(4, 1e308)
    with np.errstate(over="ignore"):  # the fast sum overflows; the exact check then decides
        check_finite(huge, "mu", 1)
        huge[2] = np.inf
        with pytest.raises(FrameError, match="index 2"):
            check_finite(huge, "mu", 1)


def test_length_check() -> None:
    """A channel of the wrong length is length_mismatch; an empty one is empty."""
    with pytest.raises(FrameError) as exc:
        check_length(np.zeros(3), 4, "mu")
    assert reason(exc) == "length_mismatch"
    with pytest.raises(FrameError) as exc:
        check_length(np.zeros(0), 4, "mu")
    assert reason(exc) == "empty"


def test_mu_formulas() -> None:
    """Transmission ln(I0/It), fluorescence If/I0; zero or negative counts are refused."""
    i0 = np.array([100.0, 200.0])
    it = np.array([50.0, 20.0])
    assert np.array_equal(mu_transmission(i0, it), np.log(i0 / it))
    assert np.array_equal(mu_fluorescence(i0, it), it / i0)
    with pytest.raises(FrameError, match="positive"):
        mu_transmission(i0, np.array([0.0, -1.0]))
    with pytest.raises(FrameError, match="non-zero"):
        mu_fluorescence(np.array([0.0, 1.0]), it)


def test_down_sweep_is_reversed() -> None:
    """A sweep recorded from high to low energy comes out increasing, channels aligned."""
    energy, ch = sweep_arrays([3.0, 2.0, 1.0], {"i0": [30.0, 20.0, 10.0]})
    assert energy.tolist() == [1.0, 2.0, 3.0]
    assert ch["i0"].tolist() == [10.0, 20.0, 30.0]
