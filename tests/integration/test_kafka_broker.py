"""LocalBroker (Tansu child process), create_topic and the ``spt-stream broker`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from spt_stream.devtools.broker import LocalBroker, create_topic, find_free_port, wait_for_broker
from spt_stream.errors import BrokerError

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; /proc tells.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_local_broker_starts_answers_and_leaves_no_process() -> None:
    """The broker answers metadata requests while open and its process is gone afterwards."""
    with LocalBroker() as broker:
        assert broker.running
        pid = broker._proc.pid if broker._proc else -1
        wait_for_broker(broker.bootstrap, timeout_s=2)
    assert not broker.running
    assert not _alive(pid)


def test_create_topic_is_idempotent_and_sets_partitions(kafka_bootstrap: str) -> None:
    """Creating a topic twice is fine and it has the requested partition count."""
    name = f"test.create.{os.getpid()}.{time.monotonic_ns()}"
    create_topic(kafka_bootstrap, name, partitions=3)
    create_topic(kafka_bootstrap, name, partitions=3)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        (meta,) = admin.describe_topics([name])
    finally:
        admin.close()
    assert len(meta["partitions"]) == 3


def test_port_in_use_is_a_broker_error(kafka_bootstrap: str) -> None:
    """A second broker on a taken port fails loudly instead of 'succeeding' against the first."""
    if "SPT_KAFKA_BOOTSTRAP" in os.environ:
        pytest.skip("needs the session's local broker port")
    host, port = kafka_bootstrap.rsplit(":", 1)
    with pytest.raises(BrokerError, match="exited"):
        LocalBroker(port=int(port), host=host).start()


def test_wait_for_broker_times_out_with_broker_error() -> None:
    """Nobody listening: BrokerError naming the address, after the timeout."""
    address = f"127.0.0.1:{find_free_port()}"
    with pytest.raises(BrokerError, match=address):
        wait_for_broker(address, timeout_s=0.5)


def test_broker_command_runs_until_sigint() -> None:
    """`spt-stream broker --port P` prints the bootstrap address, serves, and stops on Ctrl-C."""
    port = find_free_port()
    code = (
        "import typer; from spt_stream.commands import broker; "
        "app = typer.Typer(); broker.register(app); app()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in first
        wait_for_broker(f"127.0.0.1:{port}", timeout_s=5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "broker stopped" in out
    with pytest.raises(BrokerError):
        wait_for_broker(f"127.0.0.1:{port}", timeout_s=0.3)
