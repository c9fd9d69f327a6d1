"""The trace writer's fast metadata path (spt_stream.sinks.zarr_adapter) equals Zarr's public API.

The same sequence of writes goes through two writers, one writing the stores' documents itself
and one through Zarr's node API (create_array, resize, update_attributes, consolidate_metadata);
every file of the two stores must be byte for byte the same, at every step a reader could see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from spt_stream.sinks import zarr_adapter
from spt_stream.sinks import zarr_trace as zt
from spt_stream.sinks.zarr_trace import ZarrTraceWriter, open_trace, trace_path
from tests._trace_rows import expected_os, make_rows


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both writers stamp the same times (created/updated/finalized)."""
    monkeypatch.setattr(zt, "_now_iso", lambda: "2026-12-03T12:00:00.000Z")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".partial")
    }


def _assert_same(a: Path, b: Path) -> int:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for key in fa:
        assert fa[key] == fb[key], key
    return len(fa)


def test_fast_path_is_available_for_the_installed_zarr() -> None:
    """The pinned range in pyproject.toml and TESTED_ZARR agree with what is installed, so the
    engine runs the fast path here (otherwise every store would go through Zarr's API)."""
    assert zarr_adapter.fast_path_available()
    assert ZarrTraceWriter(Path("/nonexistent-never-created"), fsync=False).fast_metadata is True


def test_other_zarr_release_uses_the_public_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(zarr, "__version__", "3.9.0")
    assert not zarr_adapter.fast_path_available()
    w = ZarrTraceWriter(tmp_path, fsync=False)
    assert w.fast_metadata is False
    w.open_run("pub")
    w.write("pub", make_rows(range(3)))
    w.finalize("pub", "success")
    np.testing.assert_array_equal(open_trace(trace_path(tmp_path, "pub")).seq_num, np.arange(3))


def test_every_step_writes_the_bytes_zarr_writes(tmp_path: Path) -> None:
    """Create, first rows, a column appearing mid-run, growth, finalize (consolidated metadata),
    reopen by a new writer (restart), rows after finalize, finalize again: both stores equal
    after each step."""
    roots = {fast: tmp_path / ("fast" if fast else "public") for fast in (True, False)}
    writers = {fast: ZarrTraceWriter(root, block_rows=8, fsync=False, fast_metadata=fast)
               for fast, root in roots.items()}  # fmt: skip
    attrs = {"element": "Co", "edge": "K", "config": {"nested": [1, 2.5, None], "x": "y"}}

    def step(action: str) -> None:
        for fast, w in writers.items():
            if action == "open":
                w.open_run("eq", attrs)
            elif action == "rows":
                w.write("eq", make_rows(range(0, 5)))
            elif action == "new column":
                w.write("eq", make_rows(range(5, 9), new_col_from=5))
            elif action == "grow":
                for lo in range(9, 60, 7):
                    w.write("eq", make_rows(range(lo, lo + 7), new_col_from=5))
            elif action == "attrs":
                w.open_run("eq", {"sample": "LiCoO2"})
            elif action == "finalize":
                w.finalize("eq", "success")
            elif action == "reopen":
                writers[fast] = ZarrTraceWriter(
                    roots[fast], block_rows=8, fsync=False, fast_metadata=fast
                )
                writers[fast].write("eq", make_rows(range(65, 70), new_col_from=5))
            elif action == "finalize again":
                writers[fast].finalize("eq", "abort")
        assert _assert_same(roots[True], roots[False]) > 0, action

    for action in ("open", "rows", "new column", "grow", "attrs", "finalize"):
        step(action)
    step("reopen")
    step("finalize again")
    ds = open_trace(trace_path(roots[True], "eq"))
    assert ds.attrs["status"] == "abort"
    np.testing.assert_array_equal(ds.seq_num.values, np.arange(70))
    np.testing.assert_allclose(ds.os.values, expected_os(ds.seq_num.values))
    # A finalized fast store opens with its consolidated metadata, as Zarr's own would.
    group = zarr.open_group(str(trace_path(roots[True], "eq")), mode="r", use_consolidated=True)
    assert group.metadata.consolidated_metadata is not None
    assert set(group.metadata.consolidated_metadata.metadata) == set(ds.variables) | {"time"}


def test_reopened_store_of_another_layout_stays_on_zarr_api(tmp_path: Path) -> None:
    """A store holding a member the documents do not describe (here an extra sub-group) is
    continued through Zarr's API, whose consolidation then covers that member too."""
    w = ZarrTraceWriter(tmp_path, block_rows=8, fsync=False)
    w.open_run("mixed")
    w.write("mixed", make_rows(range(4)))
    w.close()
    grp = zarr.open_group(str(trace_path(tmp_path, "mixed")), mode="r+", use_consolidated=False)
    grp.create_group("extra", attributes={"made_by": "another tool"})
    w2 = ZarrTraceWriter(tmp_path, block_rows=8, fsync=False)
    assert w2.fast_metadata
    w2.write("mixed", make_rows(range(4, 10)))
    assert w2._runs["mixed"].group is not None  # the public API took over
    w2.finalize("mixed", "success")
    done = zarr.open_group(str(trace_path(tmp_path, "mixed")), mode="r", use_consolidated=True)
    assert done.metadata.consolidated_metadata is not None
    assert "extra" in done.metadata.consolidated_metadata.metadata
    np.testing.assert_array_equal(open_trace(trace_path(tmp_path, "mixed")).seq_num, np.arange(10))


@pytest.mark.parametrize(
    ("dtype", "fill"),
    [("float64", np.nan), ("float32", np.nan), ("float64", 0.0), ("int64", -1), ("bool", False)],
)
def test_array_document_matches_create_array(tmp_path: Path, dtype: str, fill: object) -> None:
    ref = zarr.open_group(str(tmp_path / "ref.zarr"), mode="w", zarr_format=3)
    arr = ref.create_array(
        "a", shape=(16, 3), chunks=(8, 3), dtype=dtype, fill_value=fill,
        dimension_names=["time", "d"], attributes={"units": "eV", "n": [1, 2]},
    )  # fmt: skip
    doc = zarr_adapter.array_document(
        shape=(16, 3), chunks=(8, 3), dtype=np.dtype(dtype), fill_value=fill,
        dimension_names=("time", "d"), attributes={"units": "eV", "n": [1, 2]},
    )  # fmt: skip
    assert doc is not None
    assert zarr_adapter.dumps(doc) == (tmp_path / "ref.zarr" / "a" / "zarr.json").read_bytes()
    assert zarr_adapter.is_writer_layout(doc)
    assert zarr_adapter.chunk_key((1, 0)) == arr.metadata.encode_chunk_key((1, 0))


def test_layouts_the_documents_do_not_cover(tmp_path: Path) -> None:
    assert zarr_adapter.array_document(
        shape=(4,), chunks=(4,), dtype=np.dtype("int32"), fill_value=0,
        dimension_names=("x",), attributes={},
    ) is None  # fmt: skip
    ref = zarr.open_group(str(tmp_path / "ref.zarr"), mode="w", zarr_format=3)
    ref.create_array("raw", shape=(4,), chunks=(4,), dtype="float64", compressors=None)
    import json

    raw = json.loads((tmp_path / "ref.zarr" / "raw" / "zarr.json").read_bytes())
    assert not zarr_adapter.is_writer_layout(raw)  # no zstd, no dimension names
