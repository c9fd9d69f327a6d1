"""Spectrum file readers on the real reference files and on small hand-made edge cases."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from spt_stream.data import REFERENCE_DIR
from spt_stream.errors import ReaderError
from spt_stream.normalize import QualityFlag
from spt_stream.readers import read_spectra, read_spectrum


def _manifest() -> dict[str, dict[str, str]]:
    with open(REFERENCE_DIR / "MANIFEST.tsv", encoding="utf-8") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


MANIFEST = _manifest()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_reference_file_reads_with_manifest_range_and_element(name: str) -> None:
    """Each file reads to increasing eV energies spanning the manifest range, right element."""
    row = MANIFEST[name]
    s = read_spectrum(REFERENCE_DIR / name)
    assert np.all(np.diff(s.energy) > 0)
    assert s.energy[0] == pytest.approx(float(row["E_min"]), abs=0.6)
    assert s.energy[-1] == pytest.approx(float(row["E_max"]), abs=0.6)
    assert (s.element, s.edge) == (row["element"], row["edge"])
    assert np.isfinite(s.mu).mean() > 0.99
    assert abs(s.npts - int(row["npts"])) <= 5


def test_xdi_headers_columns_and_timestamp() -> None:
    """XDI: Column.N names give ln(i0/itrans), Element.* headers, Scan.start_time -> UTC seconds."""
    s = read_spectrum(REFERENCE_DIR / "Fe2O3_rt_01.xdi")
    assert s.mode == "transmission"
    assert not s.element_inferred
    assert s.metadata["Sample.formula"] == "Fe2O3"
    assert s.timestamp == pytest.approx(997443900.0)  # 2001-08-10 11:45:00 UTC
    raw = np.loadtxt(REFERENCE_DIR / "Fe2O3_rt_01.xdi")
    np.testing.assert_allclose(s.mu, np.log(raw[:, 1] / raw[:, 2]))
    np.testing.assert_allclose(s.channels["i0"], raw[:, 1])


def test_xdi_reference_channel() -> None:
    """An irefer column gives the reference mu ln(itrans/irefer) for calibration."""
    s = read_spectrum(REFERENCE_DIR / "MnO_rt_01.xdi")
    raw = np.loadtxt(REFERENCE_DIR / "MnO_rt_01.xdi")
    assert s.reference is not None
    np.testing.assert_allclose(s.reference, np.log(raw[:, 2] / raw[:, 3]))


def test_multi_element_fluorescence_rois_are_summed() -> None:
    """The 8-channel SDD file is fluorescence: sum of Fe_Ka ROIs over I0 (not ln(I0/IT))."""
    s = read_spectrum(REFERENCE_DIR / "fe_xanes_8ch.xdi")
    raw = np.loadtxt(REFERENCE_DIR / "fe_xanes_8ch.xdi")
    assert s.mode == "fluorescence"
    assert s.element == "Fe"
    np.testing.assert_allclose(s.mu, raw[:, 15:23].sum(axis=1) / raw[:, 4])


def test_kev_energy_is_converted() -> None:
    """A column file in keV comes back in eV."""
    s = read_spectrum(REFERENCE_DIR / "Co_metal_Delta.txt")
    assert s.energy[0] == pytest.approx(7507.05)
    assert s.metadata["energy_unit_converted"] == "keV->eV"


def test_spec_scan_alba_channels_and_time() -> None:
    """SPEC #L names, ALBA electrometer channels (i0 = ch1+ch2, it = ch3+ch4), #C start time."""
    s = read_spectrum(REFERENCE_DIR / "Co-foil_EXAFS_23107.dat")
    raw = np.loadtxt(REFERENCE_DIR / "Co-foil_EXAFS_23107.dat")
    np.testing.assert_allclose(s.energy, raw[:, 1])
    np.testing.assert_allclose(s.mu, np.log((raw[:, 3] + raw[:, 4]) / (raw[:, 5] + raw[:, 6])))
    assert s.element == "Co"
    assert s.element_inferred
    assert s.flags & QualityFlag.ELEMENT_INFERRED
    assert s.timestamp is not None


def test_near_duplicate_energies_are_merged_and_flagged() -> None:
    """P65 continuous scan: steps below 0.5 meV are merged; UNSORTED_ENERGY is set."""
    s = read_spectrum(REFERENCE_DIR / "20K_GOE_Fe_K_240.00000.xdi")
    assert s.flags & QualityFlag.UNSORTED_ENERGY
    assert np.diff(s.energy).min() > 5e-4
    assert s.npts < 1942


def test_unsorted_file_is_sorted(tmp_path: Path) -> None:
    """Out-of-order rows are sorted, duplicates averaged, and flagged."""
    e = np.linspace(7600, 7800, 50)
    mu = np.tanh((e - 7709) / 5)
    order = np.r_[np.arange(25, 50), np.arange(0, 25), [10]]
    text = "# energy mu\n" + "\n".join(f"{e[i]} {mu[i]}" for i in order)
    path = tmp_path / "shuffled.dat"
    path.write_text(text)
    s = read_spectrum(path, element="Co")
    np.testing.assert_allclose(s.energy, e)
    np.testing.assert_allclose(s.mu, mu)
    assert s.flags & QualityFlag.UNSORTED_ENERGY
    assert s.element == "Co"
    assert s.edge == "K"


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    """Bad content raises ReaderError carrying the file and line."""
    bad = tmp_path / "bad.dat"
    bad.write_text("# energy mu\n7000 1\n7001 2\n7002 oops\n")
    with pytest.raises(ReaderError) as info:
        read_spectrum(bad)
    assert info.value.source == str(bad)
    assert info.value.line == 4
    ragged = tmp_path / "ragged.dat"
    ragged.write_text("7000 1 2\n7001 2\n")
    with pytest.raises(ReaderError, match="columns") as info2:
        read_spectrum(ragged)
    assert info2.value.line == 2
    with pytest.raises(ReaderError, match="cannot read"):
        read_spectrum(tmp_path / "missing.xdi")
    empty = tmp_path / "empty.dat"
    empty.write_text("# nothing here\n")
    with pytest.raises(ReaderError, match="no data"):
        read_spectrum(empty)


def test_read_spectra_keeps_order() -> None:
    """read_spectra returns one Spectrum per path, in order."""
    names = ["Mn__MnO.txt", "co_metal_rt.xdi"]
    out = read_spectra([REFERENCE_DIR / n for n in names])
    assert [Path(s.source).name for s in out] == names
