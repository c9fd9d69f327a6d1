"""The view in a real headless browser (Debian's chromium driven by Selenium): a run's traces and
heat map render; frames written by a running engine appear while it runs and match the trace at
the end; the page recovers after the server restarts; a screenshot is saved and is not blank; a
run the Tiled sink writes (tests/plugins/tiled.py) is listed and shown beside the Zarr runs.

``.ci/run`` installs chromium and chromium-driver (scripts/browser.sh); elsewhere these tests skip
when no browser is installed. ``SPT_VIEW_SCREENSHOT=PATH`` also saves the screenshot there
(the README's docs/img/view.png comes from this test).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("uvicorn")

from spt_stream.devtools.broker import find_free_port  # noqa: E402
from spt_stream.sinks.zarr_trace import ZarrTraceWriter, open_trace  # noqa: E402
from spt_stream.view.app import ViewOptions, create_app  # noqa: E402
from spt_stream.view.server import ViewServer  # noqa: E402
from tests._trace_rows import make_rows  # noqa: E402

FAST = ViewOptions(poll_s=0.1)


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(bash scripts/browser.sh, which .ci/run calls)"
        )
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1560",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    opts.binary_location = chromium
    drv = webdriver.Chrome(options=opts, service=Service(driver))
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _stats(drv: Any) -> dict[str, Any]:
    out: dict[str, Any] = drv.execute_script("return window.sptView && window.sptView.stats()")
    return out or {}


def _wait(
    drv: Any, ok: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = _stats(drv)
        if st and ok(st):
            return st
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {st}")


def _shown_count(drv: Any) -> int:
    return int(drv.execute_script("return document.getElementById('frame-count').dataset.n"))


def _canvas_spread(drv: Any, canvas_id: str) -> float:
    """Standard deviation of a canvas's pixel values (0: blank)."""
    return float(
        drv.execute_script(
            """const c = document.getElementById(arguments[0]);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let s = 0, s2 = 0, n = 0;
            for (let i = 0; i < d.length; i += 16) { s += d[i]; s2 += d[i] * d[i]; n++; }
            return Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2));""",
            canvas_id,
        )
    )


