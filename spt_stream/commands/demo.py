"""``spt-stream demo``: the one-command operando demo on the embedded defaults.

Starts a local Kafka-protocol broker, runs a simulated operando experiment (a bluesky RunEngine
with ophyd devices: a potentiostat charging a LiCoO2 cathode and a quick-XAS Co K-edge detector
whose spectra come from the project's simulator) publishing in the bluesky-kafka wire format,
runs the engine on it live, writes the Zarr trace, saves a plot, prints a summary, and stops
everything it started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spt_stream.view.options import ViewHostOpt, ViewOpt, ViewPortOpt

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        frames: Annotated[int, typer.Option("--frames", min=5, help="Spectra to acquire.")] = 300,
        rate: Annotated[
            float, typer.Option("--rate", min=0.1, max=200.0, help="Frames per second.")
        ] = 10.0,
        out: Annotated[
            Path,
            typer.Option("--out", help="Folder for the trace, plot, log and Bluesky documents."),
        ] = Path("spt-demo-output"),
        tiled: Annotated[
            bool, typer.Option("--tiled", help="Also start a local Tiled server and write there.")
        ] = False,
        model: Annotated[
            Path | None, typer.Option("--model", help="Checkpoint (default: packaged model).")
        ] = None,
        log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
        serve_view: ViewOpt = False,
        view_host: ViewHostOpt = "127.0.0.1",
        view_port: ViewPortOpt = 0,
    ) -> None:
        """Simulated operando experiment (Co K-edge, LiCoO2 delithiation) analysed live."""
        import shlex
        import sys

        from rich.console import Console
        from rich.markup import escape

        from spt_stream.commands._engine_options import configure_logging
        from spt_stream.devtools.demo.run import prepare_out_dir, run_demo
        from spt_stream.errors import SptError

        console = Console(stderr=True, soft_wrap=True)  # error lines stay whole
        try:
            out_dir = prepare_out_dir(out)
        except SptError as exc:
            console.print(f"[red]demo failed:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from exc
        log_file = out_dir / "demo.log"
        configure_logging(log_level, log_file=log_file)
        live_view = None
        tiled_server = None
        if serve_view:  # the live web view of the demo's traces, in its own process
            from spt_stream.view.options import start_view

            try:
                tiled_settings = None
                if tiled:  # started here, so the view lists its runs and outlives the demo
                    import atexit

                    from spt_stream.config import TiledSettings
                    from spt_stream.devtools.tiled_server import TiledServer

                    console.print("starting a local Tiled server")
                    tiled_server = TiledServer(workdir=out_dir / "tiled")
                    atexit.register(tiled_server.stop)  # its own session: Ctrl-C misses it
                    tiled_server.start()
                    tiled_settings = TiledSettings(
                        url=tiled_server.url, api_key=tiled_server.api_key
                    )
                live_view = start_view(
                    out_dir / "traces", view_host, view_port, console=console, tiled=tiled_settings
                )
            except SptError as exc:
                console.print(f"[red]demo failed:[/red] {escape(str(exc))}")
                raise typer.Exit(1) from exc
        try:
            res = run_demo(
                out,
                frames=frames,
                rate_hz=rate,
                tiled=tiled,
                model=model,
                console=console,
                tiled_server=tiled_server,
            )
        except SptError as exc:
            console.print(f"[red]demo failed:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from exc
        out_console = Console(soft_wrap=True)  # paths stay whole when copied from a terminal
        out_console.print()
        out_console.print("[bold green]spt-stream demo finished[/bold green]")
        out_console.print(
            f"  frames: {res.frames_analysed} analysed of {res.frames_published} published "
            f"in {res.acquisition_s:.1f} s "
            f"({res.frames_published / res.acquisition_s:.1f} frames/s)"
        )
        out_console.print(
            f"  latency event -> trace: p50 {res.latency_p50_ms:.1f} ms, "
            f"p99 {res.latency_p99_ms:.1f} ms"
        )
        out_console.print(f"  run uid: {res.run_uid}")
        out_console.print(f"  trace (Zarr): {res.trace}")
        if res.plot is not None:
            out_console.print(f"  plot: {res.plot}")
        out_console.print(f"  Bluesky documents (JSONL): {res.documents}")
        out_console.print(f"  log ({log_level.upper()} and above): {log_file}")
        if res.dead_letter.exists():
            out_console.print(f"  dead-letter records: {res.dead_letter}")
        for k, v in res.extra.items():
            out_console.print(f"  {k}: {v}")
        out_console.print("  open the trace with:")
        out_console.print(
            f'    {shlex.quote(sys.executable)} -c "import xarray as xr; '
            f"ds = xr.open_zarr('{res.trace}'); print(ds[['os', 'os_std', 'cell_potential']])\""
        )
        out_console.print("  analyse the documents again with:")
        spt = Path(sys.executable).with_name("spt-stream")
        out_console.print(
            f"    {shlex.quote(str(spt))} replay {shlex.quote(str(res.documents))} "
            f"--zarr {shlex.quote(str(out_dir / 'replayed'))}"
        )
        if live_view is not None:
            out_console.print(f"  live view: {live_view.url} (serving until Ctrl-C)")
            live_view.wait()
            live_view.stop()
