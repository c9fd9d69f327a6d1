"""The naive ecosystem pipeline a beamline would assemble today, on the engine's workload.

Same broker (a local Tansu, :class:`spt_stream.devtools.broker.LocalBroker`), same documents and
same
producer as ``bench_live.py`` (``bench/_common.py``: start/descriptor/stop from
``event_model.compose_run`` with ``md["spt"]``, events carrying 400-point Co K-edge spectra from
the demo's simulated quick-XAS detector, sent with ``KafkaDocumentPublisher``, paced by a deadline
loop, each event's ``time`` stamped just before it is sent). The consumer is built only from
ecosystem tools, one frame at a time, in its own process:

* ``bluesky_kafka.RemoteDispatcher`` (confluent-kafka consumer group, ``auto.offset.reset``
  earliest, ``fetch.wait.max.ms`` set to the engine's ``fetch_max_wait_ms`` so both wait the same
  on the broker), with one bluesky callback subscribed;
* the callback, per event: the spectrum and the descriptor's energy grid go to
  ``larch.xafs.pre_edge`` (a fresh ``larch.Group``, Larch's defaults: its own e0 search,
  ``nvict=0``); the flattened spectrum (``group.flat``, what the engine feeds the model) is
  interpolated with ``numpy.interp`` onto the model grid (``spt_stream.core.grid.MODEL_GRID_REL`` +
  the
  tabulated edge energy); the packaged model is called on that one spectrum
  (``Predictor.from_checkpoint(None, device="cpu").predict(norm[None], [element])``);
* the result row (seq_num, time, e0, edge_step, the event's ``cell_potential``, every
  descriptor's value and std, ``os_probs``, ``ood_score``, ``ood``, the 224-point model input;
  what the engine's trace holds per frame) is written before the next event is taken:

  - ``zarr``: one Zarr v3 group per run, one array per field, ``zarr.Array.append`` (resize +
    write) on every array for every frame (chunks of 256 rows, as bench_zarr.py's "naive append");
  - ``tiled``: bluesky's ``TiledWriter`` (``batch_size=1``, its documented setting for streaming)
    fed an analysis run composed with ``event_model`` (start, descriptor, one event per frame,
    stop) against a real local Tiled server (:class:`spt_stream.devtools.tiled_server.TiledServer`).

torch runs on one intra-op thread (``torch.set_num_threads(1)``) and the BLAS/OpenMP pools on one
(threadpoolctl), the cap the engine sets for itself on this 2-core machine (cores - 1).

Benchmarks (per variant):

1. **backlog**: ``--backlog`` frames produced first, then the consumer started; throughput =
   rows written / (stop document processed - first document received), the engine's definition in
   bench_live.py; the rows are then read back from Zarr / Tiled and counted.
2. **latency**: the consumer started, a 20-frame warm-up run (10 frames/s) taken through it, then
   one run per offered rate (``--rates``, ``--seconds`` long). Latency = time the row's write
   returned - the event's ``time``. The naive pipeline has no feedback topic, so the matching
   engine number is bench_live's "engine event -> batch written" column (event time until the
   batch is handed to every sink; the engine's Zarr writer then writes within ~0.2 s).

Run: ``.venv/bin/python bench/naive_pipeline.py [--variants zarr tiled] [--backlog 2000]
[--rates 10 100] [--seconds 30 10] [--json OUT]``. Prints markdown; ``--json`` also writes the
headline numbers (run_all.py reads them for the engine-vs-naive ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    REPO,
    Lines,
    Producer,
    fmt,
    loadavg,
    make_run,
    q,
    simulated_spectra,
    wait_child,
)

VARIANTS = ("zarr", "tiled")
WARMUP_FRAMES = 20
WARMUP_RATE = 10.0

# ----------------------------------------------------------------------------------- writers


class ZarrRowWriter:
    """Per-row Zarr appends: one group per run, ``Array.append`` on every array per frame."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.group: Any = None
        self.arrays: dict[str, Any] = {}

    def open_run(self, run_uid: str, md: Mapping[str, Any]) -> None:
        import zarr

        self.group = zarr.open_group(str(self.root / f"{run_uid}.zarr"), mode="w", zarr_format=3)
        self.group.attrs.update({"element": md.get("element"), "raw_run": md.get("raw_run")})
        self.arrays = {}

    def write(self, row: Mapping[str, Any]) -> None:
        for name, value in row.items():
            v = np.asarray(value)
            arr = self.arrays.get(name)
            if arr is None:
                arr = self.group.create_array(
                    name, shape=(0, *v.shape), chunks=(256, *v.shape), dtype=v.dtype
                )
                self.arrays[name] = arr
            arr.append(v[None], axis=0)

    def close_run(self) -> None:
        self.group = None
        self.arrays = {}