def test_live_run_streams_into_an_open_page(browser: Any, tmp_path: Path) -> None:
    """A RunEngine run analysed by the engine while the page is open: the page's frame count
    grows during the run, equals the trace's rows at the end, with no gap and no duplicate; the
    traces, spectra and heat map render; the screenshot is not blank."""
    from bluesky import RunEngine

    from spt_stream.config import load_settings
    from spt_stream.devtools.demo.experiment import (
        DelithiationCell,
        QuickXASDetector,
        delithiation_plan,
    )
    from spt_stream.engine.pipeline import build_pipeline
    from spt_stream.sinks.deadletter import MemoryDeadLetter
    from spt_stream.transports.inprocess import InProcessConsumer

    root = tmp_path / "traces"
    root.mkdir()
    settings = load_settings(
        None,
        {
            "zarr": {"root": root},
            "dead_letter": {"path": None},
            "device": "cpu",
            "compute_threads": 1,
            "batch": {"max_latency_ms": 50},
        },
    )
    pipe = build_pipeline(settings, dead_letter=MemoryDeadLetter())
    frames, rate = 120, 25.0
    with ViewServer(create_app(root, options=FAST)) as server:
        browser.get(server.url)
        t_open = time.monotonic()
        redraws0 = _stats(browser).get("redraws", 0)
        uids: list[str] = []

        def experiment() -> None:
            cell = DelithiationCell(name="cell", duration_s=frames / rate)
            det = QuickXASDetector(name="qxas", cell=cell, seed=3)
            RE = RunEngine({}, call_returns_result=True, context_managers=[])
            RE.subscribe(InProcessConsumer(pipe.engine))
            res = RE(delithiation_plan(det, cell, frames=frames, rate_hz=rate))
            uids.append(res.run_start_uids[0])

        run = threading.Thread(target=experiment, name="experiment")
        run.start()
        try:
            during = _wait(browser, lambda s: s["rows"] >= 10, 30, "frames during the run")
            assert run.is_alive(), "the run ended before the page showed frames"
            assert during["rows"] < frames
            seen_counts = {during["rows"]}
            while run.is_alive():
                seen_counts.add(_shown_count(browser))
                time.sleep(0.2)
        finally:
            run.join()
            pipe.close()
        uid = uids[0]
        n_trace = int(open_trace(root / f"{uid}.zarr").sizes["time"])
        assert n_trace == frames
        end = _wait(
            browser,
            lambda s: s["rows"] == n_trace and s["heatRows"] == n_trace,
            20,
            "the whole run",
        )
        assert len(seen_counts) >= 3, seen_counts  # it grew step by step, not at the end only
        assert end["runId"] == uid
        assert end["duplicates"] == 0
        assert end["gaps"] == 0
        assert end["descriptor"] == "os"
        assert {"cell_potential", "os_std"} <= set(end["variables"])
        _wait(browser, lambda s: s["runStatus"] == "success", 10, "the run's final status")
        time.sleep(0.3)  # one more redraw
        assert _shown_count(browser) == n_trace
        elapsed = time.monotonic() - t_open
        redraw_rate = (_stats(browser)["redraws"] - redraws0) / elapsed
        assert redraw_rate <= 11.0, redraw_rate  # capped at ~10 Hz
        assert _canvas_spread(browser, "heatmap") > 10
        assert _canvas_spread(browser, "scatter") > 5
        n_plots = browser.execute_script("return document.querySelectorAll('.uplot').length")
        assert n_plots == 3  # descriptor with bands, process variables, spectra
        shot = tmp_path / "view.png"
        browser.save_screenshot(str(shot))
    _check_not_blank(shot)
    if os.environ.get("SPT_VIEW_SCREENSHOT"):
        dest = Path(os.environ["SPT_VIEW_SCREENSHOT"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)


def _check_not_blank(path: Path) -> None:
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert img.shape[0] > 800
    assert img.shape[1] > 1200
    assert img.std() > 20
    colours = {tuple(p) for p in img[::7, ::7].reshape(-1, 3).astype(int).tolist()}
    assert len(colours) > 200, len(colours)


def test_page_recovers_after_a_server_restart(browser: Any, tmp_path: Path) -> None:
    """The server goes away and comes back on the same port; meanwhile the engine wrote rows.
    The page reconnects by itself and resumes after its last seq_num: every row once."""
    root = tmp_path / "traces"
    writer = ZarrTraceWriter(root, block_rows=16, fsync=False)
    writer.open_run("restart-run", {"element": "Co", "edge": "K"})
    writer.write("restart-run", make_rows(range(1, 41)))
    port = find_free_port()
    server = ViewServer(create_app(root, options=FAST), port=port).start()
    try:
        browser.get(f"{server.url}#run=restart-run")
        _wait(browser, lambda s: s["rows"] == 40 and s["connected"], 20, "the history")
        server.stop()
        _wait(browser, lambda s: not s["connected"], 20, "the page to notice the restart")
        writer.write("restart-run", make_rows(range(41, 61)))
        server = ViewServer(create_app(root, options=FAST), port=port).start()
        st = _wait(browser, lambda s: s["rows"] == 60, 30, "the rows written while it was down")
        assert st["connects"] == 2
        assert st["duplicates"] == 0
        assert st["gaps"] == 0
        assert st["resets"] == 0
        writer.write("restart-run", make_rows(range(61, 71)))
        st = _wait(browser, lambda s: s["rows"] == 70, 10, "rows after the restart")
        assert st["duplicates"] == 0
        assert st["lastSeq"] == 70
        assert _shown_count(browser) in (60, 70)  # the display follows at the next redraw
    finally:
        server.stop()
        writer.close()


def test_tiled_run_in_the_page(browser: Any, tmp_path: Path, tiled_server: Any) -> None:
    """A run the Tiled sink writes is listed beside the Zarr runs (tagged ``tiled``) and shown
    like them: its history, then the rows appended while the page is open; its descriptor and
    process variables plotted; a note instead of spectra (Tiled traces hold none)."""
    import uuid

    from spt_stream.sinks.tiled_trace import TiledTraceWriter
    from spt_stream.view.tiled_store import TiledSource

    url, api_key = tiled_server
    root = tmp_path / "traces"
    zw = ZarrTraceWriter(root, block_rows=16, fsync=False)
    zw.open_run("zarr-run", {"element": "Ni", "edge": "K"})
    zw.write("zarr-run", make_rows(range(1, 11)))
    zw.close()
    uid = f"browser-{uuid.uuid4().hex[:10]}"
    writer = TiledTraceWriter(url, api_key)
    try:
        writer.open_run(uid, {"element": "Co", "edge": "K", "start_time": 1.79e9})
        writer.write(uid, make_rows(range(1, 41), new_col_from=1))
        writer.flush(timeout=60)
        source = TiledSource(url, api_key, poll_s=0.2)
        with ViewServer(create_app(root, options=FAST, tiled=source)) as server:
            browser.get(f"{server.url}#run=tiled:{uid}")
            st = _wait(browser, lambda s: s["rows"] == 40, 30, "the Tiled run's history")
            assert st["runId"] == f"tiled:{uid}"
            assert {"os", "potential"} <= set(st["variables"])
            listed = browser.execute_script(
                "return [...document.querySelectorAll('#runs tbody tr')]"
                ".map((tr) => [tr.dataset.uid, tr.dataset.source])"
            )
            assert [f"tiled:{uid}", "tiled"] in listed
            assert ["zarr-run", "zarr"] in listed
            assert url in browser.find_element("id", "tiled").text
            writer.write(uid, make_rows(range(41, 51), new_col_from=41))
            writer.flush(timeout=60)
            st = _wait(browser, lambda s: s["rows"] == 50, 15, "the rows appended to Tiled")
            assert (st["duplicates"], st["gaps"], st["lastSeq"]) == (0, 0, 50)
            time.sleep(0.3)  # one more redraw
            n_plots = browser.execute_script("return document.querySelectorAll('.uplot').length")
            assert n_plots == 2  # descriptor with bands, process variables
            assert "Tiled" in browser.find_element("id", "plot-spec").text
    finally:
        writer.close()
