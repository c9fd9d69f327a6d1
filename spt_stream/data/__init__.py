"""Data shipped with the package.

``xas-references/``: 45 real measured K-edge spectra (Co, Fe, Mn, Zn) with known nominal oxidation
states, copied verbatim from the project's shared data folder; ``MANIFEST.tsv`` beside them names
each file's source repository, path, commit and licence (public domain, MIT or BSD), and the
folder's README says what each covers. They calibrate the simulator and the edge-position
baseline and score the model; nothing else measured enters the project.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REFERENCE_DIR"]

#: The measured reference spectra and their MANIFEST.tsv (licences and sources per file).
REFERENCE_DIR = Path(__file__).resolve().parent / "xas-references"
