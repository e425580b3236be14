"""B9 of `make bench`: a well-behaved client's p99 while each abuse runs, as a ratio to its
p99 alone, against the running gateway (bench/run.py's stack).

The well-behaved client sends one scored request at a time over a kept-alive TLS
connection. Each abuse runs in threads beside it for the same time, from the same
machine (so it also competes for the two cores, as a co-located attacker would):
- wide rows: v2 requests with one row 60,000 numbers wide (refused by size, 413);
- pipelining: connections each sending 1,000 pipelined requests (cut at the depth bound);
- h2 rapid reset: HTTP/2 connections opening and resetting streams as fast as they can
  (GOAWAY past the reset budget).
The abusers connect from 127.0.0.2, the polite client from 127.0.0.1: two callers, as on
the internet, so the per-address limits judge each apart. A ratio near 1 means the
abuse cost the polite client little; the figures are ratios measured in this run, never
absolute thresholds.
"""

from __future__ import annotations

import json
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROWS = [[5.1, 3.5, 1.4, 0.2]]
ABUSER = "127.0.0.2"  # another loopback address: another caller for the gateway


def _context(ca: Path, alpn: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols([alpn])
    return context


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


def polite(base: str, ca: Path, header: tuple[str, str], seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base, verify=_context(ca, "http/1.1"), timeout=10) as client:
        while time.monotonic() < deadline:
            started = time.monotonic()
            r = client.post(
                "/v1/models/iris:predict", json={"instances": ROWS}, headers=dict([header])
            )
            latencies.append(time.monotonic() - started)
            failures += r.status_code != 200
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
    return {
        "requests": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": _p99(latencies),
        "failures": failures,
        "statuses": statuses,
    }


def wide_rows(base: str, ca: Path, header: tuple[str, str], stop: threading.Event) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 60_000], "datatype": "FP64", "data": [0] * 60_000}]}
    )
    transport = httpx.HTTPTransport(verify=_context(ca, "http/1.1"), local_address=ABUSER)
    with httpx.Client(base_url=base, transport=transport, timeout=10) as client:
        while not stop.is_set():
            client.post(
                "/v2/models/iris/infer",
                content=body,
                headers={"content-type": "application/json", header[0]: header[1]},
            )


def pipelining(base: str, ca: Path, header: tuple[str, str], stop: threading.Event) -> None:
    host, port = "localhost", urlsplit(base).port or 443
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n" * 1000
    while not stop.is_set():
        try:
            with (
                socket.create_connection((host, port), 5, (ABUSER, 0)) as raw,
                _context(ca, "http/1.1").wrap_socket(raw, server_hostname=host) as tls,
            ):
                tls.sendall(request)
                while tls.recv(65536):
                    pass
        except OSError:
            pass


def rapid_reset(base: str, ca: Path, header: tuple[str, str], stop: threading.Event) -> None:
    import h2.config
    import h2.connection
    import h2.errors

    host, port = "localhost", urlsplit(base).port or 443
    request = [
        (":method", "POST"),
        (":path", "/v1/models/iris:predict"),
        (":scheme", "https"),
        (":authority", host),
    ]
    while not stop.is_set():
        try:
            with (
                socket.create_connection((host, port), 5, (ABUSER, 0)) as raw,
                _context(ca, "h2").wrap_socket(raw, server_hostname=host) as tls,
            ):
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                tls.sendall(conn.data_to_send())
                for _ in range(1000):
                    stream = conn.get_next_available_stream_id()
                    conn.send_headers(stream, request)
                    conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
                    tls.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass


ABUSES: dict[str, tuple[Callable[[str, Path, tuple[str, str], threading.Event], None], int]] = {
    "wide_rows": (wide_rows, 2),
    "pipelining": (pipelining, 2),
    "h2_rapid_reset": (rapid_reset, 2),
}


def figures(base: str, ca: Path, header_line: str, seconds: float) -> dict[str, Any]:
    """The polite client alone, then beside each abuse; p99 ratios to the baseline."""
    name, _, value = header_line.partition(":")
    header = (name.strip(), value.strip())
    baseline = polite(base, ca, header, seconds)
    out: dict[str, Any] = {"baseline": baseline}
    for abuse, (run, threads) in ABUSES.items():
        stop = threading.Event()
        workers = [
            threading.Thread(target=run, args=(base, ca, header, stop), daemon=True)
            for _ in range(threads)
        ]
        for worker in workers:
            worker.start()
        time.sleep(0.5)  # the abuse is running before the measurement starts
        measured = polite(base, ca, header, seconds)
        stop.set()
        for worker in workers:
            worker.join(10)
        measured["p99_ratio"] = measured["p99_ms"] / baseline["p99_ms"]
        out[abuse] = measured
    return out
