"""The floor under the live latency: the engine's two Kafka hops with no engine between them.

The live benchmark's latency (event time -> feedback message at the agent) crosses the broker
twice: producer -> engine's consumer, and engine's feedback producer -> agent's consumer. This
measures those two hops alone, on the same machine and broker (a local Tansu), with the same
client settings (kafka-python consumers with the engine's ``fetch_max_wait_ms`` and poll
timeout, producers with ``linger_ms=0``, ``acks=1``, one request in flight) and messages of the
live benchmark's size (a 400-point float64 spectrum, ~3.3 kB): a producer stamps each message
and sends it at a fixed rate; a relay process consumes it and immediately produces a small
message carrying the stamp to a second topic (what the engine does, minus normalization and the
model); an agent process consumes that and records receive time - stamp.

    .venv/bin/python bench/kafka_relay.py [--rates 10 100] [--seconds 30] [--fetch-wait-ms 10]

Prints a markdown table: p50 / p95 / p99 / max ms per rate, for the first hop (producer ->
relay) and the whole path (producer -> relay -> agent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _consumer(bootstrap: str, topic: str, fetch_wait: int) -> Any:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=fetch_wait,
    )
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_end(tp)
    c.position(tp)
    return c


def _producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer

    from spt_stream.config import KafkaSettings

    return KafkaProducer(linger_ms=0, acks=1, **KafkaSettings().producer_kwargs(bootstrap, "b"))


def send_paced(p: Any, topic: str, n: int, rate: float, pad: bytes) -> None:
    """Send ``n`` messages to ``topic`` at ``rate``/s, each its send time (32 ASCII bytes) plus
    ``pad``; flushes at the end."""
    t_next = time.perf_counter()
    for _ in range(n):
        t_next += 1.0 / rate
        while (d := t_next - time.perf_counter()) > 0:
            time.sleep(min(d, 0.002))
        p.send(topic, f"{time.time():<32.6f}".encode() + pad)
    p.flush()


def relay(cfg: dict[str, Any]) -> None:
    """Consume topic A; for each message send {stamp, hop1 receive time} to topic B at once."""
    c = _consumer(cfg["bootstrap"], cfg["a"], cfg["fetch_wait"])
    p = _producer(cfg["bootstrap"])
    print("READY", flush=True)
    left = cfg["n"]
    while left > 0:
        for records in c.poll(timeout_ms=cfg["poll_ms"]).values():
            for r in records:
                now = time.time()
                stamp = float(r.value[:32].decode().strip())
                p.send(cfg["b"], json.dumps([stamp, now]).encode())
                left -= 1
    p.flush()


def agent(cfg: dict[str, Any]) -> None:
    """Consume topic B; write [stamp, hop-1 time, receive time] rows to cfg['out']."""
    c = _consumer(cfg["bootstrap"], cfg["b"], cfg["fetch_wait"])
    print("READY", flush=True)
    rows: list[list[float]] = []
    while len(rows) < cfg["n"]:
        for records in c.poll(timeout_ms=cfg["poll_ms"]).values():
            now = time.time()
            rows.extend([*json.loads(r.value), now] for r in records)
    Path(cfg["out"]).write_text(json.dumps(rows))


def _child(kind: str, cfg: dict[str, Any]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, f"--child-{kind}", json.dumps(cfg)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "READY":
        raise RuntimeError(f"{kind} did not start")
    return proc


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("--child-relay", "--child-agent"):
        (relay if sys.argv[1] == "--child-relay" else agent)(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[10.0, 100.0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--fetch-wait-ms", type=int, default=None)
    args = ap.parse_args()
    import tempfile

    from _common import loadavg

    from spt_stream.config import KafkaSettings
    from spt_stream.devtools.broker import LocalBroker, create_topic

    ks = KafkaSettings()
    wait = args.fetch_wait_ms if args.fetch_wait_ms is not None else ks.fetch_max_wait_ms
    payload_pad = np.random.default_rng(0).normal(size=400).astype(np.float64).tobytes()
    print(f"kafka_relay: fetch_max_wait_ms {wait}, poll {ks.poll_timeout_ms} ms, load {loadavg()}")
    rows_out = []
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates:
            n = int(rate * args.seconds)
            a, b = f"relay-a-{rate:g}", f"relay-b-{rate:g}"
            create_topic(broker.bootstrap, a, 1)
            create_topic(broker.bootstrap, b, 1)
            cfg: dict[str, Any] = {
                "bootstrap": broker.bootstrap, "a": a, "b": b, "n": n, "fetch_wait": wait,
                "poll_ms": ks.poll_timeout_ms, "out": f"{tmp}/rows-{rate:g}.json",
            }  # fmt: skip
            ag = _child("agent", cfg)
            rl = _child("relay", cfg)
            p = _producer(broker.bootstrap)
            time.sleep(1.0)
            send_paced(p, a, n, rate, payload_pad)
            rl.wait(120)
            ag.wait(120)
            r = np.asarray(json.loads(Path(cfg["out"]).read_text()))
            hop1 = (r[:, 1] - r[:, 0]) * 1e3
            total = (r[:, 2] - r[:, 0]) * 1e3
            rows_out.append((rate, n, hop1, total, loadavg()))
    print("\nms p50 / p95 / p99 / max\n")
    print("| offered msg/s | messages | producer -> relay | producer -> relay -> agent | load |")
    print("|---:|---:|---:|---:|---|")
    for rate, n, hop1, total, load in rows_out:

        def q(x: np.ndarray) -> str:
            p50, p95, p99 = np.percentile(x, [50, 95, 99])
            return f"{p50:.1f} / {p95:.1f} / {p99:.1f} / {x.max():.1f}"

        print(f"| {rate:g} | {n} | {q(hop1)} | **{q(total)}** | {load} |")


if __name__ == "__main__":
    main()