class TiledRowWriter:
    """bluesky's TiledWriter (batch_size=1) fed an event_model-composed analysis run."""

    def __init__(self, url: str, api_key: str) -> None:
        from bluesky.callbacks.tiled_writer import TiledWriter
        from tiled.client import from_uri

        self.client = from_uri(url, api_key=api_key, remember_me=False)
        self.tw = TiledWriter(self.client, batch_size=1)
        self.bundle: Any = None
        self.desc: Any = None

    def open_run(self, run_uid: str, md: Mapping[str, Any]) -> None:
        from event_model import compose_run

        self.bundle = compose_run(metadata={"raw_run": run_uid, **md})
        self.tw("start", self.bundle.start_doc)
        self.desc = None

    def write(self, row: Mapping[str, Any]) -> None:
        data = {k: v for k, v in row.items() if k not in ("seq_num", "time")}
        if self.desc is None:
            keys = {}
            for k, v in data.items():
                a = np.asarray(v)
                dtype = "array" if a.ndim else ("boolean" if a.dtype == bool else "number")
                keys[k] = {"source": "naive-analysis", "dtype": dtype, "shape": list(a.shape)}
            self.desc = self.bundle.compose_descriptor(name="primary", data_keys=keys)
            self.tw("descriptor", self.desc.descriptor_doc)
        now = time.time()
        ev = self.desc.compose_event(
            data=data,
            timestamps=dict.fromkeys(data, now),
            seq_num=int(row["seq_num"]),
            time=float(row["time"]),
        )
        self.tw("event", ev)

    def close_run(self) -> None:
        self.tw("stop", self.bundle.compose_stop(exit_status="success"))


# ----------------------------------------------------------------------------------- child


