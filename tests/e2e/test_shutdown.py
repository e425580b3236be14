"""Graceful shutdown (SECURITY-CATALOG: upstreams; Kubernetes sends SIGTERM): requests in
flight when the signal comes are answered and audited, new connections are refused, and
the process exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from serving.tls import client_context
from tests.conftest import Stack

pytestmark = pytest.mark.e2e
ROWS = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


class SlowScorer(BaseHTTPRequestHandler):
    """A scorer that takes 2 s to answer a prediction (and answers health at once)."""

    def do_GET(self) -> None:
        self._reply({"ready": True})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(2.0)
        self._reply({"predictions": ["setosa"]})

    def _reply(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def test_sigterm_lets_requests_in_flight_finish_then_exits(
    stack: Stack, spawn_gateway: Any
) -> None:
    scorer = ThreadingHTTPServer(("127.0.0.1", 0), SlowScorer)
    threading.Thread(target=scorer.serve_forever, daemon=True).start()
    gateway = spawn_gateway(
        scorer_url=f"http://127.0.0.1:{scorer.server_port}", upstream={"timeout_s": 5}
    )
    base, proc = gateway.base_url, gateway.proc
    try:
        replies: list[httpx.Response] = []

        def call() -> None:
            with httpx.Client(verify=client_context(stack.ca), timeout=15) as client:
                replies.append(
                    client.post(
                        f"{base}/v1/models/iris:predict",
                        json=ROWS,
                        headers={"api-key": stack.keys.iris},
                    )
                )

        callers = [threading.Thread(target=call) for _ in range(4)]
        for caller in callers:
            caller.start()
        time.sleep(0.8)  # the four are at the slow scorer now
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connections while draining
            httpx.get(f"{base}/v2/health/live", verify=client_context(stack.ca), timeout=2)
        for caller in callers:
            caller.join(15)
        assert proc.wait(20) == 0
        drained_in = time.monotonic() - signalled
    finally:
        scorer.shutdown()
        scorer.server_close()
    assert [r.status_code for r in replies] == [200] * 4
    assert drained_in < 10  # well within Kubernetes' 30 s grace period
    trail = gateway.audit_records()
    audited = {r.get("request_id") for r in trail}
    assert all(r.headers["x-request-id"] in audited for r in replies)
    assert trail[-1]["type"] == "checkpoint"  # the head was signed on the way out
