"""``spt-stream broker``: a local Kafka-protocol broker (Tansu, in memory), in the foreground."""

from __future__ import annotations

import threading

import typer

__all__ = ["register"]


def broker(
    port: int = typer.Option(9092, "--port", min=1, max=65535, help="TCP port to listen on."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to listen on (also the advertised address)."
    ),
) -> None:
    """Run a local Kafka-compatible broker until Ctrl-C (messages live in memory only)."""
    from spt_stream.devtools.broker import LocalBroker
    from spt_stream.errors import BrokerError
    from spt_stream.transports.kafka import install_stop_signals

    stop = threading.Event()
    restore = install_stop_signals(stop)
    try:
        with LocalBroker(port=port, host=host) as local:
            typer.echo(f"Kafka broker listening; bootstrap servers: {local.bootstrap}")
            typer.echo("Messages are kept in memory only. Press Ctrl-C to stop.")
            while not stop.wait(0.5):
                if not local.running:
                    typer.echo("broker exited unexpectedly", err=True)
                    raise typer.Exit(1)
        typer.echo("broker stopped")
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        restore()


def register(app: typer.Typer) -> None:
    """Add the ``broker`` command to the root app."""
    app.command("broker")(broker)