def naive_child(cfg: Mapping[str, Any]) -> None:
    """The naive consumer: RemoteDispatcher -> per-frame Larch -> per-frame model -> row write."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="naive: %(name)s: %(message)s")
    import torch
    from bluesky.callbacks.core import CallbackBase
    from bluesky_kafka import RemoteDispatcher
    from larch import Group
    from larch.xafs import pre_edge
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from spt_stream.core.grid import MODEL_GRID_REL, edge_energy
    from spt_stream.model.predictor import Predictor

    torch.set_num_threads(1)
    threadpool_limits(1)
    predictor = Predictor.from_checkpoint(None, device="cpu")
    writer: ZarrRowWriter | TiledRowWriter = (
        ZarrRowWriter(Path(cfg["zarr"]))
        if cfg["variant"] == "zarr"
        else TiledRowWriter(cfg["tiled_url"], cfg["tiled_key"])
    )
    expected = int(cfg["expected_stops"])

    class NaiveXanes(CallbackBase):
        """Per frame: Larch pre_edge, interpolation onto the model grid, the model, one row."""

        def __init__(self) -> None:
            super().__init__()
            self.first_doc: float | None = None
            self.energy: np.ndarray[Any, Any] | None = None
            self.element = "Co"
            self.edge = "K"
            self.spectrum_key = "qxas_spectrum"
            self.grid: np.ndarray[Any, Any] = MODEL_GRID_REL
            self.run_uid = ""
            #: per frame: seq_num, event time, row written, then seconds in larch / interp /
            #: model / write
            self.frames: list[tuple[float, ...]] = []
            #: (run uid, wall time, process CPU seconds) at each stop document
            self.stops: list[tuple[str, float, float]] = []
            self.errors: list[str] = []

        def __call__(self, name: str, doc: Any, *args: Any, **kw: Any) -> Any:
            if self.first_doc is None:
                self.first_doc = time.time()
            try:
                return super().__call__(name, doc, *args, **kw)
            except Exception as exc:  # RemoteDispatcher would only log it and go on
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
                raise

        def start(self, doc: Any) -> Any:
            spt = doc.get("spt", {})
            self.element = spt.get("element", doc.get("element", "Co"))
            self.edge = spt.get("edge", doc.get("edge", "K"))
            self.spectrum_key = spt.get("spectrum", "qxas_spectrum")
            self.energy_key = spt.get("energy", "qxas_energy")
            self.grid = edge_energy(self.element, self.edge) + MODEL_GRID_REL
            self.run_uid = doc["uid"]
            writer.open_run(self.run_uid, {"element": self.element, "raw_run": self.run_uid})

        def descriptor(self, doc: Any) -> Any:
            for conf in doc.get("configuration", {}).values():
                if self.energy_key in conf.get("data", {}):
                    self.energy = np.asarray(conf["data"][self.energy_key], dtype=np.float64)

        def event(self, doc: Any) -> Any:
            t0 = time.perf_counter()
            mu = np.asarray(doc["data"][self.spectrum_key], dtype=np.float64)
            group = Group(energy=self.energy, mu=mu)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pre_edge(group)
            t1 = time.perf_counter()
            norm = np.interp(self.grid, group.energy, group.flat).astype(np.float32)
            t2 = time.perf_counter()
            pred = predictor.predict(norm[None], [self.element])
            t3 = time.perf_counter()
            row: dict[str, Any] = {
                "seq_num": int(doc["seq_num"]),
                "time": float(doc["time"]),
                "e0": float(group.e0),
                "edge_step": float(group.edge_step),
            }
            for k, v in doc["data"].items():
                if k != self.spectrum_key and np.ndim(v) == 0:
                    row[k] = float(v)
            for name in pred.descriptor_names:
                row[name] = float(pred.values[name][0])
                row[f"{name}_std"] = float(pred.std[name][0])
                if name in pred.probs:
                    row[f"{name}_probs"] = np.asarray(pred.probs[name][0], dtype=np.float32)
            row["ood_score"] = float(pred.ood_score[0])
            row["ood"] = bool(pred.ood[0])
            row["norm"] = norm
            writer.write(row)
            t4 = time.perf_counter()
            self.frames.append(
                (row["seq_num"], row["time"], time.time(), t1 - t0, t2 - t1, t3 - t2, t4 - t3)
            )

        def stop(self, doc: Any) -> Any:
            writer.close_run()
            self.stops.append((str(doc.get("run_start")), time.time(), time.process_time()))
            print(f"DONE {doc.get('run_start')}", flush=True)

    fetch_wait = int(cfg["fetch_max_wait_ms"])
    dispatcher = RemoteDispatcher(
        topics=[cfg["topic"]],
        bootstrap_servers=cfg["bootstrap"],
        group_id=cfg["group"],
        consumer_config={"auto.offset.reset": "earliest", "fetch.wait.max.ms": fetch_wait},
    )
    cb = NaiveXanes()
    dispatcher.subscribe(cb)
    t_ready = time.time()
    print("READY", flush=True)
    c0 = time.process_time()
    deadline = time.monotonic() + float(cfg.get("timeout_s", 1800))

    def keep_polling() -> bool:
        return len(cb.stops) < expected and time.monotonic() < deadline

    dispatcher.start(continue_polling=keep_polling)
    out = {
        "t_ready": t_ready,
        "first_doc": cb.first_doc,
        "frames": cb.frames,
        "stops": cb.stops,
        "errors": cb.errors,
        "cpu0": c0,
        "cpu_s": time.process_time() - c0,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }
    Path(cfg["out"]).write_text(json.dumps(out))


def _spawn(cfg: Mapping[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child-naive", json.dumps(cfg)],
        text=True,
        cwd=REPO,
        stdout=subprocess.PIPE,
    )


# ----------------------------------------------------------------------------------- read-back


def rows_written(variant: str, cfg: Mapping[str, Any], run_uid: str) -> int:
    """Rows of ``run_uid``'s analysis actually in the store (read back, not the writer's word)."""
    if variant == "zarr":
        import zarr

        g = zarr.open_group(str(Path(cfg["zarr"]) / f"{run_uid}.zarr"), mode="r")
        lengths = {int(a.shape[0]) for _, a in g.arrays()}
        return min(lengths) if lengths else 0
    from tiled.client import from_uri

    client = from_uri(cfg["tiled_url"], api_key=cfg["tiled_key"], remember_me=False)
    for key in client:
        node = client[key]
        if node.metadata.get("start", {}).get("raw_run") == run_uid:
            table = node["primary"].base["internal"].read()
            return len(table)
    return 0


# ----------------------------------------------------------------------------------- benchmarks


def _stage_ms(frames: np.ndarray[Any, Any]) -> str:
    """Median ms per frame in larch / interp / model / write."""
    if frames.size == 0:
        return "-"
    med = np.median(frames[:, 3:7], axis=0) * 1e3
    return " / ".join(f"{v:.1f}" for v in med)


def bench_variant(
    bootstrap: str,
    tmp: Path,
    data: tuple[Any, Any, Any],
    variant: str,
    backlog: int | None,
    rates: Sequence[float],
    seconds: Sequence[float],
    fetch_wait: int,
    store: Mapping[str, Any],
) -> tuple[dict[str, Any], str | None, list[str]]:
    """One consumer process for ``variant``: the backlog run (when ``backlog``), then the paced
    runs (a warm-up run first when there was no backlog to warm up on).

    Returns (numbers, backlog table row, latency table rows).
    """
    from spt_stream.devtools.broker import create_topic

    grid, spectra, pots = data
    topic = f"bench.naive.{variant}.documents"
    create_topic(bootstrap, topic, 1)
    back = make_run(backlog, grid, "naive-backlog") if backlog else None
    warm = None if back or not rates else make_run(WARMUP_FRAMES, grid, "naive-warm-up")
    runs = [
        make_run(max(2, int(r * s)), grid, f"naive-{r:g}/s")
        for r, s in zip(rates, seconds, strict=True)
    ]
    producer = Producer(bootstrap, topic, spectra, pots)
    result: dict[str, Any] = {}
    backlog_row: str | None = None
    pacing: dict[str, dict[str, float]] = {}
    loads: dict[str, str] = {}
    cfg = {
        **store,
        "variant": variant,
        "bootstrap": bootstrap,
        "topic": topic,
        "group": f"bench-naive-{variant}",
        "fetch_max_wait_ms": fetch_wait,
        "expected_stops": int(back is not None) + int(warm is not None) + len(runs),
        "out": str(tmp / f"naive-{variant}.json"),
    }
    try:
        produce_s = producer.backlog([back]) if back else 0.0
        load = loadavg()
        t_start = time.time()
        child = _spawn(cfg)
        lines = Lines(child)
        lines.expect("READY", 180)
        if back:
            # the naive pipeline is slow: allow ~2 frames/s
            lines.expect(f"DONE {back.uid}", 180 + back.n / 2)
        if warm:
            producer.paced(warm, WARMUP_RATE)
            lines.expect(f"DONE {warm.uid}", 180)
        if runs:
            print(f"{variant}: consumer warm {time.time() - t_start:.1f} s after start", flush=True)
        for run, rate in zip(runs, rates, strict=True):
            time.sleep(1.0)
            loads[run.uid] = loadavg()
            pacing[run.uid] = producer.paced(run, rate)
            # the naive pipeline may fall far behind: allow ~2 frames/s of catching up
            lines.expect(f"DONE {run.uid}", 120 + run.n / 2)
            print(f"  {variant} {rate:g} frames/s done (load {loads[run.uid]})", flush=True)
    finally:
        producer.close()
    wait_child(child, 120, f"naive {variant}")
    res = json.loads(Path(cfg["out"]).read_text())
    fr = np.asarray(res["frames"], dtype=np.float64).reshape(-1, 7)
    if res["errors"]:
        print(f"{variant}: {len(res['errors'])} callback errors, first: {res['errors'][0]}")
    if back:
        done, cpu_at_stop = {u: (t, c) for u, t, c in res["stops"]}[back.uid]
        cpu = cpu_at_stop - res["cpu0"]
        wall = done - res["first_doc"]
        rows = rows_written(variant, cfg, back.uid)
        mine = fr[: back.n]
        rate = rows / wall
        result["backlog"] = {"frames_per_s": rate, "rows": rows, "frames": back.n}
        backlog_row = (
            f"| {variant} | {back.n} | {rows} | {produce_s:.1f} | {done - t_start:.1f} | "
            f"{wall:.2f} | **{rate:,.1f}** | {cpu:.1f} | {_stage_ms(mine)} | "
            f"{res['maxrss_mb']:.0f} | {len(res['errors'])} | {load} |"
        )
    latency: dict[str, dict[str, float]] = {}
    rows_out = []
    for run, rate in zip(runs, rates, strict=True):
        p = pacing[run.uid]
        sel = (fr[:, 1] >= p["first"] - 1e-6) & (fr[:, 1] <= p["last"] + 1e-6)
        mine = fr[sel]
        lat = mine[:, 2] - mine[:, 1]
        rows = rows_written(variant, cfg, run.uid)
        once = len(mine) == run.n and len(set(mine[:, 0].astype(int).tolist())) == run.n
        busy = (mine[-1, 2] - mine[0, 2]) if len(mine) > 1 else float("nan")
        processed = (len(mine) - 1) / busy if busy > 0 else float("nan")
        qs = q(lat, (0.5, 0.95, 0.99))
        latency[f"{rate:g}"] = {
            "p50_ms": qs[0] * 1e3,
            "p95_ms": qs[1] * 1e3,
            "p99_ms": qs[2] * 1e3,
            "max_ms": float(np.max(lat)) * 1e3 if lat.size else float("nan"),
            "frames": run.n,
            "rows": rows,
            "seconds": run.n / rate,
            "processed_per_s": processed,
        }
        rows_out.append(
            f"| {variant} | {rate:g} | {p['achieved_rate']:.1f} | {run.n} | {rows} | "
            f"{'yes' if once else 'NO'} | **{fmt(qs)}** | {latency[f'{rate:g}']['max_ms']:.0f} | "
            f"{processed:.1f} | {_stage_ms(mine)} | {loads[run.uid]} |"
        )
    if runs:
        result["latency"] = latency
    result["errors"] = len(res["errors"])
    result["maxrss_mb"] = res["maxrss_mb"]
    return result, backlog_row, rows_out


# ----------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=["backlog", "latency"], action="append")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--backlog", type=int, default=2000)
    ap.add_argument("--rates", type=float, nargs="+", default=[10.0, 100.0])
    ap.add_argument(
        "--seconds",
        type=float,
        nargs="+",
        default=[30.0, 10.0],
        help="duration of each rate's run (one value, or one per rate)",
    )
    ap.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=None,
        help="the consumer's fetch.wait.max.ms (default: the engine's fetch_max_wait_ms)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    seconds = args.seconds * len(args.rates) if len(args.seconds) == 1 else args.seconds
    if len(seconds) != len(args.rates):
        ap.error("--seconds needs one value or one per rate")
    which = set(args.only or ["backlog", "latency"])

    from spt_stream.config import load_settings
    from spt_stream.devtools.broker import LocalBroker

    fetch_wait = args.fetch_wait_ms or load_settings(None).kafka.fetch_max_wait_ms
    print(
        f"# naive_pipeline: {os.cpu_count()} CPUs, load average {loadavg()}, "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S')}; fetch.wait.max.ms {fetch_wait}; "
        "torch and BLAS on 1 thread"
    )
    data = simulated_spectra()
    tmp = Path(tempfile.mkdtemp(prefix="spt-bench-naive-"))
    result: dict[str, Any] = {"variants": {}, "fetch_wait_ms": fetch_wait}
    server = None
    try:
        store: dict[str, Any] = {"zarr": str(tmp / "zarr")}
        if "tiled" in args.variants:
            from spt_stream.devtools.tiled_server import TiledServer

            t0 = time.perf_counter()
            (tmp / "tiled").mkdir()
            server = TiledServer(workdir=tmp / "tiled")
            server.start()
            store.update(tiled_url=server.url, tiled_key=server.api_key)
            print(f"Tiled server up in {time.perf_counter() - t0:.1f} s")
        with LocalBroker() as broker:
            backlog_rows: list[str] = []
            latency_rows: list[str] = []
            for variant in args.variants:
                res, brow, lrows = bench_variant(
                    broker.bootstrap,
                    tmp,
                    data,
                    variant,
                    args.backlog if "backlog" in which else None,
                    args.rates if "latency" in which else [],
                    seconds if "latency" in which else [],
                    fetch_wait,
                    store,
                )
                result["variants"][variant] = res
                backlog_rows.extend([brow] if brow else [])
                latency_rows.extend(lrows)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if backlog_rows:
        print("\n## Naive pipeline: backlog throughput\n")
        print(
            f"{args.backlog} frames produced first, then the consumer started; frames/s = rows "
            "read back / (first document received -> stop document processed)\n"
        )
        print(
            "| writer | frames produced | rows read back | produce s | consumer start -> "
            "done s | first doc -> last row s | frames/s | consumer CPU s | ms/frame "
            "larch / interp / model / write (median) | max RSS MB | callback errors "
            "| load avg |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
        print("\n".join(backlog_rows))
    if latency_rows:
        print("\n## Naive pipeline: latency, event time -> row written\n")
        warm = "the backlog run" if backlog_rows else f"a {WARMUP_FRAMES}-frame warm-up run"
        print(
            f"ms p50 / p95 / p99, after {warm}; compare with bench_live's \"engine event -> "
            'batch written" column\n'
        )
        print(
            "| writer | offered frames/s | achieved | frames | rows read back | each "
            "frame once | event -> row written | max ms | processed frames/s | ms/frame "
            "larch / interp / model / write (median) | load avg |"
        )
        print("|---|---:|---:|---:|---:|:---:|---:|---:|---:|---|---|")
        print("\n".join(latency_rows))
    print(f"\nfinished {time.strftime('%H:%M:%S')}, load average {loadavg()}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-naive":
        naive_child(json.loads(sys.argv[2]))
    else:
        main()
